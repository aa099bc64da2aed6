"""Continuous-time noise schedules in log-SNR form (variance preserving).

Time ``t`` lies in [0, 1]: ``t = 0`` is clean data, ``t = 1`` is (almost) pure noise. A schedule
maps ``t`` to ``log_snr(t) = log(alpha_t**2 / sigma_t**2)``, strictly decreasing in ``t``, with
``alpha_t**2 + sigma_t**2 = 1`` (Kingma et al. 2021, "Variational Diffusion Models"; lucidrains'
imagen-pytorch ``alpha_cosine_log_snr`` / ``beta_linear_log_snr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
from torch import Tensor

from imagen_ray.diffusion._checks import check_choice
from imagen_ray.diffusion.names import SCHEDULES

LogSNRFn = Callable[[Tensor], Tensor]

LOG_SNR_RANGE: tuple[float, float] = (-20.0, 20.0)
"""Every schedule clamps log-SNR to this range, so t = 0 and t = 1 give finite values."""

# Floor for sin() before taking its log: keeps log finite at t = 1 (where the clamp takes over)
# and makes the gradient there zero instead of NaN.
_TINY = 1e-20


def _clamp_log_snr(log_snr: Tensor) -> Tensor:
    """Clamp log-SNR to LOG_SNR_RANGE (as in imagen-pytorch's schedules)."""
    return log_snr.clamp(min=LOG_SNR_RANGE[0], max=LOG_SNR_RANGE[1])


def log_snr_cosine(t: Tensor, s: float = 0.008) -> Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021) in log-SNR form.

    ``log_snr(t) = -log(cos(theta)**-2 - 1) = -2 log tan(theta)`` with
    ``theta = (t + s) / (1 + s) * pi / 2``. It is evaluated as
    ``2 log sin(pi/2 - theta) - 2 log sin(theta)``, which never takes the log of a negative
    rounding residue of ``cos(pi/2)``; the result is clamped to ``LOG_SNR_RANGE``.

    Args:
        t: times in [0, 1], any shape (typically (B,) or a scalar).
        s: small offset that keeps the SNR at t = 0 finite (0.008 as in the paper).

    Returns:
        log-SNR, same shape and dtype as ``t``.
    """
    if not t.is_floating_point():
        t = t.float()
    half_pi = math.pi / 2
    theta = (t + s) / (1 + s) * half_pi  # angle whose cos is alpha
    phi = (1 - t) / (1 + s) * half_pi  # pi/2 - theta, so sin(phi) = cos(theta)
    log_cos = torch.log(torch.sin(phi).clamp_min(_TINY))
    log_sin = torch.log(torch.sin(theta).clamp_min(_TINY))
    return _clamp_log_snr(2 * (log_cos - log_sin))


def log_snr_linear(t: Tensor) -> Tensor:
    """Linear-beta schedule (Ho et al. 2020) in its continuous log-SNR form.

    ``log_snr(t) = -log(expm1(1e-4 + 10 t**2))`` (Kingma et al. 2021, Appendix; imagen-pytorch's
    ``beta_linear_log_snr``), clamped to ``LOG_SNR_RANGE``.

    Args:
        t: times in [0, 1], any shape.

    Returns:
        log-SNR, same shape and dtype as ``t``.
    """
    if not t.is_floating_point():
        t = t.float()
    return _clamp_log_snr(-torch.log(torch.expm1(1e-4 + 10 * t**2)))


_SCHEDULES: Mapping[str, LogSNRFn] = MappingProxyType(
    {"cosine": log_snr_cosine, "linear": log_snr_linear}
)


def get_log_snr_fn(name: str, shift: float = 1.0) -> LogSNRFn:
    """Look up a schedule by name, optionally shifted towards noise.

    Args:
        name: one of ``"cosine"``, ``"linear"``.
        shift: ``log_snr(t) - 2 log(shift)`` at every ``t`` (clamped to ``LOG_SNR_RANGE``):
            the shifted schedules of simple diffusion (Hoogeboom et al. 2023, Sec. 3.1) and
            Stable Diffusion 3's timestep shift. ``shift > 1`` divides the SNR at every ``t``
            by ``shift**2``, so training and sampling spend more time at high noise; 1 is the
            schedule itself.

    Returns:
        A function mapping times ``t`` (any shape) to log-SNR (same shape).

    Raises:
        ValueError: if ``name`` is not a known schedule (the message lists the valid names)
            or ``shift`` is not positive.
    """
    check_choice("noise schedule", name, SCHEDULES)
    base = _SCHEDULES[name]
    if not shift > 0:
        raise ValueError(f"schedule shift must be > 0, got {shift}")
    if shift == 1.0:
        return base
    offset = 2.0 * math.log(shift)

    def shifted(t: Tensor) -> Tensor:
        return _clamp_log_snr(base(t) - offset)

    return shifted


def time_at_log_snr(log_snr_fn: LogSNRFn, log_snr: float) -> float:
    """The time ``t`` in [0, 1] at which a schedule reaches ``log_snr`` (bisection: every
    schedule is strictly decreasing in ``t``; 0 or 1 when ``log_snr`` lies beyond its range).

    Args:
        log_snr_fn: a schedule from :func:`get_log_snr_fn`.
        log_snr: the log-SNR to find.

    Returns:
        ``t`` with ``log_snr_fn(t)`` within float64 rounding of ``log_snr``. Computed on the
        CPU, so that it also works while a model is built on the meta device.
    """
    lo, hi = 0.0, 1.0
    for _ in range(60):  # 2**-60: below float64's resolution of t
        mid = (lo + hi) / 2
        if float(log_snr_fn(torch.tensor(mid, dtype=torch.float64, device="cpu"))) > log_snr:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def alpha_sigma(log_snr: Tensor) -> tuple[Tensor, Tensor]:
    """Signal and noise scales of the variance-preserving process.

    Args:
        log_snr: log-SNR, any shape.

    Returns:
        ``(alpha, sigma)``, each the shape of ``log_snr``:
        ``alpha = sqrt(sigmoid(log_snr))``, ``sigma = sqrt(sigmoid(-log_snr))``.
    """
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()
