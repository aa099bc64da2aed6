"""The demo's report: the probe's scores against the targets, grid.png and report.html."""

from __future__ import annotations

import html
import json
import shutil
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from imagen_ray.demo.timer import Timer

# What `make demo` must show on held-out combinations; the demo exits 1 when one is missed.
TARGETS = {"colour": 0.9, "shape": 0.7, "position": 0.8}
TEMPLATE = "report.html"  # string.Template beside this module, shipped as package data


def labelled_grid(
    images: Sequence[np.ndarray], captions: Sequence[str], ok: Sequence[bool], cols: int
) -> Any:
    """Images upscaled 2x with a green (all right) or red frame and a caption underneath."""
    from PIL import Image, ImageDraw

    scale, pad, text_h = 2, 4, 24
    h, w = images[0].shape[:2]
    cw, ch = w * scale + 2 * pad, h * scale + 2 * pad + text_h
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cw, rows * ch), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (img, cap, good) in enumerate(zip(images, captions, ok, strict=True)):
        r, c = divmod(i, cols)
        x, y = c * cw, r * ch
        draw.rectangle(
            (x, y, x + cw - 1, y + h * scale + 2 * pad - 1),
            fill=(0, 160, 0) if good else (210, 0, 0),
        )
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        grid.paste(tile, (x + pad, y + pad))
        words = cap.split()
        line1 = " ".join(words[: (len(words) + 1) // 2])
        line2 = " ".join(words[(len(words) + 1) // 2 :])
        draw.text((x + 2, y + h * scale + 2 * pad), line1, fill=(0, 0, 0))
        draw.text((x + 2, y + h * scale + 2 * pad + 11), line2, fill=(0, 0, 0))
    return grid


def write_report(
    out: Path,
    images: Sequence[np.ndarray],
    expected: Sequence[dict[str, Any]],
    timer: Timer,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The probe's report (:func:`~imagen_ray.eval.alignment.evaluate_probe`: images/,
    readings.jsonl, failures.png) plus the targets, grid.png and report.html, under
    ``out/report``; metrics.json holds the held-out scores, the targets and the timings."""
    from imagen_ray.eval.alignment import HELDOUT, evaluate_probe
    from imagen_ray.fs import atomic_write_json, atomic_write_text
    from imagen_ray.images import save_image

    rep = out / "report"
    if rep.exists():
        shutil.rmtree(rep)
    items = [{**e, "split": HELDOUT} for e in expected]
    probe = evaluate_probe(images, items, rep, seeds=[e["seed"] for e in expected])
    rows = [json.loads(line) for line in (rep / "readings.jsonl").read_text().splitlines()]
    ok = [not set(r["wrong"]) & set(TARGETS) for r in rows]
    result = probe["splits"][HELDOUT]
    passed = {a: result["accuracy"].get(a, 0.0) >= t for a, t in TARGETS.items()}
    metrics = {
        "heldout": result,
        "targets": TARGETS,
        "passed": passed,
        "all_passed": all(passed.values()),
        "failures_png": probe["failures_png"],
        "seconds": timer.seconds,
        "total_seconds": round(time.monotonic() - timer.start, 1),
        **extra,
    }
    atomic_write_json(rep / "metrics.json", metrics)
    cols = max(1, len(images) // max(1, len({e["prompt"] for e in expected})))
    grid = labelled_grid(images, [e["prompt"] for e in expected], ok, cols=min(15, max(cols, 8)))
    save_image(grid, rep / "grid.png")
    atomic_write_text(rep / "report.html", render_html(metrics, rows, ok))
    return metrics


def render_html(metrics: dict[str, Any], rows: list[dict[str, Any]], ok: Sequence[bool]) -> str:
    """report.html: the template filled with the targets table, timings and image cards."""
    acc = metrics["heldout"]["accuracy"]
    targets = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{acc.get(a, 0):.1%}</td><td>{t:.0%}</td>"
        f"<td class={'ok' if metrics['passed'][a] else 'bad'}>"
        f"{'met' if metrics['passed'][a] else 'missed'}</td></tr>"
        for a, t in metrics["targets"].items()
    )
    times = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.0f} s</td></tr>"
        for k, v in metrics["seconds"].items()
    )
    cards = "".join(
        f"<figure class={'ok' if good else 'bad'}><img src='{html.escape(r['file'])}' "
        f"width=128 height=128><figcaption>{html.escape(r['prompt'])} (seed {r['seed']})<br>"
        f"read: {html.escape(str(r['read']['colour']))} {html.escape(str(r['read']['shape']))} "
        f"{html.escape(str(r['read']['position']))}</figcaption></figure>"
        for r, good in zip(rows, ok, strict=True)
    )
    failures = (
        " <a href='failures.png'>failures.png</a> shows each miss with what the probe read."
        if metrics.get("failures_png")
        else ""
    )
    page = resources.files("imagen_ray.demo").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return Template(page).substitute(
        n=metrics["heldout"]["n"],
        targets=targets,
        all=f"{metrics['heldout']['all']:.1%}",
        times=times,
        total=f"{metrics['total_seconds']:.0f} s",
        failures=failures,
        cards=cards,
    )
