"""Candidate models: sources, preprocessing recipes, fingerprints and the default zoo."""

from workers.pipeline.models.base import CandidateModel, ModelOutput
from workers.pipeline.models.preprocessing import ImageRecipe, TextRecipe
from workers.pipeline.models.zoo import ZOO, load_model, zoo_names

__all__ = [
    "ZOO",
    "CandidateModel",
    "ImageRecipe",
    "ModelOutput",
    "TextRecipe",
    "load_model",
    "zoo_names",
]
