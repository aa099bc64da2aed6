"""The compositional suite: prompts by category, the prompts file, the report, the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagen_ray.cascade import Cascade
from imagen_ray.cli import main
from imagen_ray.config import CascadeConfig, StageConfig, TextEncoderConfig
from imagen_ray.data.scene_spec import SceneSpec, swapped
from imagen_ray.data.scenes import render_scene, scene_attributes
from imagen_ray.data.synthetic import heldout_json, render_attributes
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES
from imagen_ray.eval.alignment import HELDOUT, SEEN
from imagen_ray.eval.compositional import evaluate_compositional, summary_table
from imagen_ray.eval.compositional_prompts import (
    CATEGORIES,
    read_prompts,
    suite_items,
    write_prompts,
)
from imagen_ray.text.tiny import build_tiny_t5
from tests.cascade.test_cascade import UNET


def draw(item: dict[str, Any], size: int = 32, seed: int = 0) -> np.ndarray:
    """The image an item asks for, drawn by the synthetic renderer."""
    objects = [(o["colour"], o["shape"]) for o in item["objects"]]
    if item.get("relation"):
        rng = np.random.default_rng(seed)
        attrs = scene_attributes(objects, item["relation"], ["large"] * len(objects), "gray", rng)
        return np.asarray(render_scene(attrs, size))
    ax, ay = ATTRIBUTES.positions[item["position"]]
    along = [(k - (len(objects) - 1) / 2) * 0.22 for k in range(len(objects))]
    vertical = item["position"] in ("left", "right")
    centers = [[ax, ay + d] if vertical else [ax + d, ay] for d in along]
    colour, shape = objects[0]
    attrs = {"shape": shape, "rgb": ATTRIBUTES.colours[colour], "background_rgb": [0, 0, 0]}
    return np.asarray(render_attributes({**attrs, "object_size": 0.16, "centers": centers}, size))


def objects_of(item: dict[str, Any]) -> frozenset:
    return frozenset((o["colour"], o["shape"]) for o in item["objects"])


def test_suite_has_every_category_heldout_and_seen() -> None:
    spec = SyntheticSpec()
    items = suite_items(spec, seed=1)
    assert items == suite_items(spec, seed=1)
    groups = {(it["category"], it["split"]) for it in items}
    assert groups == {(c, s) for c in CATEGORIES for s in (HELDOUT, SEEN)}
    binding = [it for it in items if it["category"] == "colour binding"]
    held = [it for it in binding if it["split"] == HELDOUT]
    seen = [it for it in binding if it["split"] == SEEN]
    # every held-out binding in 4 relations x 2 orders, and its counterpart as often
    assert len(held) == len(seen) == len(spec.scenes.heldout_bindings) * 8
    pair = spec.scenes.heldout_bindings[0]
    assert frozenset(pair) in {objects_of(it) for it in held}
    assert frozenset(swapped(pair)) in {objects_of(it) for it in seen}
    assert not {objects_of(it) for it in held} & {objects_of(it) for it in seen}
    assert "a blue circle to the left of a red square" in [it["prompt"] for it in held]
    counting = [it for it in items if it["category"] == "counting"]
    assert all(len(it["objects"]) in (2, 3) and it["position"] for it in counting)
    relation = [it for it in items if it["category"] == "spatial relation"]
    assert {it["reason"] for it in relation if it["split"] == HELDOUT} == {
        "object pair",
        "phrasing",
    }
    fewer = suite_items(spec, num_seen=2)
    assert sum(it["split"] == SEEN and it["category"] == "single object" for it in fewer) == 2


def test_prompts_file_round_trip_counts_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "two green squares at the top", "position": "top",'
        ' "objects": [{"colour": "green", "shape": "square", "count": 2}]}\n\n'
        '{"prompt": "a red circle below a blue cross", "relation": "below",'
        ' "objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "cross"}],'
        ' "split": "seen", "file": "a.png"}\n'
    )
    first, second = read_prompts(path)
    assert first["objects"] == [{"colour": "green", "shape": "square"}] * 2
    assert (first["category"], first["split"]) == ("counting", HELDOUT)
    assert (second["category"], second["split"], second["file"]) == (
        "spatial relation",
        SEEN,
        "a.png",
    )
    assert read_prompts(write_prompts([first, second], tmp_path / "again.jsonl")) == [first, second]
    bad = tmp_path / "bad.jsonl"
    red = {"prompt": "x", "objects": [{"colour": "red", "shape": "circle"}]}
    for line, message in (
        (
            json.dumps({**red, "objects": [{"colour": "pink", "shape": "o"}]}),
            "unknown colour 'pink'",
        ),
        (json.dumps({**red, "objects": [{"colour": "red"}]}), "missing 'shape'"),
        (json.dumps({**red, "relation": "near"}), "unknown relation 'near'"),
        (json.dumps({**red, "category": "style"}), "unknown category 'style'"),
        ("not json", "not valid JSON"),
    ):
        bad.write_text(line + "\n")
        with pytest.raises(ValueError, match=f"bad.jsonl(:1|: prompt 1): .*{message}"):
            read_prompts(bad)


def test_report_scores_each_category_and_lists_failures(tmp_path: Path) -> None:
    items = suite_items(SyntheticSpec(), num_seen=3)
    images = [draw(it, seed=k) for k, it in enumerate(items)]
    wrong = next(k for k, it in enumerate(items) if it["category"] == "colour binding")
    a, b = ((o["colour"], o["shape"]) for o in items[wrong]["objects"])
    colours_swapped = [{"colour": c, "shape": s} for c, s in swapped((a, b))]
    images[wrong] = draw({**items[wrong], "objects": colours_swapped})
    metrics = evaluate_compositional(images, items, tmp_path, extra={"run": "x"})
    binding = metrics["categories"]["colour binding"]
    assert binding[HELDOUT]["accuracy"]["scene"] == pytest.approx(1 - 1 / binding[HELDOUT]["n"])
    assert (
        binding[HELDOUT]["accuracy"]["colour"] < 1.0
        and binding[HELDOUT]["accuracy"]["shape"] == 1.0
    )
    for category in CATEGORIES[1:]:
        for split in (HELDOUT, SEEN):
            assert metrics["categories"][category][split]["accuracy"]["scene"] == 1.0
    assert metrics["categories"]["counting"][SEEN]["accuracy"]["relation"] is None
    assert metrics["failures"] == 1 and metrics["failures_png"] == "failures.png"
    assert metrics["run"] == "x" and metrics["splits"][HELDOUT]["n"] + metrics["splits"][SEEN][
        "n"
    ] == len(items)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    records = [json.loads(ln) for ln in (tmp_path / "readings.jsonl").read_text().splitlines()]
    assert (
        records[wrong]["wrong"] == ["colour 1", "colour 2", "relation"]  # read on the colours
        and not records[wrong]["read"]["binding"]
    )
    assert Image.open(tmp_path / "failures.png").width >= 128
    table = summary_table(metrics)
    assert "colour binding" in table and "single object" in table and "100.0%" in table
    # the report's prompts.jsonl scores the same images again; a clean run removes failures.png
    again = read_prompts(tmp_path / "prompts.jsonl")
    assert [it["file"] for it in again[:2]] == ["images/00000.png", "images/00001.png"]
    images[wrong] = draw(items[wrong])
    assert evaluate_compositional(images, items, tmp_path)["failures_png"] is None
    assert not (tmp_path / "failures.png").exists()


def test_command_scores_rendered_images(tmp_path: Path, capsys) -> None:
    spec = SyntheticSpec(scenes=SceneSpec(probs=(0.5, 0.5, 0.0), relations=("above", "below")))
    (tmp_path / "heldout.json").write_text(json.dumps(heldout_json(spec)))
    suite = tmp_path / "suite"
    args = ["eval", "compositional", "--out", str(suite), "--heldout", str(tmp_path)]
    assert main([*args, "--prompts-only", "--num-seen", "2"]) == 0
    assert "prompts to" in capsys.readouterr().out
    items = read_prompts(suite / "prompts.jsonl")
    assert {it["relation"] for it in items} == {"above", "below", None}
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for k, it in enumerate(items):
        Image.fromarray(draw(it, seed=k)).save(rendered / f"{k}.png")
        it["file"] = f"{k}.png"
    write_prompts(items, tmp_path / "scored.jsonl")
    report = tmp_path / "report"
    args = ["eval", "compositional", "--prompts", str(tmp_path / "scored.jsonl")]
    assert main([*args, "--images", str(rendered), "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "spatial relation" in out and f"{len(items)} images" in out
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["splits"][HELDOUT]["accuracy"]["scene"] == 1.0
    assert metrics["images"] == str(rendered) and metrics["failures"] == 0
    # errors name the flag or the file
    assert main(["eval", "compositional", "--out", str(report)]) == 2
    assert "--cascade" in capsys.readouterr().err
    (tmp_path / "nofile.jsonl").write_text(json.dumps({**items[0], "file": None}) + "\n")
    args = ["eval", "compositional", "--prompts", str(tmp_path / "nofile.jsonl")]
    assert main([*args, "--images", str(rendered), "--out", str(report)]) == 2
    assert "has no 'file'" in capsys.readouterr().err


@pytest.mark.slow
def test_command_generates_with_a_cascade(tmp_path: Path, capsys) -> None:
    t5 = build_tiny_t5(tmp_path / "t5")
    cfg = CascadeConfig(
        text=TextEncoderConfig(name=str(t5), max_length=8),
        stages=(StageConfig(name="base", size=16, unet=UNET),),
    )
    saved = Cascade.from_config(cfg, seed=0).save(tmp_path / "cascade")
    prompts = tmp_path / "p.jsonl"
    write_prompts(suite_items(SyntheticSpec(), num_seen=0)[:3], prompts)
    args = ["eval", "compositional", "--cascade", str(saved), "--prompts", str(prompts)]
    args += ["--out", str(tmp_path / "r"), "-n", "2", "--seed", "5", "--no-progress"]
    assert main([*args, "--sampling", "base.steps=1"]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["n"] == 6 and metrics["images_per_prompt"] == 2
    assert metrics["sampling"]["base"]["steps"] == 1
    records = [
        json.loads(ln) for ln in (tmp_path / "r" / "readings.jsonl").read_text().splitlines()
    ]
    assert [r["seed"] for r in records] == list(range(5, 11))
    assert Image.open(tmp_path / "r" / records[0]["file"]).size == (16, 16)
    assert "colour binding" in capsys.readouterr().out
