"""bench/compositional.py: every variant is a valid run config, and rows read the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import compositional
from imagen_ray.config import load_run_config


@pytest.mark.parametrize("name", list(compositional.VARIANTS))
def test_every_variant_loads_as_a_run_config(name: str) -> None:
    _, overrides, data = compositional.VARIANTS[name]
    cfg = load_run_config(compositional.CONFIG, [f"data.shards={Path('x')}", *overrides])
    base = load_run_config(compositional.CONFIG, ["data.shards=x"])
    assert set(data) <= {"scene_probs", "steps", "encode", "scenes"}
    assert name == "baseline" or cfg != base or data  # each variant changes something


def _score(n: int, scene: float, relation: float | None = 1.0) -> dict:
    accuracy = {"scene": scene, "binding": scene, "relation": relation, "colour": 1.0,
                "shape": 0.5, "count": 1.0, "position": None}  # fmt: skip
    return {"n": n, "accuracy": accuracy}


def test_summarise_pools_the_two_object_categories(tmp_path: Path) -> None:
    metrics = {
        "splits": {"heldout": _score(10, 0.3), "seen": _score(4, 0.25)},
        "categories": {
            "colour binding": {"heldout": _score(2, 0.5), "seen": _score(2, 0.0)},
            "spatial relation": {"heldout": _score(6, 0.25, 0.5)},
            "single object": {"heldout": _score(2, 1.0, None), "seen": _score(2, 0.5, None)},
        },
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    row = compositional.summarise(json.loads((tmp_path / "metrics.json").read_text()))
    held = row["heldout"]
    assert held["scene"] == pytest.approx((2 * 0.5 + 6 * 0.25) / 8)
    assert held["relation"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    assert held["single"] == 1.0 and held["all"] == 0.3
    assert row["seen"]["scene"] == 0.0 and row["seen"]["single"] == 0.5
    assert row["categories"]["spatial relation"] == {"heldout": 0.25}


def test_figure_puts_the_variants_side_by_side_on_held_out_two_object_prompts(
    tmp_path: Path,
) -> None:
    from PIL import Image

    def record(prompt: str, split: str, category: str, k: int) -> dict:
        read = {"found": [{"colour": "red", "shape": "circle"}], "matched": [0, None],
                "colour": [True, False], "shape": [True, False], "relation": False}  # fmt: skip
        return {"prompt": prompt, "split": split, "category": category, "read": read,
                "file": f"images/{k:05d}.png"}  # fmt: skip

    rows = [
        ("a red circle left of a blue square", "heldout", "spatial relation"),
        ("a red circle left of a blue square", "heldout", "spatial relation"),  # 2nd image
        ("a red circle", "heldout", "single object"),
        ("a blue square above a red circle", "seen", "colour binding"),
        ("a green cross below a red circle", "heldout", "colour binding"),
    ]
    for name, shade in (("a", 40), ("b", 200)):
        ev = tmp_path / name / "eval"
        (ev / "images").mkdir(parents=True)
        recs = [record(p, s, c, k) for k, (p, s, c) in enumerate(rows)]
        (ev / "readings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        for k in range(len(rows)):
            Image.new("RGB", (32, 32), (shade, 0, 0)).save(ev / "images" / f"{k:05d}.png")
    sheet = compositional.figure(tmp_path, ["a", "b"])
    # two prompts qualify (held-out, two objects, first image each): 4 tiles in one row
    tile = 128 + 4  # the tile's image side plus the grid's padding
    assert sheet.width == 4 * tile + 4
    pixels = [sheet.getpixel((4 + i * tile + 64, 4 + 64)) for i in range(4)]
    assert [p[0] for p in pixels] == [40, 200, 40, 200]  # a, b, a, b

    (tmp_path / "b" / "eval" / "readings.jsonl").write_text(
        "".join(
            json.dumps(record("other", "heldout", "spatial relation", k)) + "\n" for k in range(5)
        )
    )
    with pytest.raises(ValueError, match="other prompts"):
        compositional.figure(tmp_path, ["a", "b"])
