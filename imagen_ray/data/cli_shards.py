"""``imagen-ray data shards`` and ``imagen-ray data synthetic``: write webdataset shards.

``register(data_subparsers)`` adds both subcommands to the ``data`` command's subparsers.
Handlers return an exit code; bad input raises ValueError / FileNotFoundError, which the main
CLI prints as one line and turns into exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SHARDS_EXAMPLES = """\
examples:
  imagen-ray data shards --from-folder photos/ --out data/photos --min-size 64
  imagen-ray data shards --from-table captions.parquet --image-column path \\
      --caption-column text --out data/captions

A folder holds images (jpg, png, webp; bmp/gif/tiff are re-encoded to png) with same-stem
caption files: a/b/cat.jpg + a/b/cat.txt. A table (.csv, .jsonl, .parquet) has a column of
image paths (relative to the table's directory) and one of captions; other columns are kept
as metadata, an `id` column gives the keys. Bad items (corrupt images, missing or empty
captions, too small, duplicate keys) are skipped and listed in summary.json. Exit status 1
when nothing could be written.
"""

SYNTHETIC_EXAMPLES = """\
examples:
  imagen-ray data synthetic --out data/shapes
  imagen-ray data synthetic --out data/shapes256 --size 256 --num-samples 500 \\
      --heldout red:triangle --heldout blue:cross --heldout-position square:left

Writes shards of coloured shapes ("two small blue squares at the top"), heldout.json (the
held-out pairs and evaluation prompts that never occur in the shards), summary.json, and
preview.png / preview.txt: the first 16 images and their captions.
"""


def register(data_subparsers: Any) -> None:
    """Add the ``shards`` and ``synthetic`` subcommands.

    Args:
        data_subparsers: the object returned by ``add_subparsers()`` of the ``data`` command.
    """
    p = data_subparsers.add_parser(
        "shards",
        help="write webdataset shards from an image folder or a caption table",
        description="Check every image and caption and write webdataset tar shards "
        "(shard-000000.tar, ...) plus summary.json. Re-running replaces the previous output.",
        epilog=SHARDS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-folder", metavar="DIR", help="folder of images + .txt captions")
    src.add_argument("--from-table", metavar="FILE", help="CSV, JSONL or Parquet table")
    p.add_argument("--image-column", default="image", help="table column of image paths")
    p.add_argument("--caption-column", default="caption", help="table column of captions")
    p.add_argument("--id-column", default="id", help="table column of keys, if present")
    _add_common(p, default_per_shard=1000)
    p.add_argument(
        "--min-size",
        type=int,
        default=0,
        help="skip images whose short side is below this many pixels (default 0: off)",
    )
    p.set_defaults(func=cmd_shards)

    p = data_subparsers.add_parser(
        "synthetic",
        help="write the synthetic coloured-shapes caption/image set as shards",
        description="Render the synthetic set (colour, shape, position, count, size, "
        "background; captions from several templates) into webdataset shards. Some "
        "(colour, shape) pairs are held out of the shards for evaluation.",
        epilog=SYNTHETIC_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--num-samples", type=int, default=2000, help="samples (default 2000)")
    p.add_argument("--size", type=int, default=64, help="image side, 8..1024 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument(
        "--count-probs",
        type=float,
        nargs=3,
        metavar=("P1", "P2", "P3"),
        help="probabilities of 1, 2, 3 objects (default 0.7 0.2 0.1)",
    )
    p.add_argument(
        "--sizes",
        nargs="+",
        choices=["small", "large"],
        help="object sizes to draw (default: small large)",
    )
    p.add_argument(
        "--backgrounds",
        nargs="+",
        choices=["black", "white", "gray"],
        help="background colours to draw (default: black white gray; never the object's)",
    )
    p.add_argument(
        "--heldout",
        action="append",
        metavar="COLOUR:SHAPE",
        help="a (colour, shape) pair never written (repeatable; replaces the default "
        "red:triangle green:circle blue:cross)",
    )
    p.add_argument("--no-heldout", action="store_true", help="hold out no (colour, shape) pair")
    p.add_argument(
        "--heldout-position",
        action="append",
        default=[],
        metavar="SHAPE:POSITION",
        help="a (shape, position) pair never written (repeatable; default none)",
    )
    p.add_argument(
        "--format", choices=("png", "jpg"), default="png", help="image encoding (default png)"
    )
    _add_common(p, default_per_shard=500)
    p.set_defaults(func=cmd_synthetic)


def _add_common(p: argparse.ArgumentParser, *, default_per_shard: int) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument(
        "--samples-per-shard",
        type=int,
        default=default_per_shard,
        help=f"samples per tar file (default {default_per_shard})",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def cmd_shards(args: argparse.Namespace) -> int:
    """``imagen-ray data shards``: folder or table -> shards; 1 when nothing was written."""
    from imagen_ray.data.shards import write_folder_shards, write_table_shards

    if args.min_size < 0:
        raise ValueError(f"--min-size must be >= 0, got {args.min_size}")
    if args.from_folder:
        summary = write_folder_shards(
            args.from_folder,
            args.out,
            samples_per_shard=args.samples_per_shard,
            min_size=args.min_size,
            progress=not args.no_progress,
        )
    else:
        summary = write_table_shards(
            args.from_table,
            args.out,
            image_column=args.image_column,
            caption_column=args.caption_column,
            id_column=args.id_column,
            samples_per_shard=args.samples_per_shard,
            min_size=args.min_size,
            progress=not args.no_progress,
        )
    print(summary.one_line())
    return 0 if summary.samples else 1


def cmd_synthetic(args: argparse.Namespace) -> int:
    """``imagen-ray data synthetic``: render the shapes set + heldout.json + preview.png."""
    from imagen_ray.data.synthetic import (
        DEFAULT_HELDOUT,
        SyntheticSpec,
        parse_pair,
        render_sample,
        write_synthetic,
    )
    from imagen_ray.images import save_image, square_grid

    if args.no_heldout and args.heldout:
        raise ValueError("pass either --heldout pairs or --no-heldout, not both")
    heldout = DEFAULT_HELDOUT
    if args.no_heldout:
        heldout = ()
    elif args.heldout:
        heldout = tuple(parse_pair(h, "colour", "shape") for h in args.heldout)
    extra: dict[str, Any] = {}
    if args.count_probs is not None:
        extra["count_probs"] = tuple(args.count_probs)
    if args.sizes:
        extra["sizes"] = tuple(args.sizes)
    if args.backgrounds:
        extra["backgrounds"] = tuple(args.backgrounds)
    spec = SyntheticSpec(
        num_samples=args.num_samples,
        size=args.size,
        seed=args.seed,
        heldout=heldout,
        heldout_shape_positions=tuple(
            parse_pair(h, "shape", "position") for h in args.heldout_position
        ),
        samples_per_shard=args.samples_per_shard,
        image_format=args.format,
        **extra,
    )
    summary = write_synthetic(spec, args.out, progress=not args.no_progress)
    out = Path(args.out)
    previews = [render_sample(spec, i) for i in range(min(16, spec.num_samples))]
    if previews:
        sheet = square_grid([im for im, _, _ in previews], cell=max(spec.size, 96))
        save_image(sheet, out / "preview.png")
        lines = [f"{i:2d} {caption}" for i, (_, caption, _) in enumerate(previews)]
        (out / "preview.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{summary.one_line()}; held-out pairs in {out / 'heldout.json'}")
    return 0 if summary.samples else 1
