"""The alignment probe reads the synthetic set's own images back, and is not fooled."""

from __future__ import annotations

import numpy as np
import pytest

from imagen_ray.data.synthetic import render_attributes, render_sample
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES
from imagen_ray.eval.probe import Reading, read_image, score


@pytest.mark.parametrize("count_probs", [(1.0, 0.0, 0.0), (0.4, 0.3, 0.3)])
def test_reads_back_every_attribute_of_training_images_at_64px(count_probs) -> None:
    spec = SyntheticSpec(size=64, seed=11, count_probs=count_probs)
    readings, expected = [], []
    for i in range(120):
        image, _, attrs = render_sample(spec, i)
        readings.append(read_image(image))
        expected.append(attrs)
    result = score(readings, expected)
    assert result["n"] == 120
    assert result["accuracy"] == {"colour": 1.0, "shape": 1.0, "position": 1.0, "count": 1.0}
    assert result["all"] == 1.0


def test_large_objects_read_back_at_32px() -> None:
    spec = SyntheticSpec(size=32, seed=2, count_probs=(1.0, 0.0, 0.0))
    for i in range(80):
        image, caption, attrs = render_sample(spec, i)
        if attrs["size"] != "large":
            continue
        r = read_image(image)
        assert (r.colour, r.shape, r.position, r.count) == (
            attrs["colour"],
            attrs["shape"],
            attrs["position"],
            1,
        ), caption


def test_every_shape_is_told_from_the_others() -> None:
    base = {"rgb": [255, 0, 0], "background_rgb": [0, 0, 0], "object_size": 0.3}
    for shape in ATTRIBUTES.shapes:
        for center in ([0.3, 0.6], [0.5, 0.5], [0.72, 0.3]):
            img = render_attributes({**base, "shape": shape, "centers": [center]}, 64)
            assert read_image(img).shape == shape


def test_blank_and_noise_images_read_nothing_useful() -> None:
    blank = read_image(np.full((64, 64, 3), 128, np.uint8))
    assert blank == Reading(None, None, None, 0, 0.0, 0.0)
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    r = read_image(noise)
    # uniform noise is one ragged blob that matches no shape template
    assert r.shape is None and r.shape_iou < 0.5


def test_wrong_attributes_score_zero_and_bad_input_is_named() -> None:
    spec = SyntheticSpec(size=64, seed=4, count_probs=(1.0, 0.0, 0.0))
    image, _, attrs = render_sample(spec, 0)
    other = next(c for c in ATTRIBUTES.colours if c != attrs["colour"])
    result = score([read_image(image)], [{**attrs, "colour": other}])
    assert result["accuracy"]["colour"] == 0.0 and result["all"] == 0.0
    with pytest.raises(ValueError, match="readings for"):
        score([], [attrs])
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        read_image(np.zeros((8, 8), np.uint8))
