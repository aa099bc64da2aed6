"""Non-finite guards: the streak of skipped micro batches, gradients before a step, weights
before a save.

A NaN/inf loss is caught by the loop before ``backward``. A finite loss can still give
non-finite gradients (an overflow in backward), and weights or their EMA can hold NaN/inf
however they got there: a step on such gradients, or a checkpoint/export of such weights,
would make the damage permanent. These are the checks and the skip bookkeeping; the loop
and the export call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import Tensor


class NonFiniteWeights(ValueError):
    """Weights or EMA weights hold NaN/inf: refused for a checkpoint or an export."""


class NonFiniteLoss(RuntimeError):
    """The loss or the gradients were NaN/inf for ``train.nan_patience`` micro batches in a
    row."""


@dataclass
class NonFiniteStreak:
    """Micro batches skipped in a row for a non-finite loss or gradients; the run stops at
    ``patience`` (``train.nan_patience``)."""

    patience: int
    streak: int = 0

    def skipped(self, what: str, *, step: int) -> None:
        """Count a micro batch skipped for a non-finite ``what`` at optimizer step ``step``;
        raise :class:`NonFiniteLoss` once ``patience`` are in a row."""
        self.streak += 1
        if self.streak >= self.patience:
            raise NonFiniteLoss(
                f"the {what} was non-finite for {self.streak} micro batches in a row, the last "
                f"at step {step}; training stopped. The last good checkpoint is kept: lower "
                "train.lr, raise train.warmup_steps or check the data, then rerun with the same "
                "name to resume from it."
            )

    def reset(self) -> None:
        """A micro batch went through: the streak starts again."""
        self.streak = 0


def nonfinite_names(tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an inf, in the given order."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    return [
        name
        for name, t in items
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all())
    ]


def require_finite(
    tensors: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]], *, what: str, fix: str
) -> None:
    """Raise :class:`NonFiniteWeights` naming the first bad tensors of ``what``."""
    bad = nonfinite_names(tensors)
    if bad:
        raise NonFiniteWeights(
            f"{what}: {len(bad)} tensors hold NaN/inf (e.g. {', '.join(bad[:3])}); {fix}"
        )


def _tensors(obj: Any, depth: int = 3) -> Iterator[Tensor]:
    """Tensors inside nested lists/tuples/dicts (to ``depth`` levels)."""
    if isinstance(obj, Tensor):
        yield obj
    elif depth and isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v, depth - 1)
    elif depth and isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v, depth - 1)


def local_grads_finite(engine: Any) -> bool:
    """True when every gradient this rank holds is finite.

    Call between ``engine.backward`` and ``engine.step`` at an accumulation boundary. ZeRO 0:
    ``param.grad``; ZeRO 1-3: also the optimizer's gradient partitions (the attributes
    ``imagen_ray.train.memory`` counts), since the full gradients are gone by then.
    """
    from imagen_ray.train.memory import GRAD_ATTRS

    grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
    opt = engine.optimizer
    for name in GRAD_ATTRS:
        grads.extend(_tensors(getattr(opt, name, None)))
    for attr, value in vars(opt).items():  # name-mangled ZeRO-3 map of grad partitions
        if attr.endswith("__param_id_to_grad_partition"):
            grads.extend(_tensors(value))
    return all(bool(torch.isfinite(g).all()) for g in grads if g.is_floating_point())


def all_ranks_true(ok: bool, device: torch.device) -> bool:
    """True when ``ok`` holds on every rank (an all-reduce: every rank must call it)."""
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(flag)
    return flag.item() == 0.0


def optimizer_skips_nonfinite(engine: Any) -> bool:
    """Whether DeepSpeed's optimizer discards a step with NaN/inf gradients by itself.

    Its ZeRO 1-3 and bf16/fp16 optimizers check the gradient norm in ``step`` and skip
    (counting ``engine.skipped_steps``, leaving the LR schedule); they are the ones with an
    ``overflow`` attribute, the test DeepSpeed's engine itself uses. A plain torch
    optimizer (ZeRO 0 in fp32) would apply the NaNs.
    """
    return hasattr(engine.optimizer, "overflow")


def guarded_step(
    engine: Any, device: torch.device, *, boundary: bool, check_grads: bool
) -> Literal["stepped", "gradient", "overflow"]:
    """``engine.step()``, unless the gradients hold NaN/inf and the optimizer would apply them.

    At an accumulation ``boundary`` with ``check_grads``, every rank's gradients are checked
    first (an all-reduce: every rank must call it); a plain torch optimizer then gets
    ``zero_grad`` instead of the step. Returns ``"stepped"``, or why the optimizer step was
    skipped at the boundary: ``"gradient"`` (non-finite gradients on some rank) or
    ``"overflow"`` (DeepSpeed skipped by itself: an fp16 loss-scale overflow).
    """
    grads_ok = True
    if boundary and check_grads:
        grads_ok = all_ranks_true(local_grads_finite(engine), device)
    skipped_before = engine.skipped_steps
    if grads_ok or optimizer_skips_nonfinite(engine):
        engine.step()  # DeepSpeed's ZeRO/bf16 optimizers discard a non-finite step
    else:
        engine.zero_grad()  # a plain torch optimizer (ZeRO 0, fp32) would apply it
    if not grads_ok:
        return "gradient"
    if boundary and engine.skipped_steps > skipped_before:
        return "overflow"
    return "stepped"
