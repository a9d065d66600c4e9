"""The ML pipeline: candidate models, target datasets, feature extraction and the feature cache.

Plain functions and classes, testable without a broker; the Celery tasks (a later
``workers/celery_app.py``) are thin shells around them.
"""

import os

# Set before torch is imported. On a small shared CPU, OpenMP threads that spin while waiting
# made a 2-thread forward pass 3-10x slower whenever another process held a core; passive
# waiting costs nothing measurable when the machine is idle. Tokenizer fork-parallelism made
# MiniLM ~40x slower on 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
