"""Stages and the cascade (pure torch): training loss, sampling, the generation plan,
safetensors save/load.

Names load their module on first use (PEP 562), so that the torch-free generation plan
(:mod:`imagen_ray.cascade.plan`, which the Serve ingress uses) can be imported without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_MODULES = {
    "cascade": ("Cascade", "CascadeOutput"),
    "io": ("CheckpointError", "load_stage", "save_stage"),
    "plan": (
        "SEED_MAX",
        "GenerationPlan",
        "PlanError",
        "plan_generation",
        "plan_sampling",
        "resolve_sampling",
        "stage_generators",
    ),
    "stage": ("Stage",),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Load the module that defines ``name`` (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


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
