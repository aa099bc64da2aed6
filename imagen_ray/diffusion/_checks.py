"""Small validation helpers shared by the diffusion modules."""

from __future__ import annotations

from collections.abc import Sequence


def check_choice(kind: str, value: str, options: Sequence[str]) -> str:
    """Validate a mode string against its Literal options (plain membership test)."""
    if value not in options:
        valid = ", ".join(repr(o) for o in options)
        raise ValueError(f"unknown {kind} {value!r}; valid options are: {valid}")
    return value


def check_percentile(percentile: float) -> float:
    """Validate a quantile level for dynamic thresholding: must lie in (0, 1]."""
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    return percentile
