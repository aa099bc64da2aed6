"""Gaussian noise from explicit generators: one for the batch, or one per example."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None
"""One generator for the whole batch, or one per example (row ``i`` from generator ``i``)."""


def randn(
    shape: Sequence[int],
    generator: Generators,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise of ``shape``.

    With one generator per example, row ``i`` is drawn from generator ``i`` alone, so an
    example's noise -- and so its sample -- does not depend on what else is in the batch.

    Args:
        shape: (B, ...) output shape.
        generator: None (global RNG), one generator, or B generators.
        device, dtype: of the result.

    Returns:
        (B, ...) tensor.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    if len(generator) != shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
    rows = [
        torch.randn(tuple(shape[1:]), generator=g, device=device, dtype=dtype) for g in generator
    ]
    return torch.stack(rows)
