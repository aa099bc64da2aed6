"""Editing through the generation plan: image-to-image, inpainting at every stage,
upscaling a given image, and the plan's checks of an edit request."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from imagen_ray.cascade import Cascade, PlanError
from imagen_ray.cascade.edit import EditInputs, mask_array, mask_tensor
from imagen_ray.images import to_uint8
from tests.cascade.test_cascade import FakeEncoder, cascade_config, perturb

PROMPTS = ["a red circle", "two blue squares left", "a green star"]


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=1)
    perturb(c)
    return c.eval()


def _picture(seed: int, size: int = 32) -> np.ndarray:
    """A smooth picture with structure (uint8 HWC)."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def _mask(size: int = 32) -> np.ndarray:
    """White (repaint) in the right half, black (keep) elsewhere."""
    m = np.zeros((size, size), np.uint8)
    m[:, size // 2 :] = 255
    return m


def test_strength_1_without_a_mask_is_text_to_image(cascade: Cascade) -> None:
    t2i = cascade.generate(PROMPTS[:2], seed=4)
    edit = cascade.generate(PROMPTS[:2], seed=4, image=_picture(0), strength=1.0)
    assert all(torch.equal(a, b) for a, b in zip(t2i.images, edit.images, strict=True))


def test_strength_near_0_returns_the_input(cascade: Cascade) -> None:
    picture = _picture(1)
    out = cascade.generate(PROMPTS[:1], seed=0, image=picture, strength=0.005)
    for x in out.images:  # every stage starts from the input at its size
        size = x.shape[-1]
        want = np.asarray(Image.fromarray(picture).resize((size, size), Image.Resampling.LANCZOS))
        diff = np.abs(to_uint8(x)[0].astype(int) - want.astype(int))
        assert diff.mean() < 3, diff.mean()  # an untrained net: a few levels
    far = cascade.generate(PROMPTS[:1], seed=0, image=picture, strength=0.9)
    assert np.abs(to_uint8(far.images[-1])[0].astype(int) - picture.astype(int)).mean() > 8


@pytest.mark.parametrize("resample_times", [1, 3])
def test_pixels_outside_the_mask_are_the_input_at_every_stage(
    cascade: Cascade, resample_times: int
) -> None:
    picture = _picture(2)
    out = cascade.generate(
        PROMPTS[:2], seed=7, image=picture, mask=_mask(), resample_times=resample_times
    )
    t2i = cascade.generate(PROMPTS[:2], seed=7)
    for x, plain in zip(out.images, t2i.images, strict=True):
        size = x.shape[-1]
        known = np.asarray(Image.fromarray(picture).resize((size, size), Image.Resampling.LANCZOS))
        got = to_uint8(x)
        kept = ~mask_tensor(_mask(), size)[0].numpy()
        assert kept.sum() == size * size // 2
        for row in got:
            assert np.array_equal(row[kept], known[kept])  # exact, after the uint8 round trip
        assert not np.array_equal(got[0][~kept], known[~kept])  # the rest is repainted
        assert not torch.equal(x, plain)


def test_resampling_changes_the_repainted_region_only(cascade: Cascade) -> None:
    kw = {"image": _picture(3), "mask": _mask(), "seed": 1}
    once = cascade.generate(PROMPTS[:1], resample_times=1, **kw).uint8()[0]
    thrice = cascade.generate(PROMPTS[:1], resample_times=3, **kw).uint8()[0]
    kept = ~mask_tensor(_mask(), 32)[0].numpy()
    assert np.array_equal(once[kept], thrice[kept]) and not np.array_equal(once, thrice)


def test_a_batch_of_mixed_edits_equals_the_edits_one_by_one(cascade: Cascade) -> None:
    images = [_picture(4), None, _picture(5)]
    masks = [_mask(), None, None]
    strengths = [1.0, 1.0, 0.5]
    batch = cascade.generate(
        PROMPTS, seed=[10, 11, 12], image=images, mask=masks, strength=strengths
    )
    for i in range(3):
        alone = cascade.generate(
            [PROMPTS[i]], seed=[10 + i], image=[images[i]], mask=[masks[i]],
            strength=[strengths[i]],
        )  # fmt: skip
        for a, b in zip(alone.images, batch.images, strict=True):
            torch.testing.assert_close(a[0], b[i], atol=1e-5, rtol=0)
    t2i = cascade.generate([PROMPTS[1]], seed=[11])  # the row without an image
    torch.testing.assert_close(t2i.images[-1][0], batch.images[-1][1], atol=1e-5, rtol=0)


def test_upscale_starts_at_the_sr_stage_from_the_given_image(cascade: Cascade) -> None:
    full = cascade.generate(PROMPTS[:2], seed=3)
    low = list(full.uint8(0))  # the base stage's output, as a user would save it
    up = cascade.generate(PROMPTS[:2], seed=3, image=low, start="sr")
    assert up.stages == ["sr"] and up.images[0].shape == (2, 3, 32, 32)
    assert up.sampling == full.sampling[1:]
    # the same low-res input (up to its uint8 rounding) and the same draws: the same image
    same = (up.images[0] - full.images[1]).abs()
    assert same.max() < 0.05
    other = cascade.generate(PROMPTS[:2], seed=3, image=[np.flipud(x).copy() for x in low], start=1)
    assert (other.images[0] - full.images[1]).abs().mean() > 5 * same.mean()


def test_mask_polarity_and_non_binary_values() -> None:
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    assert mask_array(grey).tolist() == [[False, False], [True, True]]  # white repaints
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = [[0, 255], [1, 0]]  # OpenAI: only fully transparent pixels repaint
    assert mask_array(rgba).tolist() == [[True, False], [False, True]]
    assert mask_array(Image.fromarray(rgba, "RGBA")).tolist() == [[True, False], [False, True]]
    assert mask_array(np.array([[0.2, 0.7]])).tolist() == [[False, True]]
    opaque = np.full((1, 2, 4), 255, np.uint8)
    opaque[0, 0, :3] = 0  # an editor's RGBA export, opaque everywhere: read by its grey
    assert mask_array(opaque).tolist() == [[False, True]]


def test_masks_are_resized_to_each_stage_repainting_any_touched_pixel() -> None:
    m = np.zeros((8, 8), bool)
    m[0, 0] = True  # one source pixel
    assert mask_tensor(m, 4)[0].sum() == 1 and mask_tensor(m, 4)[0, 0, 0]
    assert mask_tensor(m, 16)[0].sum() == 4  # upscaled: its 2 x 2 block
    wide = np.zeros((8, 16), bool)
    wide[:, :4] = True  # outside the centre square: nothing to repaint there
    assert mask_tensor(wide, 8).sum() == 0


def test_edit_requests_are_checked_naming_the_field(cascade: Cascade) -> None:
    pic = _picture(0)
    cases = [
        ({"strength": 0.0, "image": pic}, "strength: 0.0 is outside \\(0, 1\\]"),
        ({"strength": 1.5, "image": pic}, "strength: 1.5 is outside"),
        ({"strength": 0.5}, "strength: 0.5 needs an image"),
        ({"mask": _mask()}, "mask: a mask needs its image"),
        ({"start": "sr"}, "start: starting at stage 'sr' needs an image"),
        ({"image": pic, "mask": _mask(), "resample_times": 0}, "resample_times: 0 is outside"),
        ({"image": pic, "mask": np.zeros((32, 16), np.uint8)}, "mask: the mask is 16x32 but"),
        ({"image": [pic, pic]}, "image: got 2 for 1 prompts"),
        ({"image": np.zeros((4, 4, 3), np.int64)}, "image: an array must be uint8"),
        ({"image": pic, "start": "sr", "until": "base"}, "start: stage 'sr' comes after"),
    ]
    for kw, match in cases:
        with pytest.raises(PlanError, match=match):
            cascade.generate(PROMPTS[:1], **kw)


def test_rgba_images_are_composited_and_inputs_read_once() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent: white, as training data
    inputs = EditInputs.of(2, rgba, None)
    assert inputs.has_image == [True, True] and inputs.has_mask == [False, False]
    assert torch.equal(inputs.images_at(4), torch.ones(2, 3, 4, 4))
    assert inputs.images_at(4) is inputs.images_at(4) and inputs.keep_at(4) is None
