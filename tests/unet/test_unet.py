"""Tests for imagen_ray.unet: shapes, input checks, conditioning, gradients, formats, sizes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from imagen_ray.config import CascadeConfig, LevelConfig, UNetConfig, load_any_config
from imagen_ray.unet import EfficientUNet, count_parameters, upsample_to
from imagen_ray.unet import network as network_mod
from imagen_ray.unet.layers import POS_FREQS, AttentionBlock, position_features

TEXT_DIM = 24
TOKENS = 6
SIZE = 16
BATCH = 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _cfg(**kw: Any) -> UNetConfig:
    """A tiny base U-Net: 16 -> 32 channels, 3 levels, cross-attn at two, self-attn at one."""
    base: dict[str, Any] = {
        "channels": 16,
        "levels": (
            LevelConfig(mult=1, res_blocks=1),
            LevelConfig(mult=2, res_blocks=1, cross_attn=True),
            LevelConfig(mult=2, res_blocks=2, self_attn=True, cross_attn=True),
        ),
        "head_dim": 8,
        "groups": 8,
        "mid_blocks": 1,
    }
    return UNetConfig(**{**base, **kw})


def _sr_cfg(**kw: Any) -> UNetConfig:
    """A tiny SR U-Net: 2 levels, cross-attn only at the lowest, no mid attention."""
    base: dict[str, Any] = {
        "channels": 16,
        "cond_dim": 32,
        "levels": (
            LevelConfig(mult=1, res_blocks=1),
            LevelConfig(mult=2, res_blocks=2, cross_attn=True),
        ),
        "head_dim": 8,
        "mid_blocks": 1,
        "mid_attn": False,
    }
    return UNetConfig(**{**base, **kw})


def _perturb(model: nn.Module, seed: int = 0, scale: float = 0.02) -> nn.Module:
    """Add small noise to every parameter so zero-initialised output layers stop hiding paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _model(
    cfg: UNetConfig | None = None, *, sr: bool = False, perturb: bool = True
) -> EfficientUNet:
    torch.manual_seed(0)
    cfg = cfg or (_sr_cfg() if sr else _cfg())
    model = EfficientUNet(cfg, text_dim=TEXT_DIM, lowres=sr)
    if perturb:
        _perturb(model)
    return model.eval()


def _inputs(batch: int = BATCH, seed: int = 1, size: int = SIZE) -> dict[str, Tensor]:
    """x_t, t, text (zero on padding, like the encoder), mask (prefix), lowres, aug_level."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([TOKENS, 3, 1, 4, 2, 5][:batch])
    mask = torch.arange(TOKENS)[None] < lengths[:, None]
    emb = torch.randn(batch, TOKENS, TEXT_DIM, generator=g) * mask[..., None]
    return {
        "x_t": torch.randn(batch, 3, size, size, generator=g),
        "t": torch.rand(batch, generator=g),
        "text_emb": emb,
        "text_mask": mask,
        "lowres": torch.randn(batch, 3, size, size, generator=g),
        "aug_level": torch.rand(batch, generator=g) * 0.5,
    }


def _run(model: EfficientUNet, inp: dict[str, Tensor], **kw: Any) -> Tensor:
    args = {**inp, **kw}
    if not model.lowres:
        args.pop("lowres")
        args.pop("aug_level")
    return model(**args)


def _max_diff(a: Tensor, b: Tensor) -> float:
    return float((a - b).detach().abs().max())


# --------------------------------------------------------------------------- shapes and checks


def test_base_output_shape() -> None:
    model = _model()
    out = _run(model, _inputs())
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_base_non_square_input() -> None:
    inp = _inputs(batch=2)
    inp["x_t"] = torch.randn(2, 3, SIZE, 2 * SIZE)
    assert _run(_model(), inp).shape == (2, 3, SIZE, 2 * SIZE)


def test_sr_output_shape() -> None:
    model = _model(sr=True)
    out = _run(model, _inputs())
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert torch.isfinite(out).all()
    assert model.aug_emb is not None
    assert model.init_conv.in_channels == 6  # x_t and the upsampled low-res image


def test_fresh_model_predicts_zero() -> None:
    """The output conv is zero-initialised: an untrained U-Net predicts exactly 0."""
    for sr in (False, True):
        out = _run(_model(sr=sr, perturb=False), _inputs())
        assert torch.all(out == 0)


def test_sr_without_lowres_raises() -> None:
    model, inp = _model(sr=True), _inputs()
    with pytest.raises(ValueError, match="lowres"):
        model(inp["x_t"], inp["t"], inp["text_emb"], inp["text_mask"])
    with pytest.raises(ValueError, match="aug_level"):
        model(inp["x_t"], inp["t"], inp["text_emb"], inp["text_mask"], lowres=inp["lowres"])


def test_base_given_lowres_raises() -> None:
    model, inp = _model(), _inputs()
    with pytest.raises(ValueError, match="base stage"):
        model(inp["x_t"], inp["t"], inp["text_emb"], inp["text_mask"], lowres=inp["lowres"])


def test_sr_lowres_wrong_size_raises() -> None:
    model, inp = _model(sr=True), _inputs()
    small = torch.randn(BATCH, 3, SIZE // 2, SIZE // 2)
    with pytest.raises(ValueError, match="upsample"):
        _run(model, inp, lowres=small)
    # The fix the message suggests works.
    assert _run(model, inp, lowres=upsample_to(small, SIZE)).shape == (BATCH, 3, SIZE, SIZE)


# --------------------------------------------------------------------------- conditioning


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_prompt_changes_output(sr: bool) -> None:
    model, inp = _model(sr=sr), _inputs()
    out = _run(model, inp)
    other = inp["text_emb"] + torch.randn_like(inp["text_emb"]) * inp["text_mask"][..., None]
    out2 = _run(model, inp, text_emb=other)
    # Every row sees a different prompt, so every row changes.
    for i in range(BATCH):
        assert _max_diff(out[i], out2[i]) > 1e-3


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_masked_tokens_are_ignored(sr: bool) -> None:
    model, inp = _model(sr=sr), _inputs()
    mask = inp["text_mask"]
    assert (~mask).any()
    garbage = inp["text_emb"].clone()
    garbage[~mask] = 100.0 * torch.randn(int((~mask).sum()), TEXT_DIM)
    with torch.no_grad():
        out = _run(model, inp)
        out2 = _run(model, inp, text_emb=garbage)
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=0)


def test_timestep_changes_output() -> None:
    model, inp = _model(), _inputs()
    out = _run(model, inp)
    out2 = _run(model, inp, t=(inp["t"] + 0.3) % 1.0)
    assert _max_diff(out, out2) > 1e-3


def test_aug_level_changes_sr_output() -> None:
    model, inp = _model(sr=True), _inputs()
    out = _run(model, inp, aug_level=torch.full((BATCH,), 0.1))
    out2 = _run(model, inp, aug_level=torch.full((BATCH,), 0.7))
    for i in range(BATCH):
        assert _max_diff(out[i], out2[i]) > 1e-3


def test_lowres_changes_sr_output() -> None:
    model, inp = _model(sr=True), _inputs()
    out = _run(model, inp)
    out2 = _run(model, inp, lowres=-inp["lowres"])
    assert _max_diff(out, out2) > 1e-3


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_dropped_text_ignores_the_prompt(sr: bool) -> None:
    model, inp = _model(sr=sr), _inputs()
    drop = torch.ones(BATCH, dtype=torch.bool)
    other_mask = inp["text_mask"].flip(0)
    other_emb = _inputs(seed=7)["text_emb"].abs() + 1.0
    assert not torch.equal(other_mask, inp["text_mask"])
    with torch.no_grad():
        out = _run(model, inp, drop_text=drop)
        # Any other text (values, lengths) gives the same output once dropped.
        out2 = _run(model, inp, text_emb=other_emb, text_mask=other_mask, drop_text=drop)
        kept = _run(model, inp)
    torch.testing.assert_close(out2, out, atol=1e-6, rtol=0)
    # ...and the null token is not the same as the real text.
    for i in range(BATCH):
        assert _max_diff(out[i], kept[i]) > 1e-3


def test_drop_text_is_per_row() -> None:
    model, inp = _model(), _inputs()
    drop = torch.tensor([True, False, True, False])
    with torch.no_grad():
        mixed = _run(model, inp, drop_text=drop)
        all_dropped = _run(model, inp, drop_text=torch.ones(BATCH, dtype=torch.bool))
        none_dropped = _run(model, inp, drop_text=torch.zeros(BATCH, dtype=torch.bool))
        default = _run(model, inp)
    torch.testing.assert_close(mixed[drop], all_dropped[drop], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[~drop], none_dropped[~drop], atol=1e-6, rtol=0)
    torch.testing.assert_close(none_dropped, default, atol=1e-6, rtol=0)


def test_empty_mask_row_behaves_like_dropped() -> None:
    model, inp = _model(), _inputs()
    mask = inp["text_mask"].clone()
    mask[1] = False
    with torch.no_grad():
        out = _run(model, inp, text_mask=mask)
        dropped = _run(model, inp, drop_text=torch.tensor([False, True, False, False]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, dropped, atol=1e-6, rtol=0)


def test_all_rows_empty_mask_is_finite() -> None:
    model, inp = _model(sr=True), _inputs()
    out = _run(model, inp, text_mask=torch.zeros_like(inp["text_mask"]))
    assert torch.isfinite(out).all()
    dropped = _run(model, inp, drop_text=torch.ones(BATCH, dtype=torch.bool))
    torch.testing.assert_close(out, dropped, atol=1e-6, rtol=0)


def test_rows_are_independent() -> None:
    model, inp = _model(sr=True), _inputs()
    with torch.no_grad():
        full = _run(model, inp)
        first = _run(model, {k: v[:1] for k, v in inp.items()})
    torch.testing.assert_close(first, full[:1], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- gradients


def _loss(model: EfficientUNet, inp: dict[str, Tensor], **kw: Any) -> Tensor:
    drop = torch.tensor([True, False, False, True])
    out = _run(model, inp, drop_text=drop, **kw)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    return (out - target).square().mean()


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_gradients_reach_every_parameter(sr: bool) -> None:
    model = _model(sr=sr).train()
    _loss(model, _inputs()).backward()
    names = [n for n, _ in model.named_parameters()]
    assert "null_token" in names
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert missing == []
    assert zero == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_channels_last_matches_contiguous(sr: bool) -> None:
    model, inp = _model(sr=sr), _inputs()
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl_model.init_conv.weight.is_contiguous(memory_format=torch.channels_last)
    cl_inp = dict(inp)
    for k in ("x_t", "lowres"):
        cl_inp[k] = inp[k].contiguous(memory_format=torch.channels_last)
    assert not cl_inp["x_t"].is_contiguous()
    with torch.no_grad():
        out = _run(model, inp)
        out_cl = _run(cl_model, cl_inp)
    assert out_cl.shape == out.shape
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_bf16_autocast_close_to_fp32(sr: bool) -> None:
    model, inp = _model(sr=sr), _inputs()
    with torch.no_grad():
        ref = _run(model, inp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _run(model, inp)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    rel = float((out.float() - ref).norm() / ref.norm())
    assert rel < 0.05, rel


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_grad_checkpointing_same_outputs_and_grads(
    sr: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _sr_cfg() if sr else _cfg()
    plain = _model(cfg, sr=sr).train()
    ckpt_cfg = cfg.model_copy(update={"grad_checkpointing": True})
    ckpt = EfficientUNet(ckpt_cfg, text_dim=TEXT_DIM, lowres=sr).train()
    ckpt.load_state_dict(plain.state_dict())

    calls = []
    real = network_mod.checkpoint

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(network_mod, "checkpoint", counting)
    inp = _inputs()
    losses = []
    for model in (plain, ckpt):
        loss = _loss(model, inp)
        loss.backward()
        losses.append(loss.detach())
    assert calls, "grad_checkpointing=True never called torch.utils.checkpoint"
    n_train = len(calls)
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert q.grad is not None, name
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5, msg=name)
    # No checkpointing in eval mode or without grad.
    with torch.no_grad():
        out_eval = _run(ckpt.eval(), inp)
    assert len(calls) == n_train
    torch.testing.assert_close(out_eval, _run(plain.eval(), inp).detach(), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- architecture options


def _attention_blocks(model: nn.Module) -> int:
    return sum(isinstance(m, AttentionBlock) for m in model.modules())


def test_attn_every_block_adds_attention() -> None:
    levels = (
        LevelConfig(mult=1, res_blocks=1),
        LevelConfig(mult=2, res_blocks=3, self_attn=True, cross_attn=True),
    )
    once = EfficientUNet(_cfg(levels=levels), text_dim=TEXT_DIM)
    every_levels = (levels[0], levels[1].model_copy(update={"attn_every_block": True}))
    every = EfficientUNet(_cfg(levels=every_levels), text_dim=TEXT_DIM)
    # Down and up paths: 1 -> 3 attention blocks each; the middle keeps its one.
    assert _attention_blocks(once) == 1 + 1 + 1
    assert _attention_blocks(every) == 3 + 3 + 1
    assert count_parameters(every) > count_parameters(once)
    inp = _inputs()
    assert _run(_perturb(every).eval(), inp).shape == (BATCH, 3, SIZE, SIZE)


def test_position_features_are_resolution_independent() -> None:
    f4, f12 = position_features(4, 4), position_features(12, 12)
    assert f4.shape == (16, 4 * POS_FREQS) and f12.shape == (144, 4 * POS_FREQS)
    # the centre of cell (r, c) of a 4x4 map is the centre of cell (3r+1, 3c+1) at 12x12
    assert torch.allclose(f4.view(4, 4, -1), f12.view(12, 12, -1)[1::3, 1::3], atol=1e-5)
    f8 = position_features(8, 8)
    assert len({tuple(row.tolist()) for row in f8}) == 64  # every cell is told apart


def test_pos_emb_adds_a_zero_initialised_position_map() -> None:
    plain = EfficientUNet(_cfg(), text_dim=TEXT_DIM)
    with_pos = EfficientUNet(_cfg(pos_emb=True), text_dim=TEXT_DIM)
    pos = {n: p for n, p in with_pos.named_parameters() if ".pos." in n}
    assert len(pos) == 2 * _attention_blocks(with_pos)  # weight + bias per attention block
    assert count_parameters(with_pos) - count_parameters(plain) == sum(
        p.numel() for p in pos.values()
    )
    # zero-initialised: with the plain model's weights it computes the plain model
    missing, unexpected = with_pos.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == set(pos) and not unexpected
    inp = _inputs()
    assert torch.equal(_run(with_pos.eval(), inp), _run(plain.eval(), inp))
    # once learned, the same input at another place gives another output
    block = AttentionBlock(
        32, head_dim=8, ctx_dim=16, self_attn=False, cross_attn=False, ff_mult=2, pos_emb=True
    )
    assert block.pos is not None
    nn.init.normal_(block.pos.weight)
    y = block(torch.zeros(1, 32, 4, 4), torch.zeros(1, 2, 16), torch.ones(1, 2, dtype=torch.bool))
    assert not torch.allclose(y[..., 0, 0], y[..., 3, 3])


def test_text_layout_reads_the_text_with_position_only_queries() -> None:
    plain = EfficientUNet(_cfg(), text_dim=TEXT_DIM)
    model = EfficientUNet(_cfg(text_layout=True), text_dim=TEXT_DIM)
    layout = {n for n, _ in model.named_parameters() if ".layout" in n}
    # one layout attention per block with cross-attention (2 levels down, 2 up, the middle)
    blocks = [m for m in model.modules() if isinstance(m, AttentionBlock)]
    with_cross = [b for b in blocks if b.cross_attn is not None]
    assert len(with_cross) == 5 and all(b.layout is not None for b in with_cross)
    assert all(b.layout is None for b in blocks if b.cross_attn is None)
    # output zero-initialised: with the plain model's weights it computes the plain model
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == layout and not unexpected
    inp = _inputs()
    assert torch.equal(_run(model.eval(), inp), _run(plain.eval(), inp))

    block = AttentionBlock(
        32, head_dim=8, ctx_dim=16, self_attn=False, cross_attn=True, ff_mult=2, text_layout=True
    )
    assert block.layout is not None
    nn.init.normal_(block.layout.out.weight)
    mask = torch.ones(1, 2, dtype=torch.bool)
    text = torch.randn(1, 2, 16)
    zeros = torch.zeros(1, 32, 4, 4)
    y = block(zeros, text, mask)
    # an image with no content at all: cells differ by where they are, and by the text
    assert not torch.allclose(y[..., 0, 0], y[..., 3, 3])
    assert not torch.allclose(y, block(zeros, text.flip(1) * 2, mask))


def test_text_layout_init_normal_gives_its_queries_and_keys_a_gradient_from_the_start() -> None:
    """text_layout_init: zero (default) starts the layout's output at 0, so its queries and
    keys get no gradient until it grows; normal starts it random, and they learn at once."""
    grads = {}
    for init in ("zero", "normal"):
        torch.manual_seed(0)
        model = EfficientUNet(_cfg(text_layout=True, text_layout_init=init), text_dim=TEXT_DIM)
        layouts = [m.layout for m in model.modules() if isinstance(m, AttentionBlock) and m.layout]
        outs = [b.out.weight.detach().clone() for b in layouts]
        assert len(layouts) == 5
        if init == "zero":
            assert all(not o.any() for o in outs)
        else:
            assert all(abs(float(o.std()) * o.shape[0] ** 0.5 - 1) < 0.2 for o in outs)
        _perturb(model)  # the rest of the network as if trained ...
        with torch.no_grad():
            for b, o in zip(layouts, outs, strict=True):
                b.out.weight.copy_(o)  # ... the layout's output as initialised
                b.out.bias.zero_()
        _run(model, _inputs()).pow(2).mean().backward()
        grads[init] = sum(float(b.q.weight.grad.abs().sum()) for b in layouts)  # type: ignore[union-attr]
    assert grads["zero"] == 0 and grads["normal"] > 0


def test_layout_head_draws_from_the_text_alone_and_learns_from_its_own_loss_only() -> None:
    """unet.layout_head: one head per text layout, each drawing (B, 3, g, g) at its level's
    grid from the text alone, through the layout's own token projection. The U-Net reads
    the layout's cells, but its output gives the layout path no gradient; the drawings give
    the rest of the U-Net none."""
    model = _perturb(EfficientUNet(_cfg(text_layout=True, layout_head=True), text_dim=TEXT_DIM))
    layout = {
        n for n, _ in model.named_parameters() if ".layout" in n or n.startswith("layout_text")
    }
    assert any(".layout_head." in n for n in layout) and "layout_text_in.weight" in layout
    inp = _inputs()
    x, emb, mask = inp["x_t"], inp["text_emb"], inp["text_mask"]
    preds = model.predict_layouts(x.shape[-1], emb, mask)
    # levels with cross-attention at size / 2 and size / 4, the middle, the same two up
    s = x.shape[-1]
    grids = (s // 2, s // 4, s // 4, s // 4, s // 2)
    assert [tuple(p.shape) for p in preds] == [(x.shape[0], 3, g, g) for g in grids]
    other = model.predict_layouts(x.shape[-1], emb.flip(1) * 2, mask)
    assert not torch.allclose(preds[0], other[0])  # it reads the text

    # the layout's cells are in the forward: changing the layout path changes the output
    before = _run(model.eval(), inp)
    with torch.no_grad():
        assert model.layout_text_in is not None
        model.layout_text_in.weight.mul_(3.0)
    assert not torch.allclose(_run(model, inp), before)

    def grads(loss: Tensor) -> set[str]:
        model.zero_grad()
        loss.backward()
        return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}

    from_output = grads(_run(model.train(), inp).square().mean())
    from_drawings = grads(sum(p.square().mean() for p in model.predict_layouts(s, emb, mask)))
    assert from_output and not from_output & layout
    assert from_drawings and from_drawings <= layout

    plain = EfficientUNet(_cfg(text_layout=True), text_dim=TEXT_DIM)
    assert plain.predict_layouts(x.shape[-1], emb, mask) == []
    with pytest.raises(ValueError, match="layout_head=true trains the text layout"):
        _cfg(layout_head=True)


def test_layout_head_pixels_draw_every_pixel_each_cell_its_own_patch() -> None:
    """unet.layout_head_pixels: every head draws at the stage's size, each cell of a level
    at size / 2**i its 2**i x 2**i patch, in the patch's own rows and columns; the cell's
    colour as the plain head draws it is the patch's pixel each."""
    plain = _perturb(EfficientUNet(_cfg(text_layout=True, layout_head=True), text_dim=TEXT_DIM))
    model = EfficientUNet(
        _cfg(text_layout=True, layout_head=True, layout_head_pixels=True), text_dim=TEXT_DIM
    )
    inp = _inputs()
    x, emb, mask = inp["x_t"], inp["text_emb"], inp["text_mask"]
    s, b = x.shape[-1], x.shape[0]
    state = plain.state_dict()
    heads = [n[: -len(".2.weight")] for n in state if n.endswith(".layout_head.2.weight")]
    for name in heads:  # each pixel of a patch repeats its cell's colour
        p = model.get_submodule(name)[2].out_features // 3
        state[f"{name}.2.weight"] = state[f"{name}.2.weight"].repeat_interleave(p, 0)
        state[f"{name}.2.bias"] = state[f"{name}.2.bias"].repeat_interleave(p, 0)
    model.load_state_dict(state)
    got = model.predict_layouts(s, emb, mask)
    assert [tuple(p.shape) for p in got] == [(b, 3, s, s)] * len(heads)
    for drawing, cells in zip(got, plain.predict_layouts(s, emb, mask), strict=True):
        up = torch.nn.functional.interpolate(cells, size=s, mode="nearest")
        torch.testing.assert_close(drawing, up)

    with torch.no_grad():  # rows and columns: a patch of distinct values in every cell
        head = model.get_submodule(heads[1])[2]
        p = int((head.out_features // 3) ** 0.5)
        head.weight.zero_()
        head.bias.copy_(torch.arange(3 * p * p, dtype=head.bias.dtype))
    drawing = model.predict_layouts(s, emb, mask)[1]
    patch = torch.arange(3 * p * p, dtype=drawing.dtype).reshape(3, p, p)
    torch.testing.assert_close(drawing, patch.repeat(1, s // p, s // p).expand(b, -1, -1, -1))
    with pytest.raises(ValueError, match="layout_head_pixels=true sets how the layout heads"):
        _cfg(text_layout=True, layout_head_pixels=True)


def test_layout_tokens_add_the_layouts_projection_to_the_unets_tokens_detached() -> None:
    """unet.layout_tokens: the U-Net's tokens are its own projection plus the layout's
    (detached: the diffusion loss still gives the layout path no gradient)."""
    cfg = _cfg(text_layout=True, layout_head=True)
    plain = _perturb(EfficientUNet(cfg, text_dim=TEXT_DIM))
    model = EfficientUNet(
        _cfg(text_layout=True, layout_head=True, layout_tokens=True), text_dim=TEXT_DIM
    )
    model.load_state_dict(plain.state_dict())
    inp = _inputs()
    emb, mask = inp["text_emb"], inp["text_mask"]
    got, _, _ = model.encode_text(emb, mask, None)
    base, _, _ = plain.encode_text(emb, mask, None)
    layout = model.encode_layout_text(emb, mask, None)
    assert layout is not None
    real = mask[..., None]
    torch.testing.assert_close(got * real, (base + layout[0]) * real)

    model.zero_grad()
    _run(model.train(), inp).square().mean().backward()
    assert model.layout_text_in is not None and model.layout_text_in.weight.grad is None
    assert model.text_in.weight.grad is not None  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="layout_tokens=true adds"):
        _cfg(text_layout=True, layout_tokens=True)


def test_text_layers_let_tokens_read_the_rest_of_the_caption() -> None:
    plain = EfficientUNet(_cfg(), text_dim=TEXT_DIM)
    model = EfficientUNet(_cfg(text_layers=2), text_dim=TEXT_DIM)
    added = {n for n, _ in model.named_parameters() if n.startswith("text_blocks.")}
    assert len(model.text_blocks) == 2 and added
    # outputs zero-initialised: with the plain model's weights it computes the plain model
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == added and not unexpected
    inp = _inputs()
    assert torch.equal(_run(model.eval(), inp), _run(plain.eval(), inp))
    # once trained, a token depends on the other tokens of its caption, never on padding
    _perturb(model)
    emb, mask = inp["text_emb"], inp["text_mask"].bool()
    tokens, _, _ = model.encode_text(emb, mask, None)
    other = emb.clone()
    other[:, 1] += 1.0  # the second token of every caption, padding where a caption is shorter
    changed, _, _ = model.encode_text(other, mask, None)
    has_two = mask[:, 1]
    assert not torch.allclose(changed[has_two, 0], tokens[has_two, 0])
    assert torch.equal(changed[~has_two, 0], tokens[~has_two, 0])
    # a caption with no tokens at all (treated as unconditional) stays finite
    empty, _, pooled = model.encode_text(emb, torch.zeros_like(mask), None)
    assert torch.isfinite(empty).all() and torch.isfinite(pooled).all()


def test_text_mlp_projects_tokens_nonlinearly() -> None:
    model = _perturb(EfficientUNet(_cfg(text_mlp=True), text_dim=TEXT_DIM))
    assert isinstance(model.text_in, nn.Sequential)
    inp = _inputs()
    emb, mask = inp["text_emb"], inp["text_mask"].bool()
    tokens, _, _ = model.encode_text(emb, mask, None)
    doubled, _, _ = model.encode_text(2 * emb, mask, None)
    # a linear projection followed by LayerNorm is invariant to scaling (its bias aside);
    # through the MLP the tokens change
    assert not torch.allclose(doubled, tokens, atol=1e-3)
    assert _run(model.eval(), inp).shape == (BATCH, 3, SIZE, SIZE)


def test_mean_pooling_averages_the_real_tokens() -> None:
    model = _perturb(EfficientUNet(_cfg(text_pooling="mean"), text_dim=TEXT_DIM))
    assert model.text_pool is None
    assert not any(n.startswith("text_pool.") for n, _ in model.named_parameters())
    inp = _inputs()
    emb, mask = inp["text_emb"], inp["text_mask"].bool()
    tokens, _, pooled = model.encode_text(emb, mask, None)
    m = mask[..., None].float()
    want = model.pool_proj((tokens * m).sum(1) / m.sum(1))
    torch.testing.assert_close(pooled, want)
    # padding does not reach the pooled embedding
    other = emb + (~mask[..., None]).float() * 3.0
    torch.testing.assert_close(model.encode_text(other, mask, None)[2], pooled)
    assert _run(model.eval(), inp).shape == (BATCH, 3, SIZE, SIZE)


def test_attention_only_where_configured() -> None:
    levels = (LevelConfig(mult=1, res_blocks=2), LevelConfig(mult=2, res_blocks=2))
    model = EfficientUNet(_cfg(levels=levels, mid_attn=False), text_dim=TEXT_DIM)
    assert _attention_blocks(model) == 0
    with_mid = EfficientUNet(_cfg(levels=levels, mid_attn=True), text_dim=TEXT_DIM)
    assert _attention_blocks(with_mid) == 1


def test_no_middle_block() -> None:
    cfg = _sr_cfg(mid_blocks=0, mid_attn=False)
    model = _model(cfg, sr=True)
    assert len(model.mid.blocks) == 0
    with_mid = EfficientUNet(_sr_cfg(mid_blocks=2), text_dim=TEXT_DIM, lowres=True)
    assert count_parameters(model) < count_parameters(with_mid)
    out = _run(model, _inputs())
    assert out.shape == (BATCH, 3, SIZE, SIZE)
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_head_dim_not_dividing_width_is_rejected_or_works() -> None:
    try:
        cfg = _cfg(channels=40, head_dim=12)
    except ValueError as e:  # the config rejecting it, naming head_dim, is fine
        assert "head_dim" in str(e)
        return
    model = _model(cfg)
    out = _run(model, _inputs())  # ...or the network must cope with it
    assert out.shape == (BATCH, 3, SIZE, SIZE)


def test_count_parameters_matches_torch() -> None:
    model = EfficientUNet(_cfg(), text_dim=TEXT_DIM)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters()) > 0


# --------------------------------------------------------------------------- paper sizes

PAPER = Path(__file__).resolve().parents[2] / "configs" / "paper"
PAPER_PARAMS = {"base": 2.0e9, "sr256": 6.0e8, "sr1024": 4.0e8}
_SA = {"self_attn": True, "cross_attn": True, "attn_every_block": True}


def _inline_paper() -> list[tuple[str, str, UNetConfig, int, bool]]:
    """The paper's three U-Nets, spelled out (T5-XXL: 4096-d tokens)."""
    L = LevelConfig
    base = UNetConfig(
        channels=512,
        levels=(
            L(mult=1, res_blocks=3),
            L(mult=2, res_blocks=3, **_SA),
            L(mult=3, res_blocks=3, **_SA),
            L(mult=4, res_blocks=3, **_SA),
        ),
    )
    sr256 = UNetConfig(
        channels=128,
        cond_dim=1024,
        levels=(
            L(mult=1, res_blocks=2),
            L(mult=2, res_blocks=4),
            L(mult=4, res_blocks=8),
            L(mult=8, res_blocks=8, self_attn=True, cross_attn=True),
        ),
    )
    sr1024 = UNetConfig(
        channels=128,
        cond_dim=1024,
        mid_blocks=0,
        mid_attn=False,
        levels=(
            L(mult=1, res_blocks=2),
            L(mult=2, res_blocks=4),
            L(mult=4, res_blocks=8),
            L(mult=8, res_blocks=6, cross_attn=True),
        ),
    )
    return [
        ("inline:base", "base", base, 4096, False),
        ("inline:sr256", "sr256", sr256, 4096, True),
        ("inline:sr1024", "sr1024", sr1024, 4096, True),
    ]


def _paper_cases() -> list[tuple[str, str, UNetConfig, int | None, bool]]:
    """Stages of configs/paper/*.yaml (run and cascade files), plus the inline spec; a U-Net
    that appears more than once is counted once."""
    cases: list[tuple[str, str, UNetConfig, int | None, bool]] = []
    for path in sorted(PAPER.glob("*.yaml")):
        cfg = load_any_config(path)
        stages = cfg.stages if isinstance(cfg, CascadeConfig) else (cfg.stage,)
        for st in stages:
            cases.append((f"{path.name}:{st.name}", st.name, st.unet, cfg.text.dim, st.is_sr))
    cases += _inline_paper()
    seen: set[tuple[str, str, int | None, bool]] = set()
    unique = []
    for case in cases:
        _, name, unet, dim, sr = case
        key = (
            name,
            unet.model_copy(update={"grad_checkpointing": False}).model_dump_json(),
            dim,
            sr,
        )
        if key not in seen:
            seen.add(key)
            unique.append(case)
    return unique


PAPER_CASES = _paper_cases()


@pytest.mark.parametrize(
    ("name", "unet", "dim", "sr"), [c[1:] for c in PAPER_CASES], ids=[c[0] for c in PAPER_CASES]
)
def test_paper_parameter_counts(name: str, unet: UNetConfig, dim: int | None, sr: bool) -> None:
    assert name in PAPER_PARAMS, f"stage {name!r} has no paper size; known: {list(PAPER_PARAMS)}"
    assert dim is not None, "paper configs must set text.dim (T5-XXL is not available here)"
    with torch.device("meta"):
        model = EfficientUNet(unet, text_dim=dim, lowres=sr)
    n = count_parameters(model)
    paper = PAPER_PARAMS[name]
    print(f"\n{name}: {n / 1e6:.1f}M parameters (paper: {paper / 1e6:.0f}M)")
    assert abs(n - paper) / paper < 0.10, f"{name}: {n / 1e6:.1f}M vs paper {paper / 1e6:.0f}M"


def test_paper_yaml_stages_are_covered() -> None:
    names = {c[1] for c in PAPER_CASES if not c[0].startswith("inline:")}
    assert names <= set(PAPER_PARAMS)


# --------------------------------------------------------------------------- upsample_to


def test_upsample_to_same_size_is_identity() -> None:
    x = torch.randn(2, 3, 8, 8)
    assert upsample_to(x, 8) is x


@pytest.mark.parametrize(("src", "dst"), [(8, 32), (16, 24), (32, 8)])
def test_upsample_to_shape(src: int, dst: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, src, src)
    y = upsample_to(x, dst)
    assert y.shape == (2, 3, dst, dst)
    assert y.dtype == x.dtype
    # A constant image stays constant; the mean is roughly preserved.
    c = torch.full((1, 3, src, src), 0.25)
    torch.testing.assert_close(upsample_to(c, dst), torch.full((1, 3, dst, dst), 0.25))
    assert abs(float(y.mean() - x.mean())) < 0.1


def test_upsample_to_non_square_input() -> None:
    x = torch.randn(1, 3, 8, 16)
    assert upsample_to(x, 16).shape == (1, 3, 16, 16)


def test_layout_input_reads_the_heads_coarse_drawing_as_three_more_channels() -> None:
    """unet.layout_input: the U-Net's input is the noisy image and the layout heads' drawing,
    pooled to layout_input_grid cells and upsampled; by default the drawing comes from the
    text (detached: the U-Net's loss does not train the heads), or the caller passes one."""
    from imagen_ray.unet import coarse_layout

    cfg = _cfg(text_layout=True, layout_head=True, layout_input=True, layout_input_grid=2)
    model = _perturb(EfficientUNet(cfg, text_dim=TEXT_DIM))
    assert model.init_conv.in_channels == 6
    inp = _inputs()
    x, emb, mask = inp["x_t"], inp["text_emb"], inp["text_mask"]
    s = x.shape[-1]
    drawn = model.layout_condition(s, emb, mask)
    assert drawn.shape == x.shape and not drawn.requires_grad
    # 2 x 2 cells, each one colour
    torch.testing.assert_close(drawn, coarse_layout(drawn, 2, s))
    assert drawn[:, :, : s // 2, : s // 2].flatten(2).std(-1).max() < 1e-6
    torch.testing.assert_close(_run(model.eval(), inp), _run(model, inp, layout_image=drawn))
    other = torch.rand_like(drawn) * 2 - 1
    assert not torch.allclose(_run(model, inp), _run(model, inp, layout_image=other))
    model.zero_grad()
    _run(model.train(), inp).square().mean().backward()
    heads = [p for n, p in model.named_parameters() if ".layout_head." in n]
    assert heads and all(p.grad is None or not p.grad.any() for p in heads)
    with pytest.raises(ValueError, match="layout_input=true gives the U-Net the layout heads"):
        _cfg(text_layout=True, layout_input=True)
