"""Sampler correctness on a Gaussian data distribution, where the exact denoiser is known.

Data: x0 ~ N(MU, S**2) independently per dimension. Under x_t = alpha x0 + sigma eps the
posterior mean is E[x0 | x_t] = MU + alpha S**2 / (alpha**2 S**2 + sigma**2) (x_t - alpha MU),
so the samplers can be run with a perfect network and their outputs compared with MU and S.

Statistical error: N * D = 24576 independent values (kept below torch's 32768-element
intra-op parallelism grain, so the test stays fast on a loaded 2-core machine): the standard
error of the sample mean is S / sqrt(24576) = 0.0032 and that of the sample std is
S / sqrt(2 * 24576) = 0.0023.

Discretisation bias (computed with the exact linear-Gaussian mean/variance recursion of each
update for this setup, cosine schedule): every sampler returns E[x0 | x_t] at the last grid time
t = 1/steps, which shrinks the std slightly, and ancestral sampling plugs in E[x0 | x_t] instead
of integrating over x0, which loses variance at O(1/steps). Expected output std: DDPM and DDIM
eta=1 with 250 steps 0.4925; DDIM eta=0 with 100 steps 0.4921; DPM-Solver++(2M) with 15 steps
about 0.496. Hence the tolerances below: |mean - MU| <= 0.016 (5 standard errors, no bias) and
|std - S| <= 0.02 (bias <= 0.008 plus 5 standard errors); per dimension (N values) 0.03 for
both. They were checked to fail when the DDPM posterior variance is scaled by 2 (std 0.70) or by
1/2 (std 0.35), when DDIM's eps drops the alpha_t factor (mean -0.18), and when
DPM-Solver++'s second-order coefficient is wrong or dropped.
"""

from __future__ import annotations

import pytest
import torch

from imagen_ray.diffusion import Denoiser, LogSNRFn, get_log_snr_fn, sample

MU, S = 0.3, 0.5
N, D = 8192, 3


def exact_denoiser(log_snr_fn: LogSNRFn) -> Denoiser:
    """E[x0 | x_t] for x0 ~ N(MU, S**2)."""

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x_t.shape[0],)
        # The samplers evaluate every row at the same time: compute the coefficients once
        # (cheaper than per-row transcendental ops on a busy machine).
        assert bool((t == t[0]).all())
        log_snr = log_snr_fn(t[0])
        alpha = torch.sigmoid(log_snr).sqrt()
        sigma2 = torch.sigmoid(-log_snr)
        return MU + alpha * S**2 / (alpha**2 * S**2 + sigma2) * (x_t - alpha * MU)

    return denoise


def _noise(seed: int) -> torch.Tensor:
    return torch.randn(N, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    ("name", "eta", "steps"),
    [("ddpm", 0.0, 250), ("ddim", 0.0, 100), ("ddim", 1.0, 250), ("dpmpp_2m", 0.0, 15)],
    ids=["ddpm-250", "ddim-eta0-100", "ddim-eta1-250", "dpmpp_2m-15"],
)
def test_sample_mean_and_std_match_data(name: str, eta: float, steps: int) -> None:
    log_snr_fn = get_log_snr_fn("cosine")
    out = sample(
        exact_denoiser(log_snr_fn),
        _noise(0),
        sampler=name,
        steps=steps,
        log_snr_fn=log_snr_fn,
        generator=torch.Generator().manual_seed(1),
        eta=eta,
    )
    assert out.dtype == torch.float64
    mean, std = out.mean().item(), out.std().item()
    assert abs(mean - MU) <= 0.016, mean
    assert abs(std - S) <= 0.02, std
    # per dimension too: standard errors 0.0055 (mean) and 0.0039 (std)
    assert (out.mean(0) - MU).abs().max() <= 0.03
    assert (out.std(0) - S).abs().max() <= 0.03


def _ode_reference(noise: torch.Tensor, steps: int, log_snr_fn: LogSNRFn) -> torch.Tensor:
    """Exact probability-flow ODE solution, denoised at the last grid time t = 1/steps.

    For Gaussian data the flow is affine per dimension: x_t = alpha MU + sqrt(alpha^2 S^2 +
    sigma^2) z with the same z for every t. The samplers return E[x0 | x_t] at t = 1/steps, so
    that is the reference (this isolates the solver's error from the final-step convention).
    """

    def moments(t: float) -> tuple[torch.Tensor, torch.Tensor]:
        log_snr = log_snr_fn(torch.tensor(t, dtype=torch.float64))
        alpha, sigma2 = torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr)
        return alpha, torch.sqrt(alpha**2 * S**2 + sigma2)

    alpha_1, std_1 = moments(1.0)
    z = (noise - alpha_1 * MU) / std_1
    t_last = 1.0 / steps
    alpha_l, std_l = moments(t_last)
    x_last = alpha_l * MU + std_l * z
    t_vec = torch.full((noise.shape[0],), t_last, dtype=torch.float64)
    return exact_denoiser(log_snr_fn)(x_last, t_vec)


def _rms(a: torch.Tensor) -> float:
    return a.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_deterministic_samplers_follow_the_ode(schedule: str) -> None:
    """DDIM (eta=0) and DPM-Solver++(2M) are ODE solvers: check them path by path.

    Measured errors vs the exact flow (max abs): DDIM with 100 steps 0.031 (cosine) / 0.055
    (linear); 2M with 15 steps 0.027 / 0.0065. At equal steps (15) 2M's rms error is >= 5.9x
    smaller than first-order DDIM's, which a wrong second-order coefficient would destroy.
    """
    log_snr_fn = get_log_snr_fn(schedule)
    denoise = exact_denoiser(log_snr_fn)
    noise = _noise(2)

    def run(name: str, steps: int) -> torch.Tensor:
        return sample(denoise, noise, sampler=name, steps=steps, log_snr_fn=log_snr_fn)

    ddim_100 = run("ddim", 100) - _ode_reference(noise, 100, log_snr_fn)
    assert ddim_100.abs().max() <= 0.08
    ref_15 = _ode_reference(noise, 15, log_snr_fn)
    err_2m = run("dpmpp_2m", 15) - ref_15
    err_ddim = run("ddim", 15) - ref_15
    assert err_2m.abs().max() <= 0.05
    assert _rms(err_2m) * 3 <= _rms(err_ddim)
