"""What a stage costs, counted without running it: FLOPs, activation bytes, model-state bytes.

FLOPs and activations are counted on the meta device (shapes only: no memory, no arithmetic,
the same on any machine, so a 2B-parameter stage counts on a laptop). The model state per
rank (parameters, gradients, optimizer states, master weights, EMA) follows the tensors
DeepSpeed 0.19's engines hold at each ZeRO stage, as ``imagen_ray.train.memory`` measures them
in a real run (``tests/plan`` checks the two against each other on CPU workers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from imagen_ray.config import RunConfig, StageConfig

# bytes per element
FP32 = 4
HALF = 2


@dataclass(frozen=True)
class Activations:
    """Bytes autograd keeps for backward in one micro batch (forward + loss)."""

    plain: int  # every tensor saved for backward
    checkpointed: int  # with unet.grad_checkpointing: the blocks' inputs + one block's recompute


def _nbytes(t: Tensor) -> int:
    return int(t.numel() * t.element_size())


def count_activations(
    stage_cfg: StageConfig, text_dim: int, *, batch: int, side: int, text_len: int
) -> Activations:
    """Bytes saved for backward by one training forward of a stage, in float32.

    Counted on the meta device with ``torch.autograd.graph.saved_tensors_hooks``, once
    without gradient checkpointing and once as ``unet.grad_checkpointing`` runs it: every
    checkpointed block keeps only its inputs, and backward recomputes one block at a time
    (the largest block's own saved tensors on top).

    Args:
        stage_cfg: the stage.
        text_dim, batch, side, text_len: as :func:`imagen_ray.train.perf.count_flops_per_sample`.
    """
    from imagen_ray.cascade import Stage

    unet = stage_cfg.unet.model_copy(update={"grad_checkpointing": False})
    cfg = stage_cfg.model_copy(update={"unet": unet})
    saved: dict[int, Tensor] = {}  # id -> tensor, kept alive so ids stay unique
    per_block: list[int] = []
    block_inputs: dict[int, Tensor] = {}  # tokens and cond enter many blocks: count once

    def pack(t: Tensor) -> Tensor:
        saved.setdefault(id(t), t)
        return t

    with torch.device("meta"):
        stage = Stage(cfg, text_dim=text_dim).train()
        x0 = torch.empty(batch, 3, side, side)
        emb = torch.empty(batch, text_len, text_dim)
        mask = torch.ones(batch, text_len, dtype=torch.bool)
    plain_call = stage.unet._maybe_checkpoint

    def counted(fn: Callable[..., Tensor], *args: Any) -> Tensor:
        inner: dict[int, Tensor] = {}

        def pack_inner(t: Tensor) -> Tensor:
            inner.setdefault(id(t), t)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack_inner, lambda t: t):
            out = plain_call(fn, *args)
        per_block.append(sum(_nbytes(t) for t in inner.values()))
        block_inputs.update((id(a), a) for a in args if isinstance(a, Tensor))
        return out

    stage.unet._maybe_checkpoint = counted  # type: ignore[method-assign]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(x0, emb, mask).mean()
    outside = sum(_nbytes(t) for t in saved.values())
    plain = outside + sum(per_block)
    checkpointed = (
        outside + sum(_nbytes(a) for a in block_inputs.values()) + max(per_block, default=0)
    )
    return Activations(plain=plain, checkpointed=min(checkpointed, plain))


def adafactor_state_elements(stage_cfg: StageConfig, text_dim: int) -> int:
    """Elements of torch's Adafactor state for unpartitioned parameters (ZeRO 0): a row and
    a column vector over the last two dimensions of every parameter with two or more, the
    full second moment of the others."""
    from imagen_ray.unet import EfficientUNet

    with torch.device("meta"):
        unet = EfficientUNet(stage_cfg.unet, text_dim=text_dim, lowres=stage_cfg.is_sr)
    total = 0
    for p in unet.parameters():
        if p.dim() >= 2:
            *lead, r, c = p.shape
            n = 1
            for d in lead:
                n *= d
            total += n * (r + c)
        else:
            total += p.numel()
    return total


def model_state_bytes(
    params: int, cfg: RunConfig, ranks: int, *, adafactor_elements: int | None = None
) -> dict[str, float]:
    """Per-rank bytes of the model state at the run's ZeRO stage, precision and optimizer.

    The parts ``imagen_ray.train.memory.model_state_bytes`` measures (``params``, ``grads``,
    ``optimizer``, ``master_weights``) plus ``ema`` (the fp32 EMA: a full copy per rank at
    ZeRO 0-2, the rank's partition at ZeRO 3) and, with ``train.offload_optimizer`` /
    ``offload_params``, the parts that live in host memory instead (``host``).

    Args:
        params: parameters of the stage.
        cfg: the run (train.zero_stage, precision, optimizer, offload).
        ranks: data-parallel ranks N.
        adafactor_elements: :func:`adafactor_state_elements` (Adafactor at ZeRO 0 only).
    """
    t = cfg.train
    z, n, p = t.zero_stage, max(1, ranks), float(params)
    half = t.resolved_precision in ("bf16", "fp16")
    w = HALF if half else FP32
    shard = 1.0 / n
    out: dict[str, float] = {}
    out["params"] = p * w * (shard if z == 3 else 1.0)
    # gradients: full at ZeRO 0-1, the rank's partition at 2-3; mixed precision adds the fp32
    # gradients of the master copy (ZeRO 1-3: of the rank's partition)
    grad_share = 1.0 if z <= 1 else shard
    fp32_share = 1.0 if z == 0 else shard  # ZeRO 1 keeps fp32 gradients of its partition only
    out["grads"] = p * w * grad_share + (p * FP32 * fp32_share if half else 0.0)
    # an fp32 master copy: ZeRO 1-2 always keep one of the rank's partition, ZeRO 0 and 3
    # only in mixed precision (in fp32 they step the parameters themselves)
    if z in (1, 2):
        out["master_weights"] = p * FP32 * shard
    else:
        out["master_weights"] = p * FP32 * (shard if z == 3 else 1.0) if half else 0.0
    opt_share = 1.0 if z == 0 else shard
    if t.optimizer == "adamw":
        out["optimizer"] = 2 * p * FP32 * opt_share
    elif z == 0 and adafactor_elements is not None:
        out["optimizer"] = float(adafactor_elements * FP32)
    else:  # on ZeRO's flat partitions Adafactor keeps one full moment
        out["optimizer"] = p * FP32 * opt_share
    out["ema"] = p * FP32 * (shard if z == 3 else 1.0)
    host = 0.0
    if t.offload_optimizer:
        host += out["optimizer"] + out["master_weights"]
        out["optimizer"] = out["master_weights"] = 0.0
    if t.offload_params and z == 3:
        host += out["params"]
        out["params"] = 0.0
    out["host"] = host
    return out


def checkpoint_bytes(params: int, cfg: RunConfig, ranks: int) -> float:
    """Bytes of one training checkpoint, all ranks together: the weights in the training
    dtype, the optimizer states, the fp32 master copy where one is kept, and the fp32 EMA
    that every rank writes (at ZeRO 0-2 each rank's is a full copy: ``ranks`` copies)."""
    one = model_state_bytes(params, cfg, 1)
    ema_copies = ranks if cfg.train.zero_stage < 3 else 1
    weights = one["params"] + one["optimizer"] + one["master_weights"] + one["host"]
    return weights + one["ema"] * ema_copies
