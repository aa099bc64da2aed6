"""Samplers for the continuous-time log-SNR diffusion: ancestral DDPM, DDIM, DPM-Solver++(2M).

All samplers share one signature::

    sampler(denoise, x, ts, log_snr_fn, *, generator=None, callback=None) -> x0

``denoise(x_t, t)`` returns an x0 prediction (build one from a network with
:func:`make_denoiser`); ``x`` is the initial noise at ``ts[0]``; ``ts`` is a strictly descending
1-D grid of times from 1 to 0 (``steps + 1`` points). Step ``i`` goes from ``ts[i]`` to
``ts[i + 1]``; the final step returns the x0 estimate instead of a (nearly clean) x at ``ts[-1]``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from imagen_ray.diffusion._checks import check_choice, check_percentile
from imagen_ray.diffusion.guidance import apply_guidance, threshold_x0
from imagen_ray.diffusion.names import OBJECTIVES, SAMPLER_NAMES, THRESHOLDS
from imagen_ray.diffusion.noise import Generators, randn
from imagen_ray.diffusion.process import pred_to_x0
from imagen_ray.diffusion.schedules import LogSNRFn, alpha_sigma

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``denoise(x_t (B, ...), t (B,)) -> x0 prediction (B, ...)``."""

ModelFn = Callable[[Tensor, Tensor], Tensor]
"""``model_fn(x_t (N, ...), t (N,)) -> raw network output (N, ...)`` (eps, v or x0)."""

Callback = Callable[[dict[str, Any]], None]
"""Called after every step with ``{"i", "steps", "t", "x", "x0"}`` (see the samplers)."""


class Sampler(Protocol):
    """The signature every sampler in :data:`SAMPLERS` accepts."""

    def __call__(
        self,
        denoise: Denoiser,
        x: Tensor,
        ts: Tensor,
        log_snr_fn: LogSNRFn,
        *,
        generator: Generators = None,
        callback: Callback | None = None,
    ) -> Tensor: ...


def make_denoiser(
    model_fn: ModelFn,
    *,
    log_snr_fn: LogSNRFn,
    objective: str,
    guidance_scale: float = 1.0,
    threshold: str = "none",
    percentile: float = 0.995,
) -> Denoiser:
    """Wrap a network into an x0 denoiser with classifier-free guidance and thresholding.

    Batching contract for ``model_fn``:

    * ``guidance_scale == 1.0``: ``model_fn(x_t, t)`` is called once on the B rows, and is
      expected to be the conditional model.
    * otherwise: ``model_fn`` is called ONCE on a doubled batch
      ``model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]))`` (2B rows). The model must treat
      the first B rows as conditional and the last B rows as unconditional (e.g. by dropping
      the text conditioning for rows ``B:``), and return 2B rows in the same order.

    The output(s) are converted to x0 under ``objective``, the two halves are combined with
    :func:`apply_guidance`, then :func:`threshold_x0` is applied.

    Args:
        model_fn: raw network, ``(x_t (N, ...), t (N,)) -> prediction (N, ...)``.
        log_snr_fn: the schedule the network was trained with, ``t -> log_snr``.
        objective: what the network predicts: ``"eps"``, ``"v"`` or ``"x0"``.
        guidance_scale: classifier-free guidance weight (1 = no guidance, single pass).
        threshold: ``"none"``, ``"static"`` or ``"dynamic"``.
        percentile: quantile level for dynamic thresholding, in (0, 1].

    Returns:
        ``denoise(x_t (B, ...), t (B,)) -> x0 (B, ...)``.

    Raises:
        ValueError: on an unknown objective or threshold mode, or a bad percentile (eagerly),
            or if the model returns the wrong number of rows (when called).
    """
    check_choice("objective", objective, OBJECTIVES)
    check_choice("threshold mode", threshold, THRESHOLDS)
    check_percentile(percentile)

    def denoise(x_t: Tensor, t: Tensor) -> Tensor:
        """x0 prediction with classifier-free guidance (Ho & Salimans 2022) and thresholding."""
        batch = x_t.shape[0]
        log_snr = log_snr_fn(t)
        if guidance_scale == 1.0:
            x0 = pred_to_x0(model_fn(x_t, t), x_t, log_snr, objective)
        else:
            pred = model_fn(torch.cat([x_t, x_t]), torch.cat([t, t]))
            if pred.shape[0] != 2 * batch:
                raise ValueError(
                    f"model_fn returned {pred.shape[0]} rows for a doubled batch of {2 * batch}"
                )
            # Guidance in x0 space equals guidance in eps or v space: for fixed (x_t, t) each
            # conversion pred -> x0 is affine in pred (x0 = a x_t + b pred), and affine maps
            # commute with uncond + w (cond - uncond).
            x0_cond = pred_to_x0(pred[:batch], x_t, log_snr, objective)
            x0_uncond = pred_to_x0(pred[batch:], x_t, log_snr, objective)
            x0 = apply_guidance(x0_cond, x0_uncond, guidance_scale)
        return threshold_x0(x0, threshold, percentile)

    return denoise


def _prepare_times(x: Tensor, ts: Tensor) -> Tensor:
    """Validate the time grid and cast it to x's device and a >= float32 dtype."""
    if ts.ndim != 1 or ts.numel() < 2:
        raise ValueError(f"ts must be a 1-D tensor with at least 2 times, got shape {ts.shape}")
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("ts must be strictly descending (from 1 to 0)")
    # Times stay in at least float32 even for half-precision x, so t near 1 is resolved.
    dtype = torch.promote_types(x.dtype, torch.float32)
    return ts.to(dtype=dtype).to(device=x.device)


def _denoise_at(denoise: Denoiser, x: Tensor, t: Tensor) -> Tensor:
    """Evaluate the denoiser at a scalar time broadcast to the batch, cast back to x's dtype."""
    return denoise(x, t.expand(x.shape[0]).contiguous()).to(x.dtype)


def _noise_like(x: Tensor, generator: Generators) -> Tensor:
    """Standard normal noise shaped like x, drawn only from the explicit generator(s)."""
    return randn(x.shape, generator, x.device, x.dtype)


def _report(
    callback: Callback | None, i: int, steps: int, t: Tensor, x: Tensor, x0: Tensor
) -> None:
    """Call the user's per-step callback, if any."""
    if callback is not None:
        callback({"i": i, "steps": steps, "t": t, "x": x, "x0": x0})


@torch.no_grad()
def sample_ddpm(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    log_snr_fn: LogSNRFn,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling with the DDPM posterior (Ho et al. 2020) in log-SNR form.

    Each step from t to s < t draws ``x_s ~ q(x_s | x_t, x0 = denoise(x_t, t))``, the forward
    posterior written with log-SNRs as in Kingma et al. 2021 (VDM) and imagen-pytorch::

        c = -expm1(log_snr_t - log_snr_s)
        mean = alpha_s * (x_t * (1 - c) / alpha_t + c * x0)
        var = sigma_s**2 * c

    The final step returns the x0 prediction without adding noise. Runs under ``no_grad``.

    Args:
        denoise: ``(x_t (B, ...), t (B,)) -> x0 (B, ...)``; ``t`` has dtype
            ``promote_types(x.dtype, float32)`` and x's device.
        x: initial noise at ``ts[0]``, shape (B, ...).
        ts: strictly descending times, shape (steps + 1,), from 1 to 0.
        log_snr_fn: schedule, ``t -> log_snr``.
        generator: the only source of randomness (``steps - 1`` normal draws of x's shape).
        callback: called after step ``i`` with ``{"i": i, "steps": steps, "t": ts[i + 1],
            "x": the new state (the returned x0 on the last step), "x0": the prediction}``.

    Returns:
        The sample (x0 estimate), shape and dtype of ``x``.
    """
    ts = _prepare_times(x, ts)
    steps = ts.numel() - 1
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        x0 = _denoise_at(denoise, x, t)
        if i == steps - 1:
            x = x0
        else:
            x = _posterior_step(x, x0, log_snr_fn(t), log_snr_fn(s), generator)
        _report(callback, i, steps, s, x, x0)
    return x


def _posterior_step(
    x: Tensor, x0: Tensor, log_snr_t: Tensor, log_snr_s: Tensor, generator: Generators
) -> Tensor:
    """One ancestral step from t to s: a draw of ``q(x_s | x_t, x0)`` (:func:`sample_ddpm`)."""
    alpha_t, _ = alpha_sigma(log_snr_t)
    alpha_s, sigma_s = alpha_sigma(log_snr_s)
    c = -torch.expm1(log_snr_t - log_snr_s)
    mean = alpha_s * (x * ((1 - c) / alpha_t) + c * x0)
    return mean + sigma_s * c.sqrt() * _noise_like(x, generator)


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    log_snr_fn: LogSNRFn,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021, Eq. 12) with stochasticity ``eta``.

    Each step from t to s < t, with ``eps = (x_t - alpha_t x0) / sigma_t`` and
    ``c = -expm1(log_snr_t - log_snr_s)``::

        var = eta**2 * sigma_s**2 * c
        x_s = alpha_s * x0 + sqrt(sigma_s**2 - var) * eps + sqrt(var) * z

    ``eta = 0`` is deterministic (no draws from ``generator``); ``eta = 1`` has the ancestral
    (posterior) variance and coincides with :func:`sample_ddpm` draw for draw. The final step
    returns the x0 prediction. Runs under ``no_grad``.

    Args:
        denoise: ``(x_t (B, ...), t (B,)) -> x0 (B, ...)``.
        x: initial noise at ``ts[0]``, shape (B, ...).
        ts: strictly descending times, shape (steps + 1,), from 1 to 0.
        log_snr_fn: schedule, ``t -> log_snr``.
        generator: the only source of randomness (used only when ``eta > 0``).
        callback: as in :func:`sample_ddpm`.
        eta: 0 (deterministic DDIM) to 1 (ancestral variance); must be >= 0.

    Returns:
        The sample (x0 estimate), shape and dtype of ``x``.
    """
    if not eta >= 0.0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ts = _prepare_times(x, ts)
    steps = ts.numel() - 1
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        x0 = _denoise_at(denoise, x, t)
        if i == steps - 1:
            x = x0
        else:
            log_snr_t, log_snr_s = log_snr_fn(t), log_snr_fn(s)
            alpha_t, sigma_t = alpha_sigma(log_snr_t)
            alpha_s, sigma_s = alpha_sigma(log_snr_s)
            eps = (x - alpha_t * x0) / sigma_t  # eps_from_x0 with scalar alpha_t, sigma_t
            c = -torch.expm1(log_snr_t - log_snr_s)
            var = eta**2 * sigma_s**2 * c
            x_next = alpha_s * x0 + (sigma_s**2 - var).clamp(min=0).sqrt() * eps
            if eta > 0:
                x_next = x_next + var.sqrt() * _noise_like(x, generator)
            x = x_next
        _report(callback, i, steps, s, x, x0)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    log_snr_fn: LogSNRFn,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second-order data prediction.

    With ``lambda = log_snr / 2`` (log alpha/sigma), ``h = lambda_s - lambda_t`` and the previous
    step's ``h_prev``, ``r = h_prev / h``::

        D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev      (D = x0_t on the first step)
        x_s = (sigma_s / sigma_t) x_t - alpha_s * expm1(-h) * D

    The final step (to ``ts[-1]``) returns the plain prediction ``x0_t`` like the other
    samplers (k-diffusion's behaviour when stepping to sigma = 0), not ``D``: on the long last
    log-SNR interval ``1/(2r)`` is large and ``D`` overshoots. The solver is deterministic given
    ``x``; ``generator`` is accepted for the shared signature but unused. Runs under
    ``no_grad``.

    Args:
        denoise: ``(x_t (B, ...), t (B,)) -> x0 (B, ...)``.
        x: initial noise at ``ts[0]``, shape (B, ...).
        ts: strictly descending times, shape (steps + 1,), from 1 to 0.
        log_snr_fn: schedule, ``t -> log_snr``.
        generator: unused (the solver is deterministic).
        callback: as in :func:`sample_ddpm` (``"x0"`` is the denoiser's plain prediction).

    Returns:
        The sample (x0 estimate), shape and dtype of ``x``.
    """
    del generator  # deterministic ODE solver
    ts = _prepare_times(x, ts)
    steps = ts.numel() - 1
    x0_prev: Tensor | None = None
    h_prev: Tensor | None = None
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        x0 = _denoise_at(denoise, x, t)
        if i == steps - 1:
            # Final step: return the plain data prediction, as k-diffusion does when stepping
            # to sigma = 0 (first order there). The 2M extrapolation D would use
            # 1/(2r) = h / (2 h_prev) >> 1 on this long last log-SNR interval and overshoot.
            x = x0
        else:
            log_snr_t, log_snr_s = log_snr_fn(t), log_snr_fn(s)
            h = (log_snr_s - log_snr_t) / 2  # step in lambda = log(alpha / sigma)
            if x0_prev is None or h_prev is None:
                d = x0  # first step: first order (DDIM)
            else:
                half_inv_r = h / (2 * h_prev)  # 1 / (2r) with r = h_prev / h
                d = (1 + half_inv_r) * x0 - half_inv_r * x0_prev
            _, sigma_t = alpha_sigma(log_snr_t)
            alpha_s, sigma_s = alpha_sigma(log_snr_s)
            x = (sigma_s / sigma_t) * x - alpha_s * torch.expm1(-h) * d
            x0_prev, h_prev = x0, h
        _report(callback, i, steps, s, x, x0)
    return x


def forward_jump(x: Tensor, log_snr_s: Tensor, log_snr_t: Tensor, generator: Generators) -> Tensor:
    """Noise a state at log-SNR ``log_snr_s`` further, to ``log_snr_t`` (lower): a draw of
    the forward process ``q(x_t | x_s) = N((alpha_t / alpha_s) x_s, sigma_t^2 - (alpha_t /
    alpha_s)^2 sigma_s^2)``."""
    alpha_s, sigma_s = alpha_sigma(log_snr_s)
    alpha_t, sigma_t = alpha_sigma(log_snr_t)
    a = alpha_t / alpha_s
    var = sigma_t**2 - a**2 * sigma_s**2
    return a * x + var.clamp(min=0).sqrt() * _noise_like(x, generator)


@torch.no_grad()
def sample_resampled(
    denoise: Denoiser,
    x: Tensor,
    ts: Tensor,
    log_snr_fn: LogSNRFn,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    resample_times: int = 2,
) -> Tensor:
    """Ancestral steps with RePaint's resampling (Lugmayr et al. 2022, jump length 1).

    Each step but the last goes from t to s as :func:`sample_ddpm` does, then
    ``resample_times - 1`` times noises the new state back to t with the forward process
    ``q(x_t | x_s)`` and takes the step again. With a denoiser that holds the known region
    of an inpainting (:func:`imagen_ray.cascade.edit.keep_known`), the jumps let the
    repainted region agree with the kept one. The denoiser runs ``resample_times`` times per
    step.

    Args:
        denoise, x, ts, log_snr_fn, generator, callback: as in :func:`sample_ddpm`.
        resample_times: how often each step is taken (1: plain :func:`sample_ddpm`).

    Returns:
        The sample (x0 estimate), shape and dtype of ``x``.
    """
    ts = _prepare_times(x, ts)
    steps = ts.numel() - 1
    for i in range(steps):
        t, s = ts[i], ts[i + 1]
        log_snr_t, log_snr_s = log_snr_fn(t), log_snr_fn(s)
        for r in range(1 if i == steps - 1 else resample_times):
            if r > 0:
                x = forward_jump(x, log_snr_s, log_snr_t, generator)
            x0 = _denoise_at(denoise, x, t)
            x = x0 if i == steps - 1 else _posterior_step(x, x0, log_snr_t, log_snr_s, generator)
        _report(callback, i, steps, s, x, x0)
    return x


SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}


def sample(
    denoise: Denoiser,
    noise: Tensor,
    *,
    sampler: str,
    steps: int,
    log_snr_fn: LogSNRFn,
    generator: Generators = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    start: float = 1.0,
    resample_times: int = 1,
) -> Tensor:
    """Run a named sampler on the uniform time grid ``linspace(start, 0, steps + 1)``.

    Args:
        denoise: ``(x_t (B, ...), t (B,)) -> x0 (B, ...)`` (see :func:`make_denoiser`).
        noise: initial standard normal noise at t = 1, shape (B, ...).
        sampler: ``"ddpm"``, ``"ddim"`` or ``"dpmpp_2m"``.
        steps: number of denoiser evaluations, >= 1.
        log_snr_fn: schedule, ``t -> log_snr``.
        generator: the only source of randomness.
        callback: per-step callback (see :func:`sample_ddpm`).
        eta: DDIM stochasticity; passed to ``"ddim"`` only and ignored by the others.
        start: the time of ``noise`` (image-to-image starts below 1 from a noised image).
        resample_times: above 1, RePaint's resampling (:func:`sample_resampled`, ancestral
            steps whatever ``sampler`` says) for inpainting.

    Returns:
        The sample, shape and dtype of ``noise``.

    Raises:
        ValueError: on an unknown sampler name, ``steps < 1``, ``start`` outside (0, 1] or
            ``resample_times < 1``.
    """
    check_choice("sampler", sampler, SAMPLER_NAMES)
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not 0.0 < start <= 1.0:
        raise ValueError(f"start must be in (0, 1], got {start!r}")
    if resample_times < 1:
        raise ValueError(f"resample_times must be >= 1, got {resample_times!r}")
    ts = torch.linspace(float(start), 0.0, int(steps) + 1, dtype=torch.float64)
    if resample_times > 1:
        return sample_resampled(
            denoise, noise, ts, log_snr_fn, generator=generator, callback=callback,
            resample_times=resample_times,
        )  # fmt: skip
    if sampler == "ddim":
        return sample_ddim(
            denoise, noise, ts, log_snr_fn, generator=generator, callback=callback, eta=eta
        )
    return SAMPLERS[sampler](denoise, noise, ts, log_snr_fn, generator=generator, callback=callback)
