"""The DeepSpeed config of a run, generated from the typed train and data configs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from imagen_ray.config import DataConfig, TrainConfig

log = logging.getLogger(__name__)

AdamImpl = Literal["torch", "torch_fused", "cpu_adam"]


def cpu_adam_builds() -> bool:
    """Whether DeepSpeed's CPU Adam op loads on this machine (JIT-built with the C++ compiler
    on first use, then cached under ``TORCH_EXTENSIONS_DIR``)."""
    try:
        from deepspeed.ops.op_builder import CPUAdamBuilder

        CPUAdamBuilder().load()
    except Exception as err:  # a missing compiler or headers: any build error
        log.warning(
            "DeepSpeed's CPU Adam op did not build (%s: %s); the offloaded optimizer falls "
            "back to torch.optim.AdamW on the CPU, several times slower per step. Fix: install "
            "a C++ compiler (and the CUDA toolkit's headers on GPU nodes), or pre-build the op "
            "with DS_BUILD_CPU_ADAM=1 pip install deepspeed",
            type(err).__name__,
            err,
        )
        return False
    return True


def choose_adam(
    train: TrainConfig, device_type: str, cpu_adam_ok: Callable[[], bool] = cpu_adam_builds
) -> AdamImpl:
    """Which AdamW implementation steps the optimizer.

    Args:
        train: its ``offload_optimizer`` puts the states (and the step) on the CPU.
        device_type: the worker's ``torch.device.type``.
        cpu_adam_ok: whether DeepSpeed's CPU Adam op is available (asked only with offload).

    Returns:
        ``cpu_adam``: DeepSpeedCPUAdam (SIMD C++ step over the offloaded fp32 states);
        ``torch_fused``: ``torch.optim.AdamW(fused=True)``, one CUDA kernel for all
        parameters instead of several per tensor; ``torch``: plain ``torch.optim.AdamW``
        (CPU workers, or offload when CPU Adam did not build). DeepSpeed's own FusedAdam is
        never chosen: it JIT-builds a CUDA op with nvcc, which torch's fused kernel makes
        unnecessary.
    """
    if train.offload_optimizer:
        return "cpu_adam" if cpu_adam_ok() else "torch"
    return "torch_fused" if device_type == "cuda" else "torch"


def build_deepspeed_config(
    train: TrainConfig,
    data: DataConfig,
    *,
    world_size: int,
    device_type: str = "cpu",
    cpu_adam_ok: Callable[[], bool] = cpu_adam_builds,
) -> dict[str, Any]:
    """DeepSpeed JSON config for one stage's run.

    Args:
        train: optimisation, ZeRO, precision settings.
        data: its ``batch_size`` is the per-worker micro batch.
        world_size: number of data-parallel workers.
        device_type: the workers' ``torch.device.type`` (chooses the AdamW implementation).
        cpu_adam_ok: see :func:`choose_adam`.

    Returns:
        The dict for ``deepspeed.initialize(config=...)``. AdamW is DeepSpeed's own
        optimizer entry, implemented as :func:`choose_adam` says (DeepSpeed builds it after
        moving the module to the device, so ``fused=True`` sees CUDA parameters);
        Adafactor is passed by the caller as a client optimizer (DeepSpeed has none), which
        ZeRO accepts with ``zero_allow_untested_optimizer``.
    """
    precision = train.resolved_precision
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage == 3:
        # export and sampling gather full weights; keep saves consolidatable
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": data.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": data.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                # DeepSpeed wants >= 1 warmup step and total > warmup
                "total_num_steps": max(train.steps, train.warmup_steps + 2),
                "warmup_num_steps": max(1, train.warmup_steps),
                "warmup_min_ratio": 0.0,
                "warmup_type": "linear",
                "cos_min_ratio": train.min_lr_ratio,
            },
        },
        "steps_per_print": 10**9,  # our own progress line replaces DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if train.optimizer == "adamw":
        params: dict[str, Any] = {
            "lr": train.lr,
            "betas": list(train.betas),
            "weight_decay": train.weight_decay,
        }
        impl = choose_adam(train, device_type, cpu_adam_ok)
        if impl != "cpu_adam":  # without torch_adam, ZeRO-Offload makes DeepSpeedCPUAdam
            params["torch_adam"] = True  # torch.optim.AdamW, other keys passed through
        if impl == "torch_fused":
            params["fused"] = True
        cfg["optimizer"] = {"type": "AdamW", "params": params}
    else:
        cfg["zero_allow_untested_optimizer"] = True
    return cfg
