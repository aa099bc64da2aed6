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
    assert set(data) <= {"scene_probs", "steps", "encode"}
    assert name == "baseline" or cfg != base or data  # each variant changes something


def test_summarise_reads_splits_and_categories(tmp_path: Path) -> None:
    score = {"n": 2, "accuracy": {"scene": 0.5, "binding": 0.5, "relation": 1.0, "colour": 1.0,
                                  "shape": 0.5, "count": 1.0, "position": None}}  # fmt: skip
    metrics = {"splits": {"heldout": score, "seen": score},
               "categories": {"colour binding": {"heldout": score}}}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    row = compositional.summarise(json.loads((tmp_path / "metrics.json").read_text()))
    assert row["heldout"]["scene"] == 0.5 and row["seen"]["relation"] == 1.0
    assert row["categories"] == {"colour binding": {"heldout": 0.5}}
