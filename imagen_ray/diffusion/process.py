"""Forward process, parameterisation conversions and the training loss.

Variance-preserving Gaussian diffusion in log-SNR form (Kingma et al. 2021):
``x_t = alpha x0 + sigma eps`` with ``alpha**2 = sigmoid(log_snr)``,
``sigma**2 = sigmoid(-log_snr)``. The network may predict ``eps``, ``x0`` or the velocity
``v = alpha eps - sigma x0`` (Salimans & Ho 2022, "Progressive Distillation").

Per-example quantities (``log_snr``) have shape (B,); data tensors have shape (B, ...).
"""

from __future__ import annotations

import torch
from torch import Tensor

from imagen_ray.diffusion._checks import check_choice
from imagen_ray.diffusion.names import LOSS_WEIGHTINGS, OBJECTIVES
from imagen_ray.diffusion.schedules import alpha_sigma


def right_pad(a: Tensor, like: Tensor) -> Tensor:
    """Append singleton dims to ``a`` so it broadcasts against ``like``.

    Args:
        a: per-example tensor, shape (B,) (or a scalar, shape ()).
        like: data tensor, shape (B, ...).

    Returns:
        ``a`` viewed as (B, 1, ..., 1) with ``like.ndim`` dims (a scalar stays broadcastable).
    """
    if a.ndim > like.ndim:
        raise ValueError(f"cannot right-pad a {a.ndim}-d tensor to {like.ndim} dims")
    return a.reshape(*a.shape, *([1] * (like.ndim - a.ndim)))


def _alpha_sigma_like(log_snr: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """alpha, sigma of a (B,) log-SNR padded to broadcast against ``like`` (VDM Eq. 3)."""
    alpha, sigma = alpha_sigma(log_snr)
    return right_pad(alpha, like), right_pad(sigma, like)


def q_sample(x0: Tensor, log_snr: Tensor, eps: Tensor) -> Tensor:
    """Sample the forward process q(x_t | x0).

    Args:
        x0: clean data, shape (B, ...).
        log_snr: log-SNR per example, shape (B,).
        eps: standard normal noise, shape (B, ...).

    Returns:
        ``x_t = alpha x0 + sigma eps``, shape (B, ...).
    """
    alpha, sigma = _alpha_sigma_like(log_snr, x0)
    return alpha * x0 + sigma * eps


def x0_from_eps(x_t: Tensor, eps: Tensor, log_snr: Tensor) -> Tensor:
    """Recover x0 from x_t and eps.

    Args:
        x_t: noisy data, shape (B, ...).
        eps: noise (prediction), shape (B, ...).
        log_snr: log-SNR, shape (B,).

    Returns:
        ``x0 = (x_t - sigma eps) / alpha``, shape (B, ...).
    """
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, log_snr: Tensor) -> Tensor:
    """Recover eps from x_t and x0.

    Args:
        x_t: noisy data, shape (B, ...).
        x0: clean data (prediction), shape (B, ...).
        log_snr: log-SNR, shape (B,).

    Returns:
        ``eps = (x_t - alpha x0) / sigma``, shape (B, ...).
    """
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return (x_t - alpha * x0) / sigma


def v_from(x0: Tensor, eps: Tensor, log_snr: Tensor) -> Tensor:
    """Velocity target (Salimans & Ho 2022).

    Args:
        x0: clean data, shape (B, ...).
        eps: noise, shape (B, ...).
        log_snr: log-SNR, shape (B,).

    Returns:
        ``v = alpha eps - sigma x0``, shape (B, ...).
    """
    alpha, sigma = _alpha_sigma_like(log_snr, x0)
    return alpha * eps - sigma * x0


def x0_from_v(x_t: Tensor, v: Tensor, log_snr: Tensor) -> Tensor:
    """Recover x0 from x_t and v.

    Args:
        x_t: noisy data, shape (B, ...).
        v: velocity (prediction), shape (B, ...).
        log_snr: log-SNR, shape (B,).

    Returns:
        ``x0 = alpha x_t - sigma v``, shape (B, ...).
    """
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return alpha * x_t - sigma * v


def eps_from_v(x_t: Tensor, v: Tensor, log_snr: Tensor) -> Tensor:
    """Recover eps from x_t and v.

    Args:
        x_t: noisy data, shape (B, ...).
        v: velocity (prediction), shape (B, ...).
        log_snr: log-SNR, shape (B,).

    Returns:
        ``eps = sigma x_t + alpha v``, shape (B, ...).
    """
    alpha, sigma = _alpha_sigma_like(log_snr, x_t)
    return sigma * x_t + alpha * v


def pred_to_x0(pred: Tensor, x_t: Tensor, log_snr: Tensor, objective: str) -> Tensor:
    """Convert a network output under ``objective`` to an x0 prediction.

    Args:
        pred: network output, shape (B, ...).
        x_t: the noisy input it was computed from, shape (B, ...).
        log_snr: log-SNR of ``x_t``, shape (B,).
        objective: what ``pred`` estimates: ``"eps"``, ``"v"`` or ``"x0"``.

    Returns:
        The x0 prediction, shape (B, ...).

    Raises:
        ValueError: on an unknown objective.
    """
    check_choice("objective", objective, OBJECTIVES)
    if objective == "eps":
        return x0_from_eps(x_t, pred, log_snr)
    if objective == "v":
        return x0_from_v(x_t, pred, log_snr)
    return pred


def target_for(objective: str, x0: Tensor, eps: Tensor, log_snr: Tensor) -> Tensor:
    """Regression target of the network under ``objective``.

    Args:
        objective: ``"eps"``, ``"v"`` or ``"x0"``.
        x0: clean data, shape (B, ...).
        eps: the noise used to make x_t, shape (B, ...).
        log_snr: log-SNR, shape (B,).

    Returns:
        ``eps``, ``v = alpha eps - sigma x0`` or ``x0``, shape (B, ...).

    Raises:
        ValueError: on an unknown objective.
    """
    check_choice("objective", objective, OBJECTIVES)
    if objective == "eps":
        return eps
    if objective == "v":
        return v_from(x0, eps, log_snr)
    return x0


def loss_weight(
    log_snr: Tensor, objective: str, weighting: str = "none", gamma: float = 5.0
) -> Tensor:
    """Per-example loss weight.

    ``"min_snr"`` is Min-SNR-gamma (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"): the x0-space weight ``min(snr, gamma)`` rewritten for the objective,
    i.e. ``min(snr, gamma) / snr`` for eps, ``min(snr, gamma) / (snr + 1)`` for v and
    ``min(snr, gamma)`` for x0, with ``snr = exp(log_snr)``.

    Args:
        log_snr: log-SNR per example, shape (B,).
        objective: ``"eps"``, ``"v"`` or ``"x0"``.
        weighting: ``"none"`` (all ones) or ``"min_snr"``.
        gamma: the Min-SNR clamp (5 in the paper), must be > 0.

    Returns:
        Weights, shape (B,), dtype of ``log_snr``.

    Raises:
        ValueError: on an unknown objective or weighting, or gamma <= 0.
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("loss weighting", weighting, LOSS_WEIGHTINGS)
    if weighting == "none":
        return torch.ones_like(log_snr)
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    snr = torch.exp(log_snr)
    clipped = snr.clamp(max=gamma)
    if objective == "eps":
        # min(snr, gamma) / snr == min(1, gamma / snr), written without dividing by snr.
        return (gamma * torch.exp(-log_snr)).clamp(max=1.0)
    if objective == "v":
        # 1 / (snr + 1) == sigmoid(-log_snr)
        return clipped * torch.sigmoid(-log_snr)
    return clipped


def diffusion_loss(
    pred: Tensor,
    x0: Tensor,
    eps: Tensor,
    log_snr: Tensor,
    objective: str,
    weighting: str = "none",
    gamma: float = 5.0,
) -> Tensor:
    """Per-example weighted MSE between the network output and its target.

    Args:
        pred: network output for ``x_t = q_sample(x0, log_snr, eps)``, shape (B, ...).
        x0: clean data, shape (B, ...).
        eps: the noise used to make x_t, shape (B, ...).
        log_snr: log-SNR per example, shape (B,).
        objective: what ``pred`` estimates: ``"eps"``, ``"v"`` or ``"x0"``.
        weighting: ``"none"`` or ``"min_snr"`` (see :func:`loss_weight`).
        gamma: Min-SNR clamp.

    Returns:
        ``loss_weight * mean((pred - target)**2 over non-batch dims)``, shape (B,).
        Reduce it (e.g. ``.mean()``) yourself.
    """
    target = target_for(objective, x0, eps, log_snr)
    mse = (pred - target).square().reshape(pred.shape[0], -1).mean(dim=1)
    return mse * loss_weight(log_snr, objective, weighting, gamma).to(mse.dtype)
