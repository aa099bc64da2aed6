"""Training performance metrics: model FLOPs per sample, achieved TFLOPS, MFU, peak GPU memory.

Model FLOPs are counted once per run by ``torch.utils.flop_counter.FlopCounterMode`` on a
forward and backward pass of one micro batch through a copy of the stage built on the meta
device (shapes only: no memory, no arithmetic, the same count on any machine), with
gradient checkpointing off: MFU counts the model's FLOPs, not the recomputation. MFU is the
achieved FLOPS over the GPU's dense bf16 tensor-core peak (:func:`peak_tflops`); on a CPU
there is no such peak, so only ``flops_per_sample`` and ``achieved_tflops`` are reported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from imagen_ray.config import RunConfig, StageConfig

log = logging.getLogger(__name__)

PEAK_TFLOPS_ENV = "IMAGEN_RAY_PEAK_TFLOPS"

# Dense (no 2:4 sparsity) bf16 tensor-core TFLOPS from NVIDIA's datasheets, matched in order
# as a substring of the lower-cased CUDA device name (so "h100 pcie" before "h100", "l40s"
# before "l4"). A GPU not listed reports no MFU unless train.peak_tflops or
# IMAGEN_RAY_PEAK_TFLOPS gives its peak.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h200", 989.4),  # also GH200
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.4),  # SXM: "NVIDIA H100 80GB HBM3"
    ("a100", 312.0),
    ("l40s", 362.05),
    ("a10g", 70.0),  # no NVIDIA datasheet: an estimate, set train.peak_tflops when it matters
    ("a10", 125.0),
    ("l4", 121.0),
)


def peak_tflops(
    device_name: str, override: float | None = None, env: Mapping[str, str] | None = None
) -> float | None:
    """Peak dense bf16 TFLOPS of one GPU.

    Args:
        device_name: ``torch.cuda.get_device_name()``, e.g. ``"NVIDIA H100 80GB HBM3"``.
        override: ``train.peak_tflops``; wins over everything.
        env: the environment (default ``os.environ``); its ``IMAGEN_RAY_PEAK_TFLOPS`` wins
            over the table.

    Returns:
        TFLOPS, or None for a device neither the override nor the table knows.

    Raises:
        ValueError: ``IMAGEN_RAY_PEAK_TFLOPS`` is not a positive number.
    """
    if override is not None:
        return override
    raw = (os.environ if env is None else env).get(PEAK_TFLOPS_ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise ValueError(
                f"{PEAK_TFLOPS_ENV}={raw!r} is not a positive number of TFLOPS; set it to the "
                "GPU's dense bf16 peak (e.g. 989 for an H100 SXM) or unset it"
            )
        return value
    name = device_name.lower()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops
    return None


def count_flops_per_sample(
    stage_cfg: StageConfig, text_dim: int, *, batch: int, side: int, text_len: int
) -> tuple[float, str]:
    """Model FLOPs of one training sample (forward + backward) of a stage.

    Args:
        stage_cfg: the stage (its gradient checkpointing is ignored).
        text_dim: token width D.
        batch: micro batch size B the count is made at (FLOPs are divided by it).
        side: training image side (``data.train_crop`` for SR crops, else the stage size).
        text_len: tokens per prompt L.

    Returns:
        (FLOPs per sample, ``"fwd+bwd"``), or ``"3x fwd"`` when the backward pass could not be
        counted (the usual backward = 2 x forward rule).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from imagen_ray.cascade import Stage

    unet = stage_cfg.unet.model_copy(update={"grad_checkpointing": False})
    cfg = stage_cfg.model_copy(update={"unet": unet})
    with torch.device("meta"):
        stage = Stage(cfg, text_dim=text_dim).train()
        x0 = torch.empty(batch, 3, side, side)  # (B, 3, S, S)
        emb = torch.empty(batch, text_len, text_dim)  # (B, L, D)
        mask = torch.ones(batch, text_len, dtype=torch.bool)  # (B, L)
    with FlopCounterMode(display=False) as fwd:
        loss = stage(x0, emb, mask).mean()
    try:
        with FlopCounterMode(display=False) as bwd:
            loss.backward()
    except (RuntimeError, NotImplementedError) as err:
        log.warning("backward FLOPs not countable (%s); using 3 x forward", err)
        return 3.0 * fwd.get_total_flops() / batch, "3x fwd"
    return (fwd.get_total_flops() + bwd.get_total_flops()) / batch, "fwd+bwd"


@dataclass
class TrainPerf:
    """FLOPs, MFU and peak memory of the report windows of one worker.

    Args:
        device: the worker's device.
        count_flops: returns FLOPs per sample; called once, at the first report.
        peak: the device's peak TFLOPS (None: no MFU).
    """

    device: torch.device
    count_flops: Callable[[], tuple[float, str]]
    peak: float | None = None
    _flops: float | None = field(default=None, init=False)

    @classmethod
    def for_run(cls, cfg: RunConfig, text_dim: int, device: torch.device) -> TrainPerf:
        """The meter of a run's worker: the micro batch from ``cfg.data``, the peak from the
        device name (CUDA only) or ``train.peak_tflops``."""
        side = cfg.data.train_crop or cfg.stage.size

        def count() -> tuple[float, str]:
            return count_flops_per_sample(
                cfg.stage,
                text_dim,
                batch=cfg.data.batch_size,
                side=side,
                text_len=cfg.text.max_length,
            )

        peak = None
        if device.type == "cuda":
            peak = peak_tflops(torch.cuda.get_device_name(device), cfg.train.peak_tflops)
        return cls(device=device, count_flops=count, peak=peak)

    @property
    def flops_per_sample(self) -> float:
        if self._flops is None:
            self._flops, method = self.count_flops()
            log.info("model FLOPs per training sample: %.4g (%s)", self._flops, method)
        return self._flops

    def metrics(self, examples: int, seconds: float) -> dict[str, float]:
        """Metrics of one report window of this worker.

        Args:
            examples: samples this worker trained on in the window.
            seconds: the window's step time on this worker.

        Returns:
            ``flops_per_sample``, ``achieved_tflops`` (per device), on CUDA
            ``gpu_mem_peak_gib`` (``torch.cuda.max_memory_allocated`` since
            :meth:`start_window`) and, when the peak is known, ``mfu`` in [0, 1].
        """
        achieved = self.flops_per_sample * examples / max(seconds, 1e-9) / 1e12
        out = {"flops_per_sample": self.flops_per_sample, "achieved_tflops": achieved}
        if self.peak:
            out["mfu"] = achieved / self.peak
        if self.device.type == "cuda":
            out["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out

    def start_window(self) -> None:
        """A new report window: the CUDA allocator's peak starts again from what is held now.

        Called when the window starts, not when the last one is read, so that everything read
        during a report (step hooks such as ``imagen_ray.train.memory.PeakMemory``) sees the
        whole window's peak.
        """
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
