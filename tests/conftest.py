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

import torch

torch.set_num_threads(1)
