"""The demo's report: probe scoring, targets, files a person opens (the full run is `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from imagen_ray.cli import build_parser
from imagen_ray.data.synthetic import heldout_prompts, render_attributes
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES
from imagen_ray.demo.configs import demo_configs_dir
from imagen_ray.demo.report import TARGETS, write_report
from imagen_ray.demo.run import demo_spec
from imagen_ray.demo.timer import Timer


def _items_and_images(wrong_shape_every: int = 0):
    spec = SyntheticSpec(size=64, count_probs=(1.0, 0.0, 0.0))
    items = heldout_prompts(spec)
    images, expected = [], []
    for i, it in enumerate(items):
        a = dict(it["attributes"])
        shape = a["shape"]
        if wrong_shape_every and i % wrong_shape_every == 0:
            shape = "square" if shape != "square" else "circle"
        anchor = ATTRIBUTES.positions[a["position"]]
        drawn = {
            "shape": shape,
            "rgb": a["rgb"],
            "background_rgb": [0, 0, 0] if a["colour"] != "white" else [128, 128, 128],
            "object_size": 0.3,
            "centers": [list(anchor)],
        }
        images.append(np.asarray(render_attributes(drawn, 64)))
        expected.append({**it, "seed": i})
    return images, expected


def test_report_scores_heldout_images_and_writes_every_file(tmp_path: Path) -> None:
    images, expected = _items_and_images()
    metrics = write_report(tmp_path, images, expected, Timer(6), {"note": "x"})
    rep = tmp_path / "report"
    assert metrics["heldout"]["accuracy"] == {
        "colour": 1.0,
        "shape": 1.0,
        "position": 1.0,
        "count": 1.0,
    }
    assert metrics["all_passed"] and metrics["note"] == "x"
    assert json.loads((rep / "metrics.json").read_text())["heldout"]["n"] == len(images)
    rows = [json.loads(line) for line in (rep / "readings.jsonl").read_text().splitlines()]
    assert len(rows) == len(images) and not any(r["wrong"] for r in rows)
    assert metrics["failures_png"] is None and not (rep / "failures.png").exists()
    assert Image.open(rep / rows[0]["file"]).size == (64, 64)
    assert Image.open(rep / "grid.png").size[0] > 64
    page = (rep / "report.html").read_text()
    assert "a red triangle on the left" in page and page.count("<figure") == len(images)


def test_report_names_a_missed_target(tmp_path: Path) -> None:
    images, expected = _items_and_images(wrong_shape_every=2)  # 8 of 15 shapes wrong
    metrics = write_report(tmp_path, images, expected, Timer(6), {})
    assert metrics["heldout"]["accuracy"]["shape"] < TARGETS["shape"]
    assert metrics["passed"] == {"colour": True, "shape": False, "position": True}
    assert not metrics["all_passed"]
    page = (tmp_path / "report" / "report.html").read_text()
    assert "missed" in page and "failures.png" in page
    assert metrics["failures_png"] == "failures.png"
    rows = (tmp_path / "report" / "readings.jsonl").read_text().splitlines()
    assert sum("shape" in json.loads(r)["wrong"] for r in rows) == 8


def test_demo_spec_and_cli() -> None:
    spec = demo_spec(500)
    assert spec.num_samples == 500 and spec.size == 64 and spec.count_probs == (1.0, 0.0, 0.0)
    assert spec.backgrounds == ("black",) and spec.sizes == ("large",)
    args = build_parser().parse_args(["demo", "--out", "x", "--base-steps", "3", "--fresh"])
    assert args.base_steps == 3 and args.fresh and args.func.__module__ == "imagen_ray.cli.demo"


def test_demo_configs_are_found_through_the_package() -> None:
    path = demo_configs_dir()
    assert sorted(p.name for p in path.glob("*.yaml")) == ["base.yaml", "serve.yaml", "sr64.yaml"]
    assert path.samefile(Path(__file__).resolve().parents[2] / "configs" / "demo")
