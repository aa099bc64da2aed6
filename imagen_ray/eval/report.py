"""A checker's report: the failure tiles, their grid, ``readings.jsonl`` and ``metrics.json``.

The alignment probe (:func:`~imagen_ray.eval.alignment.evaluate_probe`) and the
compositional suite (:func:`~imagen_ray.eval.compositional.evaluate_compositional`) read
images with their own checker and write their report through :func:`write_report`, each
failure drawn by :func:`failure_tile`.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from imagen_ray.fs import atomic_write_json
from imagen_ray.images import save_image

FAILURE_CELL = 128  # px: failures are enlarged (nearest) to this side in the grid
MAX_FAILURES = 64  # at most this many tiles in failures.png


def failure_tile(image: np.ndarray, prompt: str, lines: Sequence[tuple[str, bool]]) -> Image.Image:
    """One failure: the image enlarged, the prompt, and what the checker read: one
    ``(text, wrong)`` line each, wrong ones in red."""
    img = Image.fromarray(np.ascontiguousarray(image)).resize(
        (FAILURE_CELL, FAILURE_CELL), Image.Resampling.NEAREST
    )
    wrapped = textwrap.wrap(prompt, 22)[:3]
    line_h = 11
    height = FAILURE_CELL + line_h * (len(wrapped) + len(lines) + 1) + 4
    tile = Image.new("RGB", (FAILURE_CELL, height), "white")
    tile.paste(img, (0, 0))
    draw = ImageDraw.Draw(tile)
    y = FAILURE_CELL + 2
    for ln in wrapped:
        draw.text((2, y), ln, fill=(0, 0, 0))
        y += line_h
    draw.text((2, y), "read:", fill=(90, 90, 90))
    y += line_h
    for text, wrong in lines:
        draw.text((2, y), text, fill=(200, 0, 0) if wrong else (0, 110, 0))
        y += line_h
    return tile


def failure_grid(tiles: Sequence[Image.Image], *, cols: int = 8, pad: int = 4) -> Image.Image:
    """Tiles of :func:`failure_tile` in rows of ``cols``."""
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + pad) + pad), (220, 220, 220))
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(t, (pad + c * (w + pad), pad + r * (h + pad)))
    return sheet


def write_report(
    out_dir: str | Path,
    records: Sequence[Mapping[str, Any]],
    tiles: Sequence[Image.Image],
    metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """Write a checker's report: ``readings.jsonl`` (one record per image), ``failures.png``
    (the tiles in a grid; an earlier run's is removed when there are none) and
    ``metrics.json``.

    Returns:
        ``metrics`` with ``failures_png`` (the grid's file name, or None).
    """
    out = Path(out_dir)
    with open(out / "readings.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    grid = out / "failures.png"
    if tiles:
        save_image(failure_grid(tiles), grid)
    elif grid.exists():
        grid.unlink()  # from an earlier run into the same directory
    result = {**metrics, "failures_png": grid.name if tiles else None}
    atomic_write_json(out / "metrics.json", result)
    return result
