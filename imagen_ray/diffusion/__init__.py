"""Continuous-time Gaussian diffusion (variance preserving, log-SNR parameterised).

Schedules, the forward process and its parameterisations (eps / v / x0), the training loss with
optional Min-SNR weighting, classifier-free guidance with static / dynamic thresholding, and the
DDPM, DDIM and DPM-Solver++(2M) samplers. Depends only on torch, numpy and the standard library.

The names below load their module (and torch) on first use, so that importing the torch-free
vocabularies in :mod:`imagen_ray.diffusion.names` (as the config does) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imagen_ray._lazy import lazy_getattr
from imagen_ray.diffusion.names import (
    LOSS_WEIGHTINGS,
    OBJECTIVES,
    SAMPLER_NAMES,
    SCHEDULES,
    THRESHOLDS,
    LossWeighting,
    Objective,
    SamplerName,
    ScheduleName,
    ThresholdMode,
)

if TYPE_CHECKING:
    from imagen_ray.diffusion.guidance import apply_guidance, threshold_x0
    from imagen_ray.diffusion.noise import Generators, randn
    from imagen_ray.diffusion.process import (
        diffusion_loss,
        eps_from_v,
        eps_from_x0,
        loss_weight,
        pred_to_x0,
        q_sample,
        right_pad,
        target_for,
        v_from,
        x0_from_eps,
        x0_from_v,
    )
    from imagen_ray.diffusion.samplers import (
        SAMPLERS,
        Callback,
        Denoiser,
        ModelFn,
        Sampler,
        make_denoiser,
        sample,
        sample_ddim,
        sample_ddpm,
        sample_dpmpp_2m,
    )
    from imagen_ray.diffusion.schedules import (
        LOG_SNR_RANGE,
        LogSNRFn,
        alpha_sigma,
        get_log_snr_fn,
        log_snr_cosine,
        log_snr_linear,
    )

__getattr__ = lazy_getattr(
    __name__,
    {
        "guidance": ("apply_guidance", "threshold_x0"),
        "noise": ("Generators", "randn"),
        "process": (
            "diffusion_loss",
            "eps_from_v",
            "eps_from_x0",
            "loss_weight",
            "pred_to_x0",
            "q_sample",
            "right_pad",
            "target_for",
            "v_from",
            "x0_from_eps",
            "x0_from_v",
        ),
        "samplers": (
            "SAMPLERS",
            "Callback",
            "Denoiser",
            "ModelFn",
            "Sampler",
            "make_denoiser",
            "sample",
            "sample_ddim",
            "sample_ddpm",
            "sample_dpmpp_2m",
        ),
        "schedules": (
            "LOG_SNR_RANGE",
            "LogSNRFn",
            "alpha_sigma",
            "get_log_snr_fn",
            "log_snr_cosine",
            "log_snr_linear",
        ),
    },
)


__all__ = [
    "LOG_SNR_RANGE",
    "LOSS_WEIGHTINGS",
    "OBJECTIVES",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "SCHEDULES",
    "THRESHOLDS",
    "Callback",
    "Denoiser",
    "Generators",
    "LogSNRFn",
    "LossWeighting",
    "ModelFn",
    "Objective",
    "Sampler",
    "SamplerName",
    "ScheduleName",
    "ThresholdMode",
    "alpha_sigma",
    "apply_guidance",
    "diffusion_loss",
    "eps_from_v",
    "eps_from_x0",
    "get_log_snr_fn",
    "log_snr_cosine",
    "log_snr_linear",
    "loss_weight",
    "make_denoiser",
    "pred_to_x0",
    "q_sample",
    "randn",
    "right_pad",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "target_for",
    "threshold_x0",
    "v_from",
    "x0_from_eps",
    "x0_from_v",
]
