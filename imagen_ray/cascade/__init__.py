"""Stages and the cascade (pure torch): training loss, sampling, the generation plan,
safetensors save/load.

Names load their module on first use (PEP 562), so that the torch-free generation plan
(:mod:`imagen_ray.cascade.plan`, which the Serve ingress uses) can be imported without torch.
"""

# The TYPE_CHECKING imports are the package's names: imagen_ray._lazy builds __all__ from them.
# ruff: noqa: F401

from __future__ import annotations

from typing import TYPE_CHECKING

from imagen_ray._lazy import lazy_package

if TYPE_CHECKING:
    from imagen_ray.cascade.cascade import Cascade, CascadeOutput
    from imagen_ray.cascade.io import CheckpointError, load_stage, save_stage
    from imagen_ray.cascade.plan import (
        SEED_MAX,
        EditPlan,
        GenerationPlan,
        PlanError,
        last_stage,
        plan_edit,
        plan_generation,
        plan_sampling,
        resolve_sampling,
        stage_generators,
    )
    from imagen_ray.cascade.stage import Stage

__getattr__, __dir__ = lazy_package(__name__)
