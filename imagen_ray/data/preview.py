"""Looking at data: a few real batches of the training pipeline as a labelled contact sheet,
and the first images of a synthetic set with their captions.

People would rather look at the crops than read about them: ``preview_pipeline`` runs the
real Ray Data pipeline of a run config for a few batches and reports skip counts and
throughput; ``write_preview_grid`` draws what came out, one row per sample with its key and
caption.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from imagen_ray.config import RunConfig
    from imagen_ray.data.synthetic_spec import SyntheticSpec

PREVIEW_LABEL_WIDTH = 320
SYNTHETIC_PREVIEW = 16  # images in a synthetic set's preview.png


def preview_pipeline(
    cfg: RunConfig, num_batches: int
) -> tuple[list[dict[str, np.ndarray]], dict[str, Any]]:
    """Run the training pipeline of ``cfg`` (Ray must be initialised) for a few batches.

    Args:
        cfg: a run config with ``data.shards`` set.
        num_batches: batches of ``data.batch_size`` to take.

    Returns:
        The numpy batches (``image`` (B, S, S, 3) uint8, optional ``lowres``, ``__key__``,
        ``caption``) and a report: rows, batches, seconds, first_batch_s, rows_per_s,
        counts (skip reasons), stage, size, lowres_size.

    Raises:
        ValueError: no sample came through the pipeline (the counts say why).
    """
    from imagen_ray.data.pipeline import build_dataset, read_stats

    ds, stats = build_dataset(cfg, keep=("__key__", "caption"))
    t0 = time.perf_counter()
    first = None
    batches: list[dict[str, np.ndarray]] = []
    for batch in ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy"):
        first = first if first is not None else time.perf_counter() - t0
        batches.append(batch)
        if len(batches) >= num_batches:
            break
    seconds = time.perf_counter() - t0
    rows = sum(len(b["__key__"]) for b in batches)
    counts = read_stats(stats, min_ok=rows)
    report = {
        "rows": rows,
        "batches": len(batches),
        "seconds": round(seconds, 3),
        "first_batch_s": round(first or 0.0, 3),
        "rows_per_s": round(rows / seconds, 2) if seconds > 0 else None,
        "counts": counts,
        "stage": cfg.stage.name,
        "size": cfg.stage.size,
        "lowres_size": cfg.stage.lowres_size,
    }
    if not rows:
        raise ValueError(f"no sample came through the pipeline; counts so far: {counts}")
    return batches, report


def write_preview_grid(batches: list[dict[str, np.ndarray]], path: Path, max_rows: int) -> Path:
    """One row per sample: image (and low-res input), with its key and caption beside it.

    Args:
        batches: numpy batches with ``image`` (B, S, S, 3) uint8, optional ``lowres``,
            ``__key__`` and ``caption``.
        path: where to write the PNG.
        max_rows: at most this many samples.

    Returns:
        The written path.
    """
    from PIL import Image, ImageDraw

    from imagen_ray.images import grid, save_image, to_pil

    cols = ["image", "lowres"] if "lowres" in batches[0] else ["image"]
    tiles = {c: [im for b in batches for im in to_pil(b[c])][:max_rows] for c in cols}
    labels = [
        f"{k}  {str(c)[:40]}"
        for b in batches
        for k, c in zip(b["__key__"], b["caption"], strict=True)
    ][:max_rows]
    cell = max(64, int(batches[0]["image"].shape[1]))
    sheet = grid([[tiles[c][i] for c in cols] for i in range(len(labels))], cell=cell)
    canvas = Image.new("RGB", (sheet.width + PREVIEW_LABEL_WIDTH, sheet.height), "white")
    canvas.paste(sheet, (0, 0))
    draw = ImageDraw.Draw(canvas)
    pad = 2
    for r, label in enumerate(labels):
        draw.text((sheet.width + 4, pad + r * (cell + pad) + 2), label, fill=(0, 0, 0))
    return save_image(canvas, path)


def write_synthetic_preview(spec: SyntheticSpec, out: str | Path) -> Path | None:
    """``preview.png`` (the first 16 images of the set) and ``preview.txt`` (their captions)
    in ``out``; None when the set is empty."""
    from imagen_ray.data.synthetic import render_sample
    from imagen_ray.fs import atomic_write_text
    from imagen_ray.images import save_image, square_grid

    previews = [render_sample(spec, i) for i in range(min(SYNTHETIC_PREVIEW, spec.num_samples))]
    if not previews:
        return None
    out = Path(out)
    sheet = square_grid([im for im, _, _ in previews], cell=max(spec.size, 96))
    path = save_image(sheet, out / "preview.png")
    lines = [f"{i:2d} {caption}" for i, (_, caption, _) in enumerate(previews)]
    atomic_write_text(out / "preview.txt", "\n".join(lines) + "\n")
    return path
