"""The per-rank peak-memory figure of bench/train.py's sr_crops section (no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from imagen_ray.train.hooks import StepContext
from imagen_ray.train.memory import PeakMemory, peak_memory_bytes


def test_cpu_peak_covers_a_live_tensor_and_never_falls() -> None:
    before = peak_memory_bytes("cpu")
    x = torch.full((256 * 2**20,), 7, dtype=torch.uint8)  # 256 MiB, every page written
    after = peak_memory_bytes("cpu")
    assert after >= 256 * 2**20 and after >= before
    del x
    assert peak_memory_bytes("cpu") >= after  # a peak, not the current size


def test_hook_reports_one_figure_per_rank_without_a_process_group() -> None:
    low = peak_memory_bytes("cpu")
    ctx = StepContext(rank=0, world_size=1, step=2, engine=SimpleNamespace(device="cpu"))
    (peak,) = PeakMemory().metrics(ctx)["memory/peak_bytes"]
    assert isinstance(peak, int) and peak >= low
