"""Shared test setup.

There is no network: Hugging Face loads must come from local directories (the MiniLM package,
temp dirs) and fail fast otherwise. ``HF_HUB_OFFLINE`` is read when ``huggingface_hub`` is
imported, so it is set here, before any test module imports ``transformers``.

Torch runs on one intra-op thread in tests: they use tiny tensors on a small, often busy CPU,
where two OpenMP threads competing for two cores made a 40-step training test take 159 s
instead of 5.6 s. (Ray workers get OMP_NUM_THREADS from their CPU share anyway.)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest):
    """A local Ray for one test module: 4 logical CPUs by default (read, decode and encode
    tasks run beside two training workers on 2 cores), or the module's ``RAY_NUM_CPUS``."""
    import ray

    ray.init(
        address="local",
        num_cpus=getattr(request.module, "RAY_NUM_CPUS", 4),
        object_store_memory=500 * 1024**2,
        include_dashboard=False,
    )
    yield
    ray.shutdown()
