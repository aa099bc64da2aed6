"""Contract tests shared by all samplers, plus make_denoiser's batching contract."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from imagen_ray.diffusion import (
    SAMPLERS,
    alpha_sigma,
    apply_guidance,
    forward_jump,
    get_log_snr_fn,
    make_denoiser,
    pred_to_x0,
    sample,
    sample_ddim,
    sample_ddpm,
    threshold_x0,
)

# (sampler, eta, stochastic)
CONFIGS = [
    ("ddpm", 0.0, True),
    ("ddim", 0.0, False),
    ("ddim", 1.0, True),
    ("dpmpp_2m", 0.0, False),
]
IDS = ["ddpm", "ddim-eta0", "ddim-eta1", "dpmpp_2m"]
STEPS = 6

log_snr_fn = get_log_snr_fn("cosine")


def _model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth fake eps-prediction network."""
    return 0.5 * x_t * torch.cos(t).reshape(-1, *([1] * (x_t.ndim - 1)))


DENOISE = make_denoiser(_model, log_snr_fn=log_snr_fn, objective="eps", threshold="static")


def _noise(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 2, 4, 4, generator=g).to(dtype)


def _run(name: str, eta: float, noise: torch.Tensor, seed: int, **kwargs: Any) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sample(
        DENOISE,
        noise,
        sampler=name,
        steps=STEPS,
        log_snr_fn=log_snr_fn,
        generator=g,
        eta=eta,
        **kwargs,
    )


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shape_and_dtype_preserved(
    name: str, eta: float, stochastic: bool, dtype: torch.dtype
) -> None:
    noise = _noise(dtype=dtype)
    out = _run(name, eta, noise, seed=1)
    assert out.shape == noise.shape
    assert out.dtype == dtype
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_same_seed_reproducible(name: str, eta: float, stochastic: bool) -> None:
    noise = _noise()
    assert torch.equal(_run(name, eta, noise, seed=7), _run(name, eta, noise, seed=7))


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_different_seeds(name: str, eta: float, stochastic: bool) -> None:
    noise = _noise()
    a, b = _run(name, eta, noise, seed=7), _run(name, eta, noise, seed=8)
    if stochastic:
        assert (a - b).abs().max() > 1e-3
    else:  # ODE samplers: deterministic given the noise
        assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_generator_consumption(name: str, eta: float, stochastic: bool) -> None:
    g = torch.Generator().manual_seed(3)
    before = g.get_state()
    sample(
        DENOISE, _noise(), sampler=name, steps=STEPS, log_snr_fn=log_snr_fn, generator=g, eta=eta
    )
    assert torch.equal(g.get_state(), before) != stochastic


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_never_touches_global_rng(name: str, eta: float, stochastic: bool) -> None:
    torch.manual_seed(0)
    state = torch.get_rng_state()
    _run(name, eta, _noise(), seed=5)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_callback(name: str, eta: float, stochastic: bool) -> None:
    infos: list[dict[str, Any]] = []
    out = _run(name, eta, _noise(), seed=2, callback=infos.append)
    assert len(infos) == STEPS
    assert [info["i"] for info in infos] == list(range(STEPS))
    assert all(info["steps"] == STEPS for info in infos)
    ts = [float(info["t"]) for info in infos]
    assert all(info["t"].ndim == 0 for info in infos)
    assert ts == sorted(ts, reverse=True) and ts[-1] == 0.0
    assert ts[0] == pytest.approx(1 - 1 / STEPS)
    for info in infos:
        assert info["x"].shape == out.shape and info["x0"].shape == out.shape
    assert torch.equal(infos[-1]["x"], out)
    assert torch.equal(infos[-1]["x0"], out)  # the last step returns the x0 prediction


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_one_step_returns_first_prediction(name: str, eta: float, stochastic: bool) -> None:
    noise = _noise()
    out = sample(
        DENOISE,
        noise,
        sampler=name,
        steps=1,
        log_snr_fn=log_snr_fn,
        eta=eta,
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(out, DENOISE(noise, torch.ones(3)))


@pytest.mark.parametrize(("name", "eta", "stochastic"), CONFIGS, ids=IDS)
def test_explicit_time_grid(name: str, eta: float, stochastic: bool) -> None:
    # the sampler functions take any descending grid; a float32 grid equals sample()'s float64 one
    noise = _noise()
    ts = torch.linspace(1, 0, STEPS + 1)
    kwargs: dict[str, Any] = {"eta": eta} if name == "ddim" else {}
    out = SAMPLERS[name](
        DENOISE, noise, ts, log_snr_fn, generator=torch.Generator().manual_seed(4), **kwargs
    )
    torch.testing.assert_close(out, _run(name, eta, noise, seed=4))


def test_ddim_eta_one_equals_ddpm() -> None:
    # Song et al. 2021: eta = 1 gives the ancestral posterior variance, and the mean matches too.
    noise = _noise(dtype=torch.float64)
    ts = torch.linspace(1, 0, 9, dtype=torch.float64)
    a = sample_ddpm(DENOISE, noise, ts, log_snr_fn, generator=torch.Generator().manual_seed(9))
    b = sample_ddim(
        DENOISE, noise, ts, log_snr_fn, generator=torch.Generator().manual_seed(9), eta=1.0
    )
    torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_sample_validation() -> None:
    noise = _noise()
    with pytest.raises(ValueError, match="'euler'") as info:
        sample(DENOISE, noise, sampler="euler", steps=4, log_snr_fn=log_snr_fn)
    for option in ("'ddpm'", "'ddim'", "'dpmpp_2m'"):
        assert option in str(info.value)
    for steps in (0, -3):
        with pytest.raises(ValueError, match="steps"):
            sample(DENOISE, noise, sampler="ddim", steps=steps, log_snr_fn=log_snr_fn)
    with pytest.raises(ValueError, match="eta"):
        sample(DENOISE, noise, sampler="ddim", steps=2, log_snr_fn=log_snr_fn, eta=-1.0)
    with pytest.raises(ValueError, match="descending"):
        sample_ddpm(DENOISE, noise, torch.linspace(0, 1, 5), log_snr_fn)
    with pytest.raises(ValueError, match="1-D"):
        sample_ddpm(DENOISE, noise, torch.ones(1), log_snr_fn)


class _CountingModel:
    """Fake x0-prediction network that records its calls.

    It returns 1 for the conditional rows and 0 for the unconditional rows (the second half of
    the batch when ``doubled``).
    """

    def __init__(self, doubled: bool) -> None:
        self.doubled = doubled
        self.batch_sizes: list[int] = []
        self.times: list[torch.Tensor] = []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.batch_sizes.append(x_t.shape[0])
        self.times.append(t)
        assert t.shape == (x_t.shape[0],)
        n_cond = x_t.shape[0] // 2 if self.doubled else x_t.shape[0]
        out = torch.zeros_like(x_t)
        out[:n_cond] = 1.0
        return out


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_guided_denoiser_calls_model_once_per_step_on_doubled_batch(name: str) -> None:
    model = _CountingModel(doubled=True)
    denoise = make_denoiser(model, log_snr_fn=log_snr_fn, objective="x0", guidance_scale=3.0)
    noise = _noise()
    infos: list[dict[str, Any]] = []
    sample(denoise, noise, sampler=name, steps=5, log_snr_fn=log_snr_fn, callback=infos.append)
    assert model.batch_sizes == [6] * 5
    for t in model.times:  # both halves see the same times
        assert torch.equal(t[:3], t[3:])
    # guidance: uncond 0 + 3 * (cond 1 - uncond 0) = 3 in x0 space
    for info in infos:
        assert torch.allclose(info["x0"], torch.full_like(noise, 3.0))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpmpp_2m"])
def test_unguided_denoiser_calls_model_on_b_rows(name: str) -> None:
    model = _CountingModel(doubled=False)
    denoise = make_denoiser(model, log_snr_fn=log_snr_fn, objective="x0", guidance_scale=1.0)
    out = sample(denoise, _noise(), sampler=name, steps=4, log_snr_fn=log_snr_fn)
    assert model.batch_sizes == [3] * 4
    assert torch.equal(out, torch.ones_like(out))


@pytest.mark.parametrize("objective", ["eps", "v", "x0"])
@pytest.mark.parametrize("threshold", ["none", "static", "dynamic"])
def test_make_denoiser_guidance_and_threshold(objective: str, threshold: str) -> None:
    g = torch.Generator().manual_seed(11)
    x_t = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    cond = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    uncond = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)

    def model(x: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        assert torch.equal(x, torch.cat([x_t, x_t])) and torch.equal(tt, torch.cat([t, t]))
        return torch.cat([cond, uncond])

    denoise = make_denoiser(
        model, log_snr_fn=log_snr_fn, objective=objective, guidance_scale=4.0, threshold=threshold
    )
    log_snr = log_snr_fn(t)
    # guidance on the raw prediction, then converted: equals guidance in x0 space
    expected = pred_to_x0(apply_guidance(cond, uncond, 4.0), x_t, log_snr, objective)
    expected = threshold_x0(expected, threshold)
    torch.testing.assert_close(denoise(x_t, t), expected)


def test_make_denoiser_validates_eagerly() -> None:
    with pytest.raises(ValueError, match="'eps', 'v', 'x0'"):
        make_denoiser(_model, log_snr_fn=log_snr_fn, objective="score")
    with pytest.raises(ValueError, match="'none', 'static', 'dynamic'"):
        make_denoiser(_model, log_snr_fn=log_snr_fn, objective="eps", threshold="soft")
    with pytest.raises(ValueError, match="percentile"):
        make_denoiser(_model, log_snr_fn=log_snr_fn, objective="eps", percentile=0.0)


def test_make_denoiser_rejects_wrong_row_count() -> None:
    denoise = make_denoiser(
        lambda x, t: x[: x.shape[0] // 2], log_snr_fn=log_snr_fn, objective="x0", guidance_scale=2.0
    )
    with pytest.raises(ValueError, match="rows"):
        denoise(torch.zeros(2, 3), torch.ones(2))


def test_start_runs_the_grid_from_there_and_is_checked() -> None:
    model = _CountingModel(doubled=False)
    denoise = make_denoiser(model, log_snr_fn=log_snr_fn, objective="x0")
    sample(denoise, _noise(), sampler="ddim", steps=4, log_snr_fn=log_snr_fn, start=0.5)
    assert [round(float(t[0]), 6) for t in model.times] == [0.5, 0.375, 0.25, 0.125]
    for start in (0.0, 1.5):
        with pytest.raises(ValueError, match="start must be in \\(0, 1\\]"):
            sample(DENOISE, _noise(), sampler="ddim", steps=2, log_snr_fn=log_snr_fn, start=start)
    with pytest.raises(ValueError, match="resample_times must be >= 1"):
        sample(DENOISE, _noise(), sampler="ddpm", steps=2, log_snr_fn=log_snr_fn, resample_times=0)


def test_resampling_takes_every_step_again_and_goes_back_by_the_forward_process() -> None:
    model = _CountingModel(doubled=False)
    denoise = make_denoiser(model, log_snr_fn=log_snr_fn, objective="x0")
    g = torch.Generator().manual_seed(0)
    sample(denoise, _noise(), sampler="ddpm", steps=3, log_snr_fn=log_snr_fn, generator=g,
           resample_times=3)  # fmt: skip
    # 3 calls at each of the first two times, 1 at the last
    assert [round(float(t[0]), 4) for t in model.times] == [1.0] * 3 + [0.6667] * 3 + [0.3333]


def test_the_forward_jump_keeps_the_forward_marginal() -> None:
    """x_s ~ q(x_s | x0) jumped to t is distributed as q(x_t | x0): mean alpha_t x0, std
    sigma_t (what lets RePaint go back a step without leaving the process)."""
    g = torch.Generator().manual_seed(1)
    x0 = 0.6
    for s_time, t_time in ((0.2, 0.3), (0.5, 0.9), (0.05, 0.06)):
        ls, lt = (log_snr_fn(torch.tensor(v, dtype=torch.float64)) for v in (s_time, t_time))
        alpha_s, sigma_s = alpha_sigma(ls)
        alpha_t, sigma_t = alpha_sigma(lt)
        x_s = alpha_s * x0 + sigma_s * torch.randn(200_000, dtype=torch.float64, generator=g)
        x_t = forward_jump(x_s, ls, lt, g)
        assert abs(float(x_t.mean() - alpha_t * x0)) < 0.01
        assert abs(float(x_t.std() / sigma_t) - 1) < 0.01
