"""``imagen-ray data encode`` and ``imagen-ray data preview``.

``encode`` precomputes text embeddings once (new shards with a ``text.npz`` per sample), so
training runs skip the encoder. ``preview`` runs the real training pipeline for a few
batches and writes what it produced as a PNG contact sheet with the sample keys, because
people would rather look at the crops than read about them; it prints skip counts and
throughput as JSON. Both start a local Ray (or join ``RAY_ADDRESS``) unless Ray is already
initialised.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

PREVIEW_LABEL_WIDTH = 320


def _config_args(p: argparse.ArgumentParser) -> None:
    from imagen_ray.cli import add_overrides_argument

    p.add_argument("--config", "-c", required=True, metavar="YAML", help="run config (a stage)")
    add_overrides_argument(p)


def register(data_subparsers: Any) -> None:
    """Add ``encode`` and ``preview`` to the ``imagen-ray data`` subcommands.

    Args:
        data_subparsers: the object returned by ``add_subparsers`` on the ``data`` parser.
    """
    p = data_subparsers.add_parser(
        "encode",
        help="precompute text embeddings into new shards (training then skips the encoder)",
        description="Read shards, encode every caption with the run's text encoder on a Ray "
        "actor pool (data.encoder_* settings), and write new shards with the original entries "
        "plus text.npz (float16 emb (L, D), bool mask (L,)), encoding.json and summary.json. "
        "Output appears only when complete (temp directory + rename).",
    )
    p.add_argument("--shards", required=True, metavar="DIR", help="raw shards (dir, glob, URI)")
    p.add_argument("--out", required=True, metavar="DIR", help="new output directory")
    _config_args(p)
    p.add_argument("--samples-per-shard", type=int, default=1000, help="default 1000")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=cmd_encode)

    p = data_subparsers.add_parser(
        "preview",
        help="run the training pipeline for a few batches; write a PNG grid and print stats",
        description="Run the real Ray Data pipeline of a run config (read, decode, filter, "
        "resize, crop, text embeddings) for a few batches. Writes grid.png (each row: the "
        "training image, and for SR stages the low-res input, with the sample key and caption) "
        "and preview.json; prints skip counts and rows/s as JSON.",
    )
    _config_args(p)
    p.add_argument("--batches", type=int, default=2, help="batches of data.batch_size (2)")
    p.add_argument("--max-images", type=int, default=64, help="rows in the grid (64)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.set_defaults(func=cmd_preview)


@contextmanager
def ray_session() -> Iterator[None]:
    """Use the running Ray, or start one (``RAY_ADDRESS`` or local) and stop it after."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


def cmd_encode(args: argparse.Namespace) -> int:
    """``imagen-ray data encode``: precompute text embeddings (see ``encode_shards``)."""
    from imagen_ray.config import load_run_config
    from imagen_ray.data.precompute import encode_shards
    from imagen_ray.data.reader import expand_shards

    cfg = load_run_config(args.config, args.overrides)
    if args.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard must be >= 1, got {args.samples_per_shard}")
    expand_shards(args.shards)  # FileNotFoundError before Ray starts
    if Path(args.out).exists() and not args.overwrite:
        raise ValueError(f"--out {args.out} already exists; pass --overwrite to replace it")
    with ray_session():
        summary = encode_shards(
            args.shards,
            args.out,
            cfg.text,
            encoder_batch_size=cfg.data.encoder_batch_size,
            concurrency=cfg.data.encoder_concurrency,
            num_cpus=cfg.data.encoder_num_cpus,
            num_gpus=cfg.data.encoder_num_gpus,
            max_tasks=cfg.data.read_tasks,
            samples_per_shard=args.samples_per_shard,
            overwrite=args.overwrite,
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "shards"}))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """``imagen-ray data preview``: a few real batches -> grid.png, preview.json, stats."""
    from imagen_ray.config import load_run_config
    from imagen_ray.data.pipeline import build_dataset, read_stats
    from imagen_ray.data.reader import expand_shards

    cfg = load_run_config(args.config, args.overrides)
    if args.batches < 1 or args.max_images < 1:
        raise ValueError("--batches and --max-images must be >= 1")
    if not cfg.data.shards:
        raise ValueError("the config has no data.shards: pass --set data.shards=DIR")
    expand_shards(cfg.data.shards)
    out = Path(args.out)
    with ray_session():
        ds, stats = build_dataset(cfg, keep=("__key__", "caption"))
        t0 = time.perf_counter()
        first = None
        batches: list[dict[str, np.ndarray]] = []
        for batch in ds.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy"):
            first = first if first is not None else time.perf_counter() - t0
            batches.append(batch)
            if len(batches) >= args.batches:
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
    report["grid"] = str(write_preview_grid(batches, out / "grid.png", args.max_images))
    keys = [str(k) for b in batches for k in b["__key__"]][: args.max_images]
    captions = [str(c) for b in batches for c in b["caption"]][: args.max_images]
    (out / "preview.json").write_text(
        json.dumps({**report, "keys": keys, "captions": captions}, indent=2) + "\n"
    )
    print(json.dumps(report))
    return 0


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
