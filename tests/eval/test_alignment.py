"""The alignment report: prompts for seen/held-out combinations, scoring, files, failures grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagen_ray.data.synthetic import heldout_json, heldout_prompts, render_attributes
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES
from imagen_ray.eval.alignment import (
    HELDOUT,
    SEEN,
    evaluate_probe,
    load_spec,
    probe_items,
    seen_prompts,
    summary_table,
)


def draw(attrs: dict[str, Any], size: int = 64) -> np.ndarray:
    """One object with ``attrs`` at its region anchor, large, on black."""
    full = {
        **attrs,
        "rgb": list(ATTRIBUTES.colours[attrs["colour"]]),
        "background_rgb": [0, 0, 0],
        "object_size": 0.3,
        "centers": [list(ATTRIBUTES.positions[attrs["position"]])],
    }
    return np.asarray(render_attributes(full, size))


def test_seen_prompts_avoid_heldout_pairs_and_are_seeded() -> None:
    spec = SyntheticSpec(heldout_shape_positions=(("circle", "left"),))
    items = seen_prompts(spec, 20, seed=3)
    assert len(items) == 20
    assert items == seen_prompts(spec, 20, seed=3)
    assert items != seen_prompts(spec, 20, seed=4)
    for it in items:
        a = it["attributes"]
        assert (a["colour"], a["shape"]) not in spec.heldout
        assert (a["shape"], a["position"]) != ("circle", "left")
        assert it["prompt"].startswith(("a ", "an ")) and a["shape"] in it["prompt"]
    held = probe_items(spec)
    n_held = len(heldout_prompts(spec))
    assert [it["split"] for it in held] == [HELDOUT] * n_held + [SEEN] * n_held
    assert len(probe_items(spec, num_seen=0)) == n_held


def test_load_spec_reads_heldout_json_file_or_directory(tmp_path: Path) -> None:
    spec = SyntheticSpec(
        heldout=(("white", "square"),), heldout_shape_positions=(("cross", "top"),)
    )
    (tmp_path / "heldout.json").write_text(json.dumps(heldout_json(spec)))
    for path in (tmp_path, tmp_path / "heldout.json"):
        got = load_spec(path)
        assert got.heldout == (("white", "square"),)
        assert got.heldout_shape_positions == (("cross", "top"),)
    assert load_spec(None).heldout == SyntheticSpec().heldout
    with pytest.raises(FileNotFoundError, match="--heldout"):
        load_spec(tmp_path / "missing.json")


def test_evaluate_probe_scores_per_split_and_writes_the_report(tmp_path: Path) -> None:
    held = [{**it, "split": HELDOUT} for it in heldout_prompts()[:4]]
    seen = [{**it, "split": SEEN} for it in seen_prompts(SyntheticSpec(), 2)]
    items = held + seen
    images = [draw(it["attributes"]) for it in items]
    # held-out item 0 gets a wrong image: other colour and shape, same position
    wrong = {**held[0]["attributes"], "colour": "yellow", "shape": "square"}
    images[0] = draw(wrong)
    m = evaluate_probe(images, items, tmp_path, seeds=list(range(6)), extra={"note": "x"})

    h, s = m["splits"][HELDOUT], m["splits"][SEEN]
    assert h["n"] == 4 and s["n"] == 2
    assert h["accuracy"]["colour"] == 0.75 and h["accuracy"]["shape"] == 0.75
    assert h["accuracy"]["position"] == 1.0 and h["accuracy"]["count"] == 1.0
    assert h["all"] == 0.75
    assert s["accuracy"] == {"colour": 1.0, "shape": 1.0, "position": 1.0, "count": 1.0}
    assert m["failures"] == 1 and m["note"] == "x"
    assert json.loads((tmp_path / "metrics.json").read_text()) == m

    lines = [json.loads(ln) for ln in (tmp_path / "readings.jsonl").read_text().splitlines()]
    assert len(lines) == 6
    first = lines[0]
    assert first["prompt"] == held[0]["prompt"] and first["seed"] == 0
    assert first["read"]["colour"] == "yellow" and first["read"]["shape"] == "square"
    assert sorted(first["wrong"]) == ["colour", "shape"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / first["file"])), images[0])
    assert all(ln["wrong"] == [] for ln in lines[1:])

    grid = Image.open(tmp_path / "failures.png")
    assert grid.width >= 128 and grid.height > 128  # one enlarged tile plus its labels

    table = summary_table(m)
    assert "heldout" in table and "75.0%" in table and "100.0%" in table

    # all right on a second run: the stale failures grid goes
    fixed = evaluate_probe([draw(it["attributes"]) for it in items], items, tmp_path)
    assert fixed["failures"] == 0 and not (tmp_path / "failures.png").exists()


def test_evaluate_probe_rejects_mismatched_inputs(tmp_path: Path) -> None:
    items = heldout_prompts()[:2]
    with pytest.raises(ValueError, match="1 images for 2 probe items"):
        evaluate_probe([draw(items[0]["attributes"])], items, tmp_path)
    with pytest.raises(ValueError, match="'attributes'"):
        evaluate_probe([draw(items[0]["attributes"])], [{"prompt": "x"}], tmp_path)
