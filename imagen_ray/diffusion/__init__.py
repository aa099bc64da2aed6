"""Continuous-time Gaussian diffusion (variance preserving, log-SNR parameterised).

Schedules, the forward process and its parameterisations (eps / v / x0), the training loss with
optional Min-SNR weighting, classifier-free guidance with static / dynamic thresholding, and the
DDPM, DDIM and DPM-Solver++(2M) samplers. Depends only on torch, numpy and the standard library.

The names below load their module (and torch) on first use, so that importing the torch-free
vocabularies in :mod:`imagen_ray.diffusion.names` (as the config does) stays light.
"""

# The TYPE_CHECKING imports are the package's names: imagen_ray._lazy builds __all__ from them.
# ruff: noqa: F401

from __future__ import annotations

from typing import TYPE_CHECKING

from imagen_ray._lazy import lazy_package

if TYPE_CHECKING:
    from imagen_ray.diffusion.guidance import apply_guidance, threshold_x0
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
        forward_jump,
        make_denoiser,
        sample,
        sample_ddim,
        sample_ddpm,
        sample_dpmpp_2m,
        sample_resampled,
    )
    from imagen_ray.diffusion.schedules import (
        LOG_SNR_RANGE,
        LogSNRFn,
        alpha_sigma,
        get_log_snr_fn,
        log_snr_cosine,
        log_snr_linear,
        time_at_log_snr,
    )

__getattr__, __dir__ = lazy_package(__name__)
