"""The ML pipeline: candidate models, target datasets, feature extraction, the feature cache,
and ranking a set of feature arrays. Plain functions and classes: no database, no broker.

It sits below the service (``app``) and above the metrics (``scoring``).
"""
