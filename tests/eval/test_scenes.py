"""The scene checker reads rendered scenes back and rejects near misses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from imagen_ray.data.scene_spec import SceneSpec
from imagen_ray.data.scenes import render_scene, scene_attributes
from imagen_ray.data.synthetic import render_attributes, render_sample
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, RELATIONS
from imagen_ray.eval.probe import background, fit_shape
from imagen_ray.eval.scenes import check_scene, read_scene

RED_CIRCLE, BLUE_SQUARE = ("red", "circle"), ("blue", "square")
RNG = np.random.default_rng


def scene(objects, relation: str, size: int = 64, bg: str = "gray", seed: int = 0) -> np.ndarray:
    attrs = scene_attributes(
        objects, relation, ["large"] * len(objects), bg, np.random.default_rng(seed)
    )
    return np.asarray(render_scene(attrs, size))


def asked(objects, relation: str | None = None, position: str | None = None) -> dict:
    return {
        "objects": [{"colour": c, "shape": s} for c, s in objects],
        "relation": relation,
        "position": position,
    }


@pytest.mark.parametrize("size", [32, 64])
def test_reads_back_rendered_scenes_at_32_and_64_px(size: int) -> None:
    spec = SyntheticSpec(size=size, seed=size, scenes=SceneSpec(probs=(0.0, 0.7, 0.3)))
    right, relations, n = 0, set(), 250
    for i in range(n):
        image, _, attrs = render_sample(spec, i)
        objects = [(o["colour"], o["shape"]) for o in attrs["objects"]]
        check = check_scene(image, asked(objects, attrs["relation"]))
        right += check.scene
        relations.add(attrs["relation"])
    assert relations == set(RELATIONS)
    assert right / n >= 0.98, f"{right}/{n} scenes read back at {size} px"


def test_reads_back_single_objects_and_counts_at_32_px() -> None:
    spec = SyntheticSpec(size=32, seed=9, count_probs=(0.4, 0.3, 0.3))
    for i in range(60):
        image, caption, a = render_sample(spec, i)
        item = asked([(a["colour"], a["shape"])] * a["count"], position=a["position"])
        check = check_scene(image, item)
        assert check.scene, (caption, check.wrong())


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("relation", list(RELATIONS))
def test_near_misses_are_rejected(relation: str, size: int) -> None:
    want = asked([RED_CIRCLE, BLUE_SQUARE], relation)
    right = check_scene(scene([RED_CIRCLE, BLUE_SQUARE], relation, size), want)
    assert right.scene and right.binding and right.relation
    # colours swapped between the objects: each shape is there, with the other's colour
    swapped = check_scene(scene([("blue", "circle"), ("red", "square")], relation, size), want)
    assert not swapped.binding and not swapped.scene
    # sides swapped: the right objects, the wrong way round
    sides = check_scene(scene([BLUE_SQUARE, RED_CIRCLE], relation, size), want)
    assert sides.binding and sides.relation is False and not sides.scene
    # one object missing, one object too many
    both = scene_attributes([RED_CIRCLE, BLUE_SQUARE], relation, ["large"] * 2, "black", RNG(1))
    alone = np.asarray(render_scene({**both, "objects": both["objects"][:1]}, size))
    missing = check_scene(alone, want)
    assert missing.matched[1] is None and not missing.count and not missing.scene
    third = [RED_CIRCLE, BLUE_SQUARE, ("green", "cross")]
    extra = check_scene(scene(third, relation, size), want)
    assert extra.binding is False and extra.count is False


def test_objects_match_in_any_order_and_the_mirrored_relation_holds() -> None:
    image = scene([RED_CIRCLE, BLUE_SQUARE], "left of")
    assert check_scene(image, asked([BLUE_SQUARE, RED_CIRCLE], "right of")).scene
    assert not check_scene(image, asked([BLUE_SQUARE, RED_CIRCLE], "left of")).scene
    assert not check_scene(image, asked([RED_CIRCLE, BLUE_SQUARE], "above")).scene
    row = scene([RED_CIRCLE, BLUE_SQUARE, ("yellow", "triangle")], "below", size=32)
    assert check_scene(row, asked([RED_CIRCLE, BLUE_SQUARE, ("yellow", "triangle")], "below")).scene
    assert not check_scene(
        row, asked([BLUE_SQUARE, RED_CIRCLE, ("yellow", "triangle")], "below")
    ).scene


def test_touching_objects_of_two_colours_are_two_objects() -> None:
    canvas = Image.new("RGB", (64, 64), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((10, 22, 31, 41), fill=(255, 0, 0))
    draw.rectangle((32, 22, 51, 41), fill=(0, 0, 255))
    found = read_scene(canvas)
    assert sorted((o.colour, o.shape) for o in found) == [("blue", "square"), ("red", "square")]
    check = check_scene(found, asked([("red", "square"), ("blue", "square")], "left of"))
    assert check.scene


def test_fit_shape_tells_shapes_apart_at_five_pixels_and_noise_is_none() -> None:
    for shape in ATTRIBUTES.shapes:
        for centre in ([0.4, 0.45], [0.55, 0.6]):
            img = render_attributes(
                {
                    "shape": shape,
                    "rgb": [255, 255, 0],
                    "background_rgb": [128, 128, 128],
                    "object_size": 0.16,
                    "centers": [centre],
                },
                32,
            )
            x = np.asarray(img, dtype=np.float32)
            bg = background(x)
            region = np.linalg.norm(x - bg, axis=-1) > 30
            assert fit_shape(x, bg, region)[0] == shape
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.float32)
    shape, iou = fit_shape(noise, background(noise), np.ones((64, 64), bool))
    assert shape is None and iou < 0.5
    assert read_scene(np.full((32, 32, 3), 128, np.uint8)) == []


def test_the_relation_is_read_on_the_named_colours_not_on_any_blobs() -> None:
    """Two objects of other colours in the asked arrangement do not make the relation hold."""
    want = asked([RED_CIRCLE, BLUE_SQUARE], "left of")
    others = check_scene(scene([("green", "circle"), ("yellow", "square")], "left of"), want)
    assert others.relation is False and not others.scene
    mirrored = check_scene(scene([("blue", "circle"), ("red", "square")], "right of"), want)
    assert mirrored.relation is True and not mirrored.binding  # red left of blue, wrong shapes
