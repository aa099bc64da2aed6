"""The compositional suite's report: every image read back, scored and reported.

Each image is read with the scene checker (:mod:`imagen_ray.eval.scenes`) and scored per
object (colour, shape), for the relation, and for the whole scene (every object's colour and
shape right, as many objects as asked, and the relation right), per category and split
(held-out or seen) of its prompt (:mod:`imagen_ray.eval.compositional_prompts`). The report
is ``metrics.json``, ``readings.jsonl``, ``images/`` and a grid of the failures, written
as the alignment probe's is (:mod:`imagen_ray.eval.report`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imagen_ray.eval.alignment import HELDOUT
from imagen_ray.eval.compositional_prompts import CATEGORIES, write_prompts
from imagen_ray.eval.report import MAX_FAILURES, failure_tile, write_report
from imagen_ray.eval.scenes import SceneCheck, check_scene
from imagen_ray.images import save_image


def _mean(values: Sequence[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def score_checks(checks: Sequence[SceneCheck]) -> dict[str, Any]:
    """Accuracy over images: ``colour`` and ``shape`` per object asked for, ``count``,
    ``binding`` and ``scene`` per image, ``relation`` and ``position`` over the images whose
    prompt asks for them (None when none does).

    Returns:
        ``{"n": int, "accuracy": {score: float | None}}``.
    """
    per = {
        "colour": [ok for c in checks for ok in c.colour],
        "shape": [ok for c in checks for ok in c.shape],
        "count": [c.count for c in checks],
        "relation": [c.relation for c in checks if c.relation is not None],
        "position": [c.position for c in checks if c.position is not None],
        "binding": [c.binding for c in checks],
        "scene": [c.scene for c in checks],
    }
    return {"n": len(checks), "accuracy": {k: _mean(v) for k, v in per.items()}}


def _read_lines(check: SceneCheck) -> list[tuple[str, bool]]:
    """What was read, for a failure tile: each object asked for, the count, the relation."""
    lines = []
    for k, i in enumerate(check.matched):
        o = None if i is None else check.found[i]
        text = "missing" if o is None else f"{o.colour} {o.shape}"
        lines.append((f"{k + 1}: {text}", not (check.colour[k] and check.shape[k])))
    lines.append((f"objects: {len(check.found)}", not check.count))
    for name in ("relation", "position"):
        got = getattr(check, name)
        if got is not None:
            lines.append((f"{name}: {'right' if got else 'wrong'}", not got))
    return lines


def _order(category: str, split: str) -> tuple[int, str]:
    """Categories in :data:`CATEGORIES` order (others last), held-out before seen."""
    rank = CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)
    return rank, "" if split == HELDOUT else split


def evaluate_compositional(
    images: Sequence[np.ndarray],
    items: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    seeds: Sequence[int | None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read every image back with the scene checker and write the compositional report.

    Args:
        images: one (H, W, 3) uint8 array per item.
        items: as :func:`suite_items` or :func:`read_prompts` return them (repeat an item for
            several images of one prompt).
        out_dir: where ``images/``, ``readings.jsonl``, ``metrics.json``,
            ``prompts.jsonl`` (the items with their image's ``file``, to score again) and
            ``failures.png`` (only when something failed) go.
        seeds: the seed of each image (recorded in readings.jsonl).
        extra: more keys for metrics.json (settings, timings).

    Returns:
        The metrics: ``{"categories": {category: {split: score}}, "splits": {split: score},
        "n", "failures", "failures_png", ...}``, each score as :func:`score_checks` gives it.
    """
    if len(images) != len(items) or (seeds is not None and len(seeds) != len(items)):
        raise ValueError(
            f"{len(images)} images and {len(seeds or images)} seeds for {len(items)} items"
        )
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, str], list[SceneCheck]] = {}
    records: list[dict[str, Any]] = []
    scored: list[dict[str, Any]] = []
    tiles: list[Image.Image] = []
    for k, (image, item) in enumerate(zip(images, items, strict=True)):
        image = np.ascontiguousarray(np.asarray(image))
        check = check_scene(image, item)
        category, split = item["category"], str(item.get("split", HELDOUT))
        groups.setdefault((category, split), []).append(check)
        name = f"images/{k:05d}.png"
        save_image(Image.fromarray(image), out / name)
        scored.append({**item, "file": name})
        expected = {key: item.get(key) for key in ("objects", "relation", "position")}
        records.append(
            {
                "prompt": item["prompt"],
                "seed": None if seeds is None else seeds[k],
                "category": category,
                "split": split,
                "reason": item.get("reason"),
                "expected": expected,
                "read": check.to_dict(),
                "wrong": check.wrong(),
                "file": name,
            }
        )
        if not check.scene and len(tiles) < MAX_FAILURES:
            tiles.append(failure_tile(image, f"{item['prompt']} [{split}]", _read_lines(check)))
    categories: dict[str, dict[str, Any]] = {}
    by_split: dict[str, list[SceneCheck]] = {}
    for (category, split), checks in sorted(groups.items(), key=lambda kv: _order(*kv[0])):
        categories.setdefault(category, {})[split] = score_checks(checks)
        by_split.setdefault(split, []).extend(checks)
    metrics = {
        "categories": categories,
        "splits": {s: score_checks(cs) for s, cs in by_split.items()},
        "n": len(records),
        "failures": sum(not r["read"]["scene"] for r in records),
        **dict(extra or {}),
    }
    write_prompts(scored, out / "prompts.jsonl")
    return write_report(out, records, tiles, metrics)


def summary_table(metrics: Mapping[str, Any]) -> str:
    """Accuracy per category and split as an aligned text table."""
    cols = ("colour", "shape", "count", "relation", "position", "binding", "scene")
    lines = [f"{'category':<18}{'split':<9}{'n':>5}" + "".join(f"{c:>9}" for c in cols)]
    rows = [(c, s, v) for c, by in metrics["categories"].items() for s, v in by.items()]
    rows += [("all", s, v) for s, v in metrics["splits"].items()]
    for category, split, v in rows:
        accs = [v["accuracy"].get(c) for c in cols]
        cells = "".join(f"{'-':>9}" if a is None else f"{a:>9.1%}" for a in accs)
        lines.append(f"{category:<18}{split:<9}{v['n']:>5}" + cells)
    return "\n".join(lines)
