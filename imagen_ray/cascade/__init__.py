"""Stages and the cascade (pure torch): training loss, sampling, safetensors save/load."""

from imagen_ray.cascade.cascade import Cascade, CascadeOutput, resolve_sampling, stage_generators
from imagen_ray.cascade.io import CheckpointError, load_stage, save_stage
from imagen_ray.cascade.stage import Stage

__all__ = [
    "Cascade",
    "CascadeOutput",
    "CheckpointError",
    "Stage",
    "load_stage",
    "resolve_sampling",
    "save_stage",
    "stage_generators",
]
