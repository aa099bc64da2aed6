"""bench/layout_probe.py and bench/side_probe.py: the side metric, the mirror, and that each
probe tells a model that reads the side from one that does not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from bench import layout_probe, side_probe
from imagen_ray.diffusion import get_log_snr_fn


def _scenes(n: int, size: int = 16) -> dict[str, Any]:
    """Two-object scenes: a red block and a blue block side by side (axis 0) or stacked
    (axis 1), either way round; token 0 says which way round (+1 / -1), token 1 the axis."""
    g = torch.Generator().manual_seed(0)
    flip = torch.randint(2, (n,), generator=g).bool()
    axis = torch.randint(2, (n,), generator=g)
    images = -torch.ones(n, 3, size, size)
    h = size // 2
    images[:, 0, :, :h] = 1.0  # red on the left ...
    images[:, 2, :, h:] = 1.0  # ... blue on the right
    images = torch.where(flip[:, None, None, None], images.flip(3), images)
    images = torch.where((axis == 1)[:, None, None, None], images.transpose(2, 3), images)
    emb = torch.zeros(n, 3, 8)
    emb[:, 0, 0] = flip.float() * 2 - 1
    emb[:, 1, 1] = axis.float() * 2 - 1
    emb[:, 2, 2] = 1.0
    grid = side_probe.to_grid(images)
    return {"emb": emb, "mask": torch.ones(n, 3, dtype=torch.bool), "target": grid,
            "axis": axis, "image": images}  # fmt: skip


def test_side_accuracy_is_one_for_the_truth_and_zero_for_its_mirror() -> None:
    data = _scenes(32)
    target, axis = data["target"], data["axis"]
    assert layout_probe.side_accuracy(target, target, axis) == 1.0
    mirrored = side_probe.to_grid(side_probe.mirror(data["image"], axis))
    assert layout_probe.side_accuracy(mirrored, target, axis) == 0.0
    # mirroring along the relation axis swaps the two objects: it changes every image
    assert not torch.equal(mirrored, target)


def test_the_layout_probe_learns_a_side_its_tokens_carry() -> None:
    data = _scenes(400)
    rows = layout_probe.train(data, "linear", [1, 150], batch=16, lr=3e-3)
    assert rows[-1]["steps"] == 150 and rows[-1]["test_scenes"] == 80
    assert rows[-1]["side_accuracy"] >= 0.9, rows
    # without the side in the tokens it stays at chance
    data["emb"][:, 0] = 0
    blind = layout_probe.train(data, "linear", [150], batch=16, lr=3e-3)
    assert 0.25 <= blind[-1]["side_accuracy"] <= 0.75, blind


class _Stage:
    """A stand-in stage predicting x0 directly: from the caption (the true image, looked up
    by its side token) or from x_t (what a stage that ignores the text would draw)."""

    def __init__(self, data: dict[str, Any], reads: str) -> None:
        self.data, self.reads = data, reads
        self.log_snr_fn = get_log_snr_fn("cosine", 2.0)
        self.cfg = SimpleNamespace(diffusion=SimpleNamespace(objective="x0"))

    def unet(
        self, x_t: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, mask: Any
    ) -> torch.Tensor:
        if self.reads == "noise":
            return x_t
        key = torch.stack([emb[:, 0, 0], emb[:, 1, 1]], 1)
        table = torch.stack([self.data["emb"][:, 0, 0], self.data["emb"][:, 1, 1]], 1)
        idx = (key[:, None] == table[None]).all(-1).float().argmax(1)
        return self.data["image"][idx]


def test_the_side_probe_tells_a_stage_that_reads_the_caption_from_one_that_reads_x_t() -> None:
    data = _scenes(64)
    text = side_probe.probe(_Stage(data, "caption"), data, [0.999, 0.5], batch=16, seed=0)
    assert [r["side_from_mirrored"] for r in text] == [1.0, 1.0]
    noise = side_probe.probe(_Stage(data, "noise"), data, [0.999, 0.5], batch=16, seed=0)
    # at t=0.5 x_t shows the layout: a stage that draws x_t follows the mirrored one
    assert noise[1]["side_from_true"] == 1.0 and noise[1]["side_from_mirrored"] == 0.0
    # at t=0.999 (SNR ~1e-6) x_t holds no layout: its guess is near chance
    assert 0.25 <= noise[0]["side_from_true"] <= 0.75, noise
    assert noise[0]["snr"] < 1e-4 < noise[1]["snr"] and noise[0]["scenes"] == 64


def test_init_zero_starts_the_layout_output_at_zero_as_the_unet_does() -> None:
    zero = layout_probe.LayoutProbe(8, mlp=False, layers=0, init="zero")
    normal = layout_probe.LayoutProbe(8, mlp=False, layers=0)
    assert not zero.layout.out.weight.any() and normal.layout.out.weight.abs().mean() > 0.01


def test_layout_head_side_scores_the_stage_layout_drawing() -> None:
    """side_probe.layout_head_side: the side accuracy of what Stage.layout_image draws."""
    data = _scenes(32)

    class _Drawer:
        def __init__(self, images: torch.Tensor) -> None:
            self.images = images

        def layout_image(self, emb: torch.Tensor, mask: Any, size: int) -> torch.Tensor:
            assert size == self.images.shape[-1] and emb.shape[0] == len(self.images)
            return self.images

    assert side_probe.layout_head_side(_Drawer(data["image"]), data) == 1.0
    mirrored = side_probe.mirror(data["image"], data["axis"])
    assert side_probe.layout_head_side(_Drawer(mirrored), data) == 0.0
