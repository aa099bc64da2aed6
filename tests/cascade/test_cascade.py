"""Stage and Cascade: training loss, noise-conditioning augmentation, generation, save/load."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from imagen_ray.cascade import Cascade, CheckpointError, Stage, load_stage, save_stage
from imagen_ray.cascade import io as cascade_io
from imagen_ray.config import CascadeConfig, ConfigError, StageConfig, TextEncoderConfig
from imagen_ray.unet import upsample_to

TEXT = TextEncoderConfig(name="fake", max_length=6, dim=16)
UNET = {
    "channels": 16,
    "groups": 4,
    "head_dim": 8,
    "levels": [
        {"mult": 1, "res_blocks": 1},
        {"mult": 2, "res_blocks": 1, "self_attn": True, "cross_attn": True},
    ],
}
FAST = {"steps": 3, "guidance_scale": 3.0}


@dataclass
class FakeEncoding:
    emb: torch.Tensor
    mask: torch.Tensor
    truncated: list[bool]


class FakeEncoder:
    """Deterministic stand-in for a text encoder: one embedding per word (hash-seeded)."""

    dim = 16

    def encode(self, prompts: Sequence[str]) -> FakeEncoding:
        emb = torch.zeros(len(prompts), TEXT.max_length, self.dim)
        mask = torch.zeros(len(prompts), TEXT.max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            words = (p.split() or [""])[: TEXT.max_length]
            for j, w in enumerate(words):
                g = torch.Generator().manual_seed(sum(ord(c) * 31**k for k, c in enumerate(w)))
                emb[i, j] = torch.randn(self.dim, generator=g)
                mask[i, j] = True
        return FakeEncoding(emb, mask, [False] * len(prompts))


def cascade_config() -> CascadeConfig:
    return CascadeConfig(
        text=TEXT,
        stages=(
            StageConfig(name="base", size=16, unet=UNET, sampling=FAST),
            StageConfig(
                name="sr", size=32, lowres_size=16, unet=UNET, sampling={**FAST, "steps": 2}
            ),
        ),
    )


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Zero-initialised output layers make an untrained net ignore its inputs; jitter it."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=1)
    perturb(c)
    return c.eval()


PROMPTS = ["a red circle", "two blue squares left", "a green star"]


def test_generate_sizes_and_range(cascade: Cascade) -> None:
    out = cascade.generate(PROMPTS, seed=5)
    assert out.stages == ["base", "sr"]
    assert [tuple(x.shape) for x in out.images] == [(3, 3, 16, 16), (3, 3, 32, 32)]
    for x in out.images:
        assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert out.seeds == [5, 6, 7]
    assert out.uint8().shape == (3, 32, 32, 3) and out.uint8().dtype.name == "uint8"
    assert out.sampling[0]["steps"] == 3 and out.sampling[1]["steps"] == 2


def test_same_seed_same_images_other_seed_differs(cascade: Cascade) -> None:
    a = cascade.generate(PROMPTS[:2], seed=11)
    b = cascade.generate(PROMPTS[:2], seed=11)
    c = cascade.generate(PROMPTS[:2], seed=12)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert not torch.allclose(a.images[-1], c.images[-1])


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ddpm"])
def test_result_does_not_depend_on_the_batch(cascade: Cascade, sampler: str) -> None:
    """Per-example generators: stochastic samplers too give a prompt the same image alone
    or in a batch (what lets Serve batch requests without changing their results)."""
    sampling = {"base": {"sampler": sampler}, "sr": {"sampler": sampler}}
    batch = cascade.generate(PROMPTS, seed=[3, 4, 5], sampling=sampling)
    alone = cascade.generate([PROMPTS[1]], seed=[4], sampling=sampling)
    torch.testing.assert_close(alone.images[-1][0], batch.images[-1][1], atol=1e-5, rtol=0)


def test_until_runs_a_prefix_with_the_same_base_images(cascade: Cascade) -> None:
    full = cascade.generate(PROMPTS[:2], seed=2)
    base = cascade.generate(PROMPTS[:2], seed=2, until="base")
    assert base.stages == ["base"] and len(base.images) == 1
    assert torch.equal(base.images[0], full.images[0])
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        cascade.generate(PROMPTS[:1], until="nope")


def test_prompt_and_negative_prompt_change_the_image(cascade: Cascade) -> None:
    a = cascade.generate(["a red circle"], seed=0, until="base").images[0]
    b = cascade.generate(["a blue square"], seed=0, until="base").images[0]
    n = cascade.generate(["a red circle"], seed=0, until="base", negative_prompt="blurry")
    assert (a - b).abs().max() > 1e-3
    assert (a - n.images[0]).abs().max() > 1e-3


def test_sampling_overrides_are_validated_and_applied(cascade: Cascade) -> None:
    steps: list[int] = []
    out = cascade.generate(
        ["x"],
        sampling={"base": {"steps": 2, "sampler": "ddim"}, "sr": {"steps": 1}},
        progress=lambda info: steps.append(info["i"]),
    )
    assert out.sampling[0]["steps"] == 2 and out.sampling[0]["sampler"] == "ddim"
    assert len(steps) == 3
    with pytest.raises(ConfigError, match="sampler"):
        cascade.generate(["x"], sampling={"base": {"sampler": "euler"}})
    with pytest.raises(ValueError, match="unknown stages"):
        cascade.generate(["x"], sampling={"nope": {"steps": 1}})
    with pytest.raises(TypeError):
        cascade.generate("a single string")  # type: ignore[arg-type]


def test_every_sampler_and_threshold_runs(cascade: Cascade) -> None:
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        for threshold in ("none", "static", "dynamic"):
            out = cascade.generate(
                ["x"],
                until="base",
                sampling={"base": {"sampler": sampler, "threshold": threshold, "steps": 2}},
            )
            assert torch.isfinite(out.images[0]).all()


# ---------------------------------------------------------------------- save / load


def test_save_load_generates_identical_images(cascade: Cascade, tmp_path: Path) -> None:
    cascade.save(tmp_path / "c")
    assert (tmp_path / "c" / "cascade.json").is_file()
    loaded = Cascade.load(tmp_path / "c", encoder=FakeEncoder())
    a = cascade.generate(PROMPTS, seed=9)
    b = loaded.generate(PROMPTS, seed=9)
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    # a list of stage directories works as well
    again = Cascade.load([tmp_path / "c" / "base", tmp_path / "c" / "sr"], encoder=FakeEncoder())
    assert torch.equal(again.generate(PROMPTS, seed=9).images[-1], a.images[-1])


def test_load_never_unpickles(cascade: Cascade, tmp_path: Path, monkeypatch) -> None:
    cascade.save(tmp_path / "c")

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used to read checkpoints")

    monkeypatch.setattr(torch, "load", no_pickle)
    Cascade.load(tmp_path / "c", encoder=FakeEncoder())
    assert (tmp_path / "c" / "base" / "model.safetensors").read_bytes()[8:9] == b"{"


def test_load_refuses_uris_and_names_the_loader_that_reads_them(tmp_path: Path) -> None:
    """Cascade.load reads local directories; a URI (one, or in the stage list) is refused
    before anything is read, naming it and imagen_ray.publish.load_cascade."""
    for path in ("s3://bucket/c", [tmp_path / "base", "gs://bucket/sr"]):
        with pytest.raises(
            CheckpointError, match=r"not URIs \((s3://bucket/c|gs://bucket/sr)\)"
        ) as e:
            Cascade.load(path)
        assert "imagen_ray.publish.load_cascade" in str(e.value)


def test_load_errors_are_clear(cascade: Cascade, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"cascade\.json is missing"):
        Cascade.load(tmp_path / "missing")
    cascade.save(tmp_path / "c")
    cfg_path = tmp_path / "c" / "base" / "config.json"
    meta = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**meta, "version": 0}))
    with pytest.raises(CheckpointError, match=r"version 0 is not supported"):
        load_stage(tmp_path / "c" / "base")

    wrong = json.loads(json.dumps(meta))
    wrong["stage"]["unet"]["channels"] = 24
    wrong["stage"]["unet"]["groups"] = 4
    cfg_path.write_text(json.dumps(wrong))
    with pytest.raises(CheckpointError, match="do not match the stage config"):
        load_stage(tmp_path / "c" / "base")

    bad = json.loads(json.dumps(meta))
    bad["stage"]["unet"]["channles"] = 3
    cfg_path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match="channles"):
        load_stage(tmp_path / "c" / "base")


def test_stages_of_different_text_encoders_do_not_combine(cascade: Cascade, tmp_path: Path) -> None:
    base, sr = cascade.stage_list
    save_stage(base, TEXT, tmp_path / "base")
    save_stage(sr, TEXT.model_copy(update={"max_length": 7}), tmp_path / "sr")
    with pytest.raises(CheckpointError, match="different text encoders"):
        Cascade.load([tmp_path / "base", tmp_path / "sr"])
    save_stage(sr, TEXT, tmp_path / "sr")
    with pytest.raises(CheckpointError, match="must be a base stage"):
        Cascade.load([tmp_path / "sr", tmp_path / "base"])


def test_saved_directories_get_the_umask_permissions(cascade: Cascade, tmp_path: Path) -> None:
    """Not mkdtemp's 0700: a cascade exported by one account is readable by a serving one."""
    old = os.umask(0o022)
    try:
        out = cascade.save(tmp_path / "c")
        save_stage(cascade.stage_list[0], TEXT, tmp_path / "alone")
    finally:
        os.umask(old)
    for d in (out, out / "base", out / "sr", tmp_path / "alone"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    for f in (out / "cascade.json", out / "base" / "config.json", out / "sr" / "model.safetensors"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_interrupted_save_keeps_the_old_stage(
    cascade: Cascade, tmp_path: Path, monkeypatch
) -> None:
    base = cascade.stage_list[0]
    save_stage(base, TEXT, tmp_path / "base", extra={"step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cascade_io, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_stage(base, TEXT, tmp_path / "base", extra={"step": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["base"]  # no temp dirs left behind
    assert json.loads((tmp_path / "base" / "config.json").read_text())["extra"] == {"step": 1}
    load_stage(tmp_path / "base")


# ---------------------------------------------------------------------- training side


def test_loss_is_per_example_finite_and_trains() -> None:
    torch.manual_seed(0)
    stage = Stage(StageConfig(name="base", size=16, unet=UNET), text_dim=16)
    enc = FakeEncoder().encode(["a red circle", "a blue square"] * 2)
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    opt = torch.optim.AdamW(stage.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        g = torch.Generator().manual_seed(step % 4)  # a few fixed noise draws: must overfit
        loss = stage.loss(x0, enc.emb, enc.mask, generator=g)
        assert loss.shape == (4,) and torch.isfinite(loss).all()
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        losses.append(loss.mean().item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.7 * first, (first, last)


def test_schedule_shift_reaches_training_and_sampling() -> None:
    """Stage.log_snr_fn (used by the loss, the samplers and noise augmentation) is shifted."""
    plain = Stage(StageConfig(name="base", size=16, unet=UNET), text_dim=16)
    shifted = Stage(
        StageConfig(name="base", size=16, unet=UNET, diffusion={"schedule_shift": 3.0}),
        text_dim=16,
    )
    t = torch.tensor([0.3, 0.6])
    torch.testing.assert_close(shifted.log_snr_fn(t), plain.log_snr_fn(t) - 2 * math.log(3.0))


def test_high_noise_share_moves_that_share_of_training_t_below_the_snr() -> None:
    """diffusion.high_noise_share: that share of the loss's t is drawn where the SNR is below
    high_noise_snr; 0 leaves the draw (and so every earlier run) as it was."""
    cfg = {"schedule_shift": 2.0, "high_noise_snr": 1e-3}
    seen: dict[float, torch.Tensor] = {}
    enc = FakeEncoder().encode(["a"] * 4000)
    x0 = torch.zeros(4000, 3, 16, 16)
    for share in (0.0, 0.5, 1.0):
        stage = Stage(
            StageConfig(
                name="base", size=16, unet=UNET, diffusion=cfg | {"high_noise_share": share}
            ),
            text_dim=16,
        )

        def record(
            x_t: torch.Tensor, t: torch.Tensor, *a: object, _s: float = share, **k: object
        ) -> torch.Tensor:
            seen[_s] = t
            return x_t

        stage.unet.forward = record  # type: ignore[method-assign]
        stage.loss(x0, enc.emb, enc.mask, generator=torch.Generator().manual_seed(0))
        high = stage.log_snr_fn(seen[share]).exp() < 1e-3 * 1.0001
        t_high = stage.t_high_noise
        assert math.isclose(stage.log_snr_fn(torch.tensor(t_high)).exp().item(), 1e-3, rel_tol=1e-3)
        # without the share, t is uniform: P(SNR < 1e-3) = 1 - t_high (~4 % at shift 2)
        want = share + (1 - share) * (1 - t_high)
        assert abs(high.float().mean().item() - want) < 0.03, (share, high.float().mean(), want)
    first = torch.rand(4000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[0.0], first)


def test_sr_loss_derives_lowres_and_uses_it() -> None:
    torch.manual_seed(0)
    stage = Stage(StageConfig(name="sr", size=32, lowres_size=16, unet=UNET), text_dim=16)
    perturb(stage)
    enc = FakeEncoder().encode(["a", "b"])
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    implicit = stage.loss(x0, enc.emb, enc.mask, generator=torch.Generator().manual_seed(0))
    explicit = stage.loss(
        x0, enc.emb, enc.mask, stage.make_lowres(x0), generator=torch.Generator().manual_seed(0)
    )
    other = stage.loss(
        x0, enc.emb, enc.mask, -stage.make_lowres(x0), generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(implicit, explicit)
    assert (implicit - other).abs().max() > 1e-4


def test_noise_conditioning_augmentation_levels() -> None:
    stage = Stage(StageConfig(name="sr", size=32, lowres_size=16, unet=UNET), text_dim=16)
    low = torch.rand(4, 3, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    clean = stage.augment_lowres(low, torch.zeros(4), g)
    assert clean.shape == (4, 3, 32, 32)
    up = torch.nn.functional.interpolate(low, size=32, mode="bilinear", antialias=True)
    # aug_level 0 is t=0 of the cosine schedule, where sigma is ~0.0125 (the s=0.008 offset)
    assert (clean - up).std() < 0.02
    noisy = stage.augment_lowres(low, torch.ones(4), g)
    corr = torch.corrcoef(torch.stack([noisy.flatten(), up.flatten()]))[0, 1]
    assert abs(corr) < 0.05
    mid = stage.augment_lowres(low, torch.full((4,), 0.5), g)
    assert 0.05 < (mid - up).std() < 1.0
    with pytest.raises(ValueError, match="base stage"):
        Stage(StageConfig(name="b", size=16, unet=UNET), text_dim=16).make_lowres(low)


def test_layout_loss_teaches_the_layout_where_the_caption_puts_each_colour() -> None:
    """unet.layout_head: the stage's loss adds layout_loss_weight x the heads' MSE against the
    pooled clean image (0 where the text is dropped); trained on two captions whose only
    difference is the side, the heads draw each caption's own side, not its mirror."""
    unet = UNET | {"text_layout": True, "text_layout_init": "normal", "layout_head": True}
    torch.manual_seed(0)
    stage = Stage(StageConfig(name="base", size=16, unet=unet), text_dim=16)
    red, blue = torch.tensor([1.0, -1, -1]), torch.tensor([-1.0, -1, 1])
    left_red = torch.empty(3, 16, 16)
    left_red[:, :, :8], left_red[:, :, 8:] = red[:, None, None], blue[:, None, None]
    x0 = torch.stack([left_red, left_red.flip(-1)])
    enc = FakeEncoder().encode(["red on the left", "red on the right"])

    drop = torch.tensor([False, True])
    per_head = stage.layout_loss(x0, enc.emb, enc.mask, drop)
    assert per_head[0] > 0 and per_head[1] == 0  # the null text says nothing about layout

    opt = torch.optim.AdamW(stage.parameters(), lr=1e-2)
    for _ in range(60):
        loss = stage.layout_loss(x0, enc.emb, enc.mask, torch.zeros(2, dtype=torch.bool))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    with torch.no_grad():
        preds = stage.unet.predict_layouts(16, enc.emb, enc.mask)
    for p in preds:
        target = torch.nn.functional.adaptive_avg_pool2d(x0, p.shape[-1])
        own = (p - target).square().flatten(1).mean(1)
        mirror = (p - target.flip(-1)).square().flatten(1).mean(1)
        assert (own < 0.25 * mirror).all(), (own, mirror)

    # the training loss is the diffusion loss plus the weighted layout loss
    perturb(stage)  # so that the U-Net's (zero-initialised) output is not 0

    def with_weight(w: float) -> Stage:
        diffusion = {"layout_loss_weight": w}
        st = Stage(StageConfig(name="base", size=16, unet=unet, diffusion=diffusion), text_dim=16)
        st.load_state_dict(stage.state_dict())
        return st

    total = with_weight(3.0).loss(x0, enc.emb, enc.mask, generator=torch.Generator().manual_seed(5))
    base = with_weight(0.0).loss(x0, enc.emb, enc.mask, generator=torch.Generator().manual_seed(5))
    layout = stage.layout_loss(x0, enc.emb, enc.mask, torch.zeros(2, dtype=torch.bool))
    assert (base > 0).all() and (layout > 0).all()
    torch.testing.assert_close(total, base + 3.0 * layout)  # text_drop_prob 0.1: none here


def test_layout_start_samples_from_the_layout_heads_drawing_noised_to_that_t() -> None:
    """sampling.layout_start < 1: the stage starts as image-to-image from its layout heads'
    drawing of the prompt, with that strength; it needs a layout head."""
    unet = UNET | {"text_layout": True, "text_layout_init": "normal", "layout_head": True}
    torch.manual_seed(0)
    stage = Stage(StageConfig(name="base", size=16, unet=unet, sampling=FAST), text_dim=16)
    perturb(stage)
    stage.eval()
    enc = FakeEncoder().encode(["a red circle", "a blue square"])
    drawing = stage.layout_image(enc.emb, enc.mask, 16)
    assert drawing.shape == (2, 3, 16, 16) and drawing.abs().max() <= 1
    assert not torch.allclose(drawing[0], drawing[1])  # each prompt its own drawing
    heads = stage.unet.predict_layouts(16, enc.emb, enc.mask)  # down, middle, up: 8 px
    assert [p.shape[-1] for p in heads] == [8, 8, 8]
    mean = torch.stack([upsample_to(p, 16) for p in heads]).mean(0).clamp(-1, 1)
    torch.testing.assert_close(drawing, mean)  # every head's drawing, upsampled, averaged

    def gen() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(i) for i in range(2)]

    started = StageConfig(name="base", size=16, unet=unet, sampling=FAST).sampling.model_copy(
        update={"layout_start": 0.7}
    )
    got = stage.sample(enc.emb, enc.mask, sampling=started, generator=gen())
    want = stage.sample(enc.emb, enc.mask, init=drawing, strength=0.7, generator=gen())
    torch.testing.assert_close(got, want)
    plain = stage.sample(enc.emb, enc.mask, generator=gen())
    assert not torch.allclose(got, plain)

    with pytest.raises(ValueError, match=r"layout_start=0\.7 starts from the layout head"):
        StageConfig(name="base", size=16, unet=UNET, sampling={"layout_start": 0.7})


def test_saving_a_cascade_never_replaces_a_directory_of_other_files(tmp_path: Path) -> None:
    """Cascade.save swaps the whole directory in: over a directory that holds other files
    and no cascade it is refused, naming the fix; over a saved cascade it replaces it."""
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    root = Path(__file__).resolve().parents[2]
    cascade = Cascade.from_config(load_cascade_config(root / "configs/tiny/cascade.yaml"))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds other files and no cascade"):
        cascade.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    out = cascade.save(tmp_path / "c")
    assert cascade.save(out) == out and (out / "cascade.json").is_file()


def test_training_layout_mixes_the_clean_images_layout_and_the_heads_drawing() -> None:
    """diffusion.layout_teacher: that share of the kept-text samples read the clean image's
    own coarse layout; the others, and every dropped-text sample, the heads' drawing."""
    from imagen_ray.cascade import Stage
    from imagen_ray.config import load_run_config
    from imagen_ray.unet import coarse_layout

    root = Path(__file__).resolve().parents[2]
    x0 = torch.rand(6, 3, 32, 32) * 2 - 1
    emb, mask = torch.randn(6, 24, 384), torch.ones(6, 24, dtype=torch.bool)
    drop = torch.tensor([False, False, False, False, True, True])
    for share, teach in ((1.0, [1, 1, 1, 1, 0, 0]), (0.0, [0] * 6)):
        cfg = load_run_config(
            root / "configs/compositional/layout.yaml", [f"stage.diffusion.layout_teacher={share}"]
        )
        stage = Stage(cfg.stage, text_dim=384)
        got = stage.training_layout(x0, emb, mask, drop, torch.Generator().manual_seed(0))
        assert got is not None and got.shape == x0.shape
        clean = coarse_layout(x0, 4, 32)
        drawn = stage.unet.layout_condition(32, emb, mask, drop)
        for i, t in enumerate(teach):
            torch.testing.assert_close(got[i], clean[i] if t else drawn[i])
    plain = Stage(load_run_config(root / "configs/compositional/base.yaml").stage, text_dim=384)
    assert plain.training_layout(x0, emb, mask, drop, None) is None
