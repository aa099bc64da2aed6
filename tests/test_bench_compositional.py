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
