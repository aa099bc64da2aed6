"""A training worker's progress: the window of losses and timings between two reports, and
the lines it prints for the user (``[base] step 200/1400  loss …  eta 6m29s``)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from imagen_ray.config import RunConfig
from imagen_ray.train.perf import TrainPerf


class Window:
    """Accumulates loss and timings between two reports."""

    def __init__(self, perf: TrainPerf | None = None) -> None:
        self.perf = perf
        if perf is not None:
            perf.start_window()
        self.losses: list[float] = []
        self.examples = 0
        self.data_s = 0.0
        self.total_s = 0.0

    def add(self, loss: float, examples: int, data_s: float, total_s: float) -> None:
        self.losses.append(loss)
        self.examples += examples
        self.data_s += data_s
        self.total_s += total_s

    def metrics(self, engine: Any, device: torch.device, world: int) -> dict[str, Any]:
        local = torch.tensor(
            [sum(self.losses), len(self.losses)], dtype=torch.float64, device=device
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(local)
        loss = (local[0] / local[1].clamp(min=1)).item()
        gnorm = engine.get_global_grad_norm()
        return {
            "loss": loss,
            "lr": float(engine.get_lr()[0]),
            "grad_norm": float(gnorm) if gnorm is not None else float("nan"),
            "samples_per_s": world * self.examples / max(self.total_s, 1e-9),
            "data_wait_frac": self.data_s / max(self.total_s, 1e-9),
            "max_rss_gb": rss_gb(),
            # flops_per_sample, achieved_tflops; on CUDA gpu_mem_peak_gib and mfu
            **(self.perf.metrics(self.examples, self.total_s) if self.perf else {}),
        }


def rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def print_progress(
    cfg: RunConfig, step: int, m: dict[str, Any], t_start: float, console: Any = None
) -> None:
    elapsed = time.perf_counter() - t_start
    eta = elapsed / max(step, 1) * (cfg.train.steps - step)
    line = (
        f"[{cfg.stage.name}] step {step}/{cfg.train.steps}  loss {m['loss']:.4f}  "
        f"lr {m['lr']:.2e}  gnorm {m['grad_norm']:.3f}  {m['samples_per_s']:.1f} samples/s  "
        f"data-wait {100 * m['data_wait_frac']:.0f}%  eta {hms(eta)}"
    )
    say(line, console)


def say(line: str, console: Any = None) -> None:
    """A line for the user: to the driver's console (when given) and this process's stdout."""
    if console is not None:
        console.put(line)
    print(
        line,
        # The process's own stdout: Ray Train V2 patches print() to log through the root
        # logger and, once W&B has wrapped sys.stdout, also to print it, so every line reached
        # the driver twice.
        file=sys.__stdout__ or sys.stdout,
        flush=True,
    )


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
