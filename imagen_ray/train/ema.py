"""Exponential moving average of the weights that stays correct -- and sharded -- under ZeRO-3.

Under ZeRO-3 every rank holds only its partition of each parameter (``param.ds_tensor``, a
flat slice padded to ``ceil(numel / world)``). The EMA keeps an fp32 copy of exactly that
local partition, so it costs 1/N of the model per rank and its update needs no
communication. Full EMA weights are produced on demand by gathering (a collective call:
every rank must take part) or, offline, by concatenating the ranks' saved partitions
(``consolidate_partitions``), which is how ``imagen-ray export`` reads a checkpoint.
Under ZeRO 0-2 parameters are replicated and the EMA is a plain full copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


def local_part(p: nn.Parameter) -> Tensor:
    """The part of a parameter this rank owns: its ZeRO-3 partition, else the whole tensor."""
    ds_tensor = getattr(p, "ds_tensor", None)
    return ds_tensor if ds_tensor is not None else p.data


def is_zero3(module: nn.Module) -> bool:
    """True when the module's parameters are ZeRO-3 partitioned."""
    return any(hasattr(p, "ds_tensor") for p in module.parameters())


class EMA:
    """EMA of a module's parameters.

    Args:
        module: the (possibly ZeRO-3 partitioned) module being trained.
        decay: the EMA decay (Imagen-style 0.9999).
        warmup_steps: until this many updates the decay is ``min(decay, (1+n)/(10+n))``
            so early weights are not frozen into the average.
    """

    def __init__(self, module: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        self.module = module
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.names = [n for n, _ in module.named_parameters()]
        self.params = [p for _, p in module.named_parameters()]
        self.shadow = [local_part(p).detach().float().clone() for p in self.params]
        self.num_updates = 0

    def current_decay(self) -> float:
        n = self.num_updates
        if n < self.warmup_steps:
            return min(self.decay, (1 + n) / (10 + n))
        return self.decay

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param, on the local partition."""
        d = self.current_decay()
        for s, p in zip(self.shadow, self.params, strict=True):
            s.lerp_(local_part(p).float(), 1.0 - d)
        self.num_updates += 1

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """This rank's EMA: ``{"tensors": {name: local partition}, "meta": {...}}``."""
        return {
            "tensors": {n: s.clone() for n, s in zip(self.names, self.shadow, strict=True)},
            "meta": {
                "num_updates": self.num_updates,
                "decay": self.decay,
                "shapes": {
                    n: list(getattr(p, "ds_shape", p.shape))
                    for n, p in zip(self.names, self.params, strict=True)
                },
                "partitioned": is_zero3(self.module),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tensors = state["tensors"]
        missing = set(self.names) - set(tensors)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[:3]}")
        for i, n in enumerate(self.names):
            if tensors[n].shape != self.shadow[i].shape:
                raise ValueError(
                    f"EMA tensor {n} has shape {tuple(tensors[n].shape)}, expected "
                    f"{tuple(self.shadow[i].shape)} (was the run resumed with another "
                    "world size or ZeRO stage?)"
                )
            self.shadow[i].copy_(tensors[n])
        self.num_updates = int(state["meta"]["num_updates"])

    @torch.no_grad()
    def load_full(
        self, weights: dict[str, Tensor], num_updates: int, rank: int, world: int
    ) -> None:
        """Load full EMA weights into this rank's shadow (its ZeRO-3 partition when the
        module is partitioned): an elastic resume, whose old partitions do not fit."""
        missing = set(self.names) - set(weights)
        if missing:
            raise KeyError(
                f"EMA weights lack {len(missing)} parameters, e.g. {sorted(missing)[:3]}"
            )
        for i, n in enumerate(self.names):
            full = weights[n].float()
            if is_zero3(self.module):
                part = self.shadow[i].numel()
                flat = torch.zeros(part * world)
                flat[: full.numel()] = full.reshape(-1)
                self.shadow[i].copy_(flat[rank * part : (rank + 1) * part].view_as(self.shadow[i]))
            else:
                self.shadow[i].copy_(full.reshape(self.shadow[i].shape))
        self.num_updates = num_updates

    # ------------------------------------------------------------------ full weights

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Temporarily put the EMA values into the module's (local) parameters."""
        backups = [local_part(p).detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for s, p in zip(self.shadow, self.params, strict=True):
                    local_part(p).copy_(s.to(local_part(p).dtype))
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backups, self.params, strict=True):
                    local_part(p).copy_(b)

    def full_state_dict(self) -> dict[str, Tensor]:
        """Full fp32 EMA weights on the CPU, keyed like ``module.state_dict()``.

        Under ZeRO-3 this gathers every parameter: call it on every rank.
        """
        if not is_zero3(self.module):
            return {
                n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow, strict=True)
            }
        import deepspeed

        out: dict[str, Tensor] = {}
        with self.swapped_in():
            for n, p in zip(self.names, self.params, strict=True):
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    out[n] = p.data.detach().float().cpu().clone()
        return out


def consolidate_partitions(rank_states: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Full EMA weights from every rank's ``EMA.state_dict()`` (offline, no process group).

    ZeRO-3 partitions a parameter of ``numel`` elements into ``world`` flat slices of
    ``ceil(numel / world)`` elements (the last padded); concatenating the ranks' slices in
    rank order and dropping the padding restores it. Unpartitioned states are returned from
    rank 0 as they are.
    """
    first = rank_states[0]
    shapes: dict[str, list[int]] = first["meta"]["shapes"]
    if not first["meta"]["partitioned"]:
        return {n: t.float() for n, t in first["tensors"].items()}
    out = {}
    for name, shape in shapes.items():
        flat = torch.cat([st["tensors"][name].reshape(-1).float() for st in rank_states])
        numel = math.prod(shape)
        if flat.numel() < numel:
            raise ValueError(
                f"EMA partitions of {name} hold {flat.numel()} elements, need {numel}: a "
                "rank's file is missing"
            )
        out[name] = flat[:numel].reshape(shape).clone()
    return out
