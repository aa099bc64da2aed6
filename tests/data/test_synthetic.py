"""The synthetic shapes set: pixels agree with captions, held-out pairs stay out, seeds work."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from imagen_ray.cli.data import add_data_commands as register
from imagen_ray.data.synthetic import heldout_prompts, make_caption, render_sample, write_synthetic
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, parse_pair
from imagen_ray.data.writer import read_summary

NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}


def object_mask(img: np.ndarray, rgb: list[int], bg: list[int]) -> np.ndarray:
    """Pixels closer (L1) to the object colour than to the background colour."""
    x = img.astype(int)
    return np.abs(x - rgb).sum(-1) < np.abs(x - bg).sum(-1)


def nearest_position(cx: float, cy: float) -> str:
    return min(
        ATTRIBUTES.positions,
        key=lambda p: (
            (ATTRIBUTES.positions[p][0] - cx) ** 2 + (ATTRIBUTES.positions[p][1] - cy) ** 2
        ),
    )


def test_pixels_agree_with_caption_and_attributes() -> None:
    spec = SyntheticSpec(size=64, seed=3, count_probs=(0.4, 0.3, 0.3))
    seen = {"count": set(), "shape": set(), "position": set(), "size": set()}
    for i in range(60):
        image, caption, a = render_sample(spec, i)
        img = np.asarray(image)
        assert image.size == (64, 64) and image.mode == "RGB"
        for k in seen:
            seen[k].add(a[k])
        # the background colour fills the corners (objects keep a margin)
        for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
            assert np.abs(corner.astype(int) - a["background_rgb"]).max() <= 2, (i, caption)
        assert a["rgb"] != a["background_rgb"]
        mask = object_mask(img, a["rgb"], a["background_rgb"])
        labels, n = ndimage.label(mask)
        assert n == a["count"], (i, caption, n)
        # the object colour itself is present, saturated (interior pixels match exactly)
        assert (np.abs(img.astype(int) - a["rgb"]).max(-1) <= 3).sum() >= a["count"] * 4
        ys, xs = np.nonzero(mask)
        assert nearest_position(xs.mean() / 64, ys.mean() / 64) == a["position"], (i, caption)
        # each blob's bounding box is about object_size; small and large never overlap
        for sl in ndimage.find_objects(labels):
            side = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start) / 64
            assert abs(side - a["object_size"]) <= 0.06, (i, caption, side)
            assert (side < 0.23) == (a["size"] == "small"), (i, caption, side)
        # the caption names what was drawn
        words = caption.split()
        assert a["colour"] in words
        shape_word = a["shape"] if a["count"] == 1 else ATTRIBUTES.shape_plurals[a["shape"]]
        assert shape_word in words
        assert ATTRIBUTES.position_phrases[a["position"]] in caption
        assert NUMBER_WORDS[a["count"]] in words or (a["count"] == 1 and "an" in words)
        if "background" in caption:
            assert f"{a['background']} background" in caption
    assert seen["count"] == {1, 2, 3} and seen["size"] == {"small", "large"}
    assert seen["shape"] == set(ATTRIBUTES.shapes)
    assert seen["position"] == set(ATTRIBUTES.positions)


def test_shapes_have_their_fill_ratio() -> None:
    """A checker can tell shapes apart by area / bounding-box area."""
    spec = SyntheticSpec(size=128, count_probs=(1.0, 0.0, 0.0))
    fills: dict[str, list[float]] = {s: [] for s in ATTRIBUTES.shapes}
    for i in range(40):
        image, _, a = render_sample(spec, i)
        mask = object_mask(np.asarray(image), a["rgb"], a["background_rgb"])
        ys, xs = np.nonzero(mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills[a["shape"]].append(mask.sum() / box)
    for shape, values in fills.items():
        assert values, shape
        assert np.allclose(values, ATTRIBUTES.shape_fill[shape], atol=0.08), (shape, values)


def test_same_seed_same_image_other_seed_differs() -> None:
    spec = SyntheticSpec(size=32, seed=7)
    a = render_sample(spec, 5)
    b = render_sample(SyntheticSpec(size=32, seed=7, num_samples=3), 5)  # independent of N
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and a[1:] == b[1:]
    others = [render_sample(SyntheticSpec(size=32, seed=8), i) for i in range(5, 8)]
    assert all(not np.array_equal(np.asarray(a[0]), np.asarray(o[0])) for o in others)
    assert render_sample(spec, 6)[2] != a[2]


@pytest.mark.parametrize("size", [8, 16, 64, 256])
def test_renders_at_any_resolution(size: int) -> None:
    image, caption, a = render_sample(SyntheticSpec(size=size), 0)
    assert image.size == (size, size) and image.mode == "RGB" and caption
    mask = object_mask(np.asarray(image), a["rgb"], a["background_rgb"])
    assert 0 < mask.mean() < 0.5
    ys, xs = np.nonzero(mask)
    assert nearest_position((xs.mean() + 0.5) / size, (ys.mean() + 0.5) / size) == a["position"]


def test_heldout_pairs_never_written_and_listed(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        num_samples=300,
        size=8,
        seed=1,
        heldout=(("red", "circle"), ("blue", "square")),
        heldout_shape_positions=(("triangle", "left"),),
        samples_per_shard=128,
    )
    s = write_synthetic(spec, tmp_path, progress=False)
    assert s.samples == 300 and s.shards == (
        "shard-000000.tar",
        "shard-000001.tar",
        "shard-000002.tar",
    )
    pairs = set()
    for name in s.shards:
        with tarfile.open(tmp_path / name) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
        for fname, content in files.items():
            if fname.endswith(".json"):
                meta = json.loads(content)
                key = fname[: -len(".json")]
                assert key.startswith("syn-") and files[f"{key}.txt"].decode() == make_caption(meta)
                assert meta["width"] == meta["height"] == 8
                pairs.add((meta["colour"], meta["shape"]))
                assert (meta["shape"], meta["position"]) != ("triangle", "left")
                png = Image.open(io.BytesIO(files[f"{key}.png"]))
                assert png.size == (8, 8)
    assert ("red", "circle") not in pairs and ("blue", "square") not in pairs
    assert ("red", "square") in pairs and ("blue", "circle") in pairs  # colours/shapes still seen
    held = json.loads((tmp_path / "heldout.json").read_text())
    assert held["pairs"] == [["red", "circle"], ["blue", "square"]]
    assert held["shape_position_pairs"] == [["triangle", "left"]]
    assert "a red circle on the left" in held["prompts"]
    assert "a blue square in the center" in held["prompts"]
    assert "an orange triangle on the left" in held["prompts"]
    assert len(held["prompts"]) == 2 * 5 + len(ATTRIBUTES.colours)
    assert held["prompts"] == [p["prompt"] for p in heldout_prompts(spec)]
    summary = read_summary(tmp_path)
    assert SyntheticSpec.from_dict(summary["synthetic"]) == spec
    assert summary["attributes"]["colours"]["red"] == [255, 0, 0]


def test_spec_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        SyntheticSpec(heldout=(("pink", "circle"),))
    with pytest.raises(ValueError, match="size"):
        SyntheticSpec(size=2048)
    with pytest.raises(ValueError, match="count_probs"):
        SyntheticSpec(count_probs=(0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="exclude every"):
        SyntheticSpec(
            heldout_shape_positions=tuple(
                (s, p) for s in ATTRIBUTES.shapes for p in ATTRIBUTES.positions
            )
        )
    with pytest.raises(ValueError, match="unknown size 'huge'"):
        SyntheticSpec(sizes=("huge",))
    with pytest.raises(ValueError, match="sizes must name"):
        SyntheticSpec(sizes=())
    with pytest.raises(ValueError, match="templates must not be empty"):
        SyntheticSpec(templates=())
    with pytest.raises(ValueError, match="invisible on every background"):
        SyntheticSpec(backgrounds=("white",))
    # a strict typed model like the configs: unknown keys and assignments are refused
    with pytest.raises(ValueError, match="num_sample"):
        SyntheticSpec.from_dict({**SyntheticSpec().to_dict(), "num_sample": 3})
    with pytest.raises(ValueError, match="frozen"):
        SyntheticSpec().size = 32  # type: ignore[misc]
    assert parse_pair("red:circle") == ("red", "circle")
    with pytest.raises(ValueError, match="COLOUR:SHAPE"):
        parse_pair("red-circle")


def test_colour_table_is_well_separated() -> None:
    rgb = np.array(list(ATTRIBUTES.colours.values()), dtype=float)
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert len(rgb) >= 6 and d[np.triu_indices(len(rgb), 1)].min() > 100
    assert len(ATTRIBUTES.shapes) >= 4 and set(ATTRIBUTES.sizes) == {"small", "large"}


def test_cli_synthetic_writes_shards_heldout_and_preview(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    out = tmp_path / "syn"
    argv = ["synthetic", "--out", str(out), "--num-samples", "20", "--size", "16"]
    argv += ["--sizes", "large", "--backgrounds", "black", "gray"]
    args = p.parse_args(
        [*argv, "--samples-per-shard", "8", "--heldout", "red:cross", "--no-progress"]
    )
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "wrote 20 samples in 3 shard(s)" in line and "heldout.json" in line
    summary = read_summary(out)
    assert summary["shards"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert summary["synthetic"]["heldout"] == [["red", "cross"]]
    assert json.loads((out / "heldout.json").read_text())["pairs"] == [["red", "cross"]]
    preview = Image.open(out / "preview.png")
    assert preview.width > 4 * 96 and preview.height > 4 * 96
    captions = (out / "preview.txt").read_text().splitlines()
    assert summary["synthetic"]["backgrounds"] == ["black", "gray"]
    spec = SyntheticSpec(
        size=16, heldout=(("red", "cross"),), sizes=("large",), backgrounds=("black", "gray")
    )
    assert len(captions) == 16 and captions[0].endswith(render_sample(spec, 0)[1])
    bad = p.parse_args([*argv, "--heldout", "pink:circle"])
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        bad.func(bad)


def test_sizes_restrict_what_is_drawn_and_round_trip() -> None:
    spec = SyntheticSpec(size=64, sizes=("large",))
    assert {render_sample(spec, i)[2]["size"] for i in range(30)} == {"large"}
    assert SyntheticSpec.from_dict(spec.to_dict()) == spec
    # the default draws both sizes
    both = SyntheticSpec(size=64)
    assert {render_sample(both, i)[2]["size"] for i in range(30)} == {"small", "large"}


def test_backgrounds_restrict_what_is_drawn_and_round_trip() -> None:
    spec = SyntheticSpec(size=32, backgrounds=("black",))
    samples = [render_sample(spec, i) for i in range(30)]
    assert {at["background"] for _, _, at in samples} == {"black"}
    assert all(np.asarray(im)[0, 0].tolist() == [0, 0, 0] for im, _, _ in samples)
    assert SyntheticSpec.from_dict(spec.to_dict()) == spec
    # the default keeps drawing the same samples as before the option existed
    assert [render_sample(SyntheticSpec(size=32), i)[1] for i in range(5)] == [
        render_sample(SyntheticSpec(size=32, backgrounds=("black", "white", "gray")), i)[1]
        for i in range(5)
    ]
    with pytest.raises(ValueError, match="unknown background 'pink'"):
        SyntheticSpec(backgrounds=("pink",))
    with pytest.raises(ValueError, match="white object would be invisible"):
        SyntheticSpec(backgrounds=("white",))
