"""Stages and the cascade (pure torch): training loss, sampling, the generation plan,
safetensors save/load."""

from imagen_ray.cascade.cascade import Cascade, CascadeOutput
from imagen_ray.cascade.io import CheckpointError, load_stage, save_stage
from imagen_ray.cascade.plan import (
    SEED_MAX,
    GenerationPlan,
    PlanError,
    plan_generation,
    plan_sampling,
    resolve_sampling,
    stage_generators,
)
from imagen_ray.cascade.stage import Stage

__all__ = [
    "SEED_MAX",
    "Cascade",
    "CascadeOutput",
    "CheckpointError",
    "GenerationPlan",
    "PlanError",
    "Stage",
    "load_stage",
    "plan_generation",
    "plan_sampling",
    "resolve_sampling",
    "save_stage",
    "stage_generators",
]
