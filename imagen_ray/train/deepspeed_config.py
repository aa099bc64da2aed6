"""The DeepSpeed config of a run, generated from the typed train and data configs."""

from __future__ import annotations

from typing import Any

from imagen_ray.config import DataConfig, TrainConfig


def build_deepspeed_config(
    train: TrainConfig, data: DataConfig, *, world_size: int
) -> dict[str, Any]:
    """DeepSpeed JSON config for one stage's run.

    Args:
        train: optimisation, ZeRO, precision settings.
        data: its ``batch_size`` is the per-worker micro batch.
        world_size: number of data-parallel workers.

    Returns:
        The dict for ``deepspeed.initialize(config=...)``. AdamW is DeepSpeed's own
        optimizer entry with ``torch_adam`` (plain ``torch.optim.AdamW``: no fused-op build);
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
        cfg["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "betas": list(train.betas),
                "weight_decay": train.weight_decay,
                "torch_adam": True,
            },
        }
    else:
        cfg["zero_allow_untested_optimizer"] = True
    return cfg
