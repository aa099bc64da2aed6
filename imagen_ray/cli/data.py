"""``imagen-ray data``: ``shards`` and ``synthetic`` write webdataset shards, ``encode``
precomputes text embeddings, ``preview`` shows what the training pipeline produces.

``encode`` writes new shards with a ``text.npz`` per sample, so training runs skip the
encoder. ``preview`` runs the real training pipeline for a few batches and writes what it
produced as a PNG contact sheet with the sample keys; it prints skip counts and throughput
as JSON. Both start a local Ray (or join ``RAY_ADDRESS``) unless Ray is already initialised.
Bad input raises ValueError / FileNotFoundError, which the main CLI prints as one line and
turns into exit status 2; ``shards`` and ``synthetic`` exit 1 when nothing was written.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import add_config_arguments, add_verbose_argument
from imagen_ray.data.scene_spec import DEFAULT_HELDOUT_BINDINGS, DEFAULT_HELDOUT_OBJECT_PAIRS
from imagen_ray.data.synthetic_spec import SHARD_IMAGE_FORMATS

SHARDS_EXAMPLES = """\
examples:
  imagen-ray data shards --from-folder photos/ --out data/photos --min-size 64
  imagen-ray data shards --from-table captions.parquet --image-column path \\
      --caption-column text --out data/captions
  imagen-ray data shards --from-hf my_dataset/ --image-column image \\
      --caption-column text --out data/hf

A folder holds images (jpg, png, webp; bmp/gif/tiff are re-encoded to png) with same-stem
caption files: a/b/cat.jpg + a/b/cat.txt. A table (.csv, .jsonl, .parquet) has a column of
image paths (relative to the table's directory) and one of captions; other columns are kept
as metadata, an `id` column gives the keys. A Hugging Face dataset (saved with
save_to_disk, or Parquet files; needs `pip install 'imagen-ray[hf]'`) has an image column
(datasets.Image, bytes or paths) and a caption column. Bad items (corrupt images, missing or empty
captions, too small, duplicate keys) are skipped and listed in summary.json. Exit status 1
when nothing could be written.
"""

SYNTHETIC_EXAMPLES = """\
examples:
  imagen-ray data synthetic --out data/shapes
  imagen-ray data synthetic --out data/shapes256 --size 256 --num-samples 500 \\
      --heldout red:triangle --heldout blue:cross --heldout-position square:left
  imagen-ray data synthetic --out data/scenes --scene-probs 0.3 0.6 0.1 \\
      --heldout-binding blue:circle+red:square

Writes shards of coloured shapes ("two small blue squares at the top"; with --scene-probs
also scenes such as "a red circle to the left of a blue square"), heldout.json (the held-out
pairs and evaluation prompts that never occur in the shards), summary.json, and
preview.png / preview.txt: the first 16 images and their captions.

Scenes hold two objects (three as an option) of distinct colours placed by a relation (left
of, right of, above, below), captioned in several phrasings and both orders. Held out of
them: bindings (--heldout-binding blue:circle+red:square: never together, while red circle +
blue square is seen), whole pairs (--heldout-object-pair), and one phrasing. --scenes FILE
is YAML with any of the scene settings: probs, relations, relation_templates,
row_templates, heldout_bindings, heldout_object_pairs, heldout_relation_template (the flags
override it). Defaults: docs/data.md.
"""


def register(sub: Any) -> None:
    """Add ``data`` and its subcommands."""
    p = sub.add_parser(
        "data",
        help="write webdataset shards (real or synthetic), precompute embeddings, preview",
        description="Data commands: `shards` from a folder or table, `synthetic` for the "
        "built-in caption->image set, `encode` to precompute text embeddings, `preview` to "
        "look at what the Ray Data pipeline feeds a stage.",
    )
    add_data_commands(p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True))


def add_data_commands(data_subparsers: Any) -> None:
    """Add ``shards``, ``synthetic``, ``encode`` and ``preview`` to the ``data`` command.

    Args:
        data_subparsers: the object returned by ``add_subparsers()`` of the ``data`` command.
    """
    _add_shards(data_subparsers)
    _add_synthetic(data_subparsers)
    _add_encode(data_subparsers)
    _add_preview(data_subparsers)


def _add_shards(data_subparsers: Any) -> None:
    """``shards``: webdataset shards from an image folder, a caption table or a HF dataset."""
    p = data_subparsers.add_parser(
        "shards",
        help="write webdataset shards from an image folder, a caption table or a HF dataset",
        description="Check every image and caption and write webdataset tar shards "
        "(shard-000000.tar, ...) plus summary.json. Re-running replaces the previous output.",
        epilog=SHARDS_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-folder", metavar="DIR", help="folder of images + .txt captions")
    src.add_argument("--from-table", metavar="FILE", help="CSV, JSONL or Parquet table")
    src.add_argument(
        "--from-hf",
        metavar="PATH",
        help="Hugging Face dataset saved with save_to_disk, or Parquet file(s)",
    )
    p.add_argument(
        "--image-column", default="image", help="table/dataset column of image paths or images"
    )
    p.add_argument("--caption-column", default="caption", help="table/dataset column of captions")
    p.add_argument("--id-column", default="id", help="table/dataset column of keys, if present")
    p.add_argument("--split", default="train", help="split of a saved DatasetDict (train)")
    _add_common(p, default_per_shard=1000)
    p.add_argument(
        "--min-size",
        type=int,
        default=0,
        help="skip images whose short side is below this many pixels (default 0: off)",
    )
    p.set_defaults(func=cmd_shards)


def _add_synthetic(data_subparsers: Any) -> None:
    """``synthetic``: the built-in coloured-shapes caption/image set as shards."""
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
        "--format", choices=SHARD_IMAGE_FORMATS, default="png", help="image encoding (default png)"
    )
    _add_scene_arguments(p)
    _add_common(p, default_per_shard=500)
    p.set_defaults(func=cmd_synthetic)


def _add_encode(data_subparsers: Any) -> None:
    """``encode``: precomputed text embeddings into new shards."""
    p = data_subparsers.add_parser(
        "encode",
        help="precompute text embeddings into new shards (training then skips the encoder)",
        description="Read shards, encode every caption with the run's text encoder on Ray "
        "actors (data.encoder_* settings, data.caption_cache_mb), and write one output shard "
        "per input shard, of the same name, with the original entries plus text.npz (float16 "
        "emb (L, D), bool mask (L,)); then encoding.json and summary.json. Shards are "
        "written in parallel (--writers tasks, each reads and writes one shard) to a local "
        "directory or a URI (s3://, gs://). Each shard appears only when complete (temp name "
        "+ rename): rerun the same command after an interruption and finished shards are "
        "kept, the rest encoded. T5-family encoders refuse text.dtype=float16 (they "
        "overflow); use bfloat16 or float32.",
    )
    p.add_argument("--shards", required=True, metavar="DIR", help="raw shards (dir, glob, URI)")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory or URI (resumed if unfinished)",
    )
    add_config_arguments(p, "run config (a stage)")
    p.add_argument(
        "--writers", type=int, default=4, help="shards encoded and written at once (default 4)"
    )
    p.add_argument(
        "--overwrite", action="store_true", help="delete an earlier run's shards in --out first"
    )
    add_verbose_argument(p)
    p.set_defaults(func=cmd_encode)


def _add_preview(data_subparsers: Any) -> None:
    """``preview``: a few batches of the training pipeline as a PNG grid and stats."""
    p = data_subparsers.add_parser(
        "preview",
        help="run the training pipeline for a few batches; write a PNG grid and print stats",
        description="Run the real Ray Data pipeline of a run config (read, decode, filter, "
        "resize, crop, text embeddings) for a few batches. Writes grid.png (each row: the "
        "training image, and for SR stages the low-res input, with the sample key and caption) "
        "and preview.json; prints skip counts and rows/s as JSON.",
    )
    add_config_arguments(p, "run config (a stage)")
    p.add_argument("--batches", type=int, default=2, help="batches of data.batch_size (2)")
    p.add_argument("--max-images", type=int, default=64, help="rows in the grid (64)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_verbose_argument(p)
    p.set_defaults(func=cmd_preview)


def _add_scene_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scenes of two or three objects (default: none)")
    g.add_argument(
        "--scene-probs",
        type=float,
        nargs=3,
        metavar=("P1", "P2", "P3"),
        help="probabilities of single-object samples (counts included), 2- and 3-object "
        "scenes (default 1 0 0; e.g. 0.3 0.6 0.1)",
    )
    g.add_argument("--scenes", metavar="FILE", help="YAML of scene settings (below)")
    for flag, what, default in (
        ("binding", "in this binding", DEFAULT_HELDOUT_BINDINGS),
        ("object-pair", "in either binding", DEFAULT_HELDOUT_OBJECT_PAIRS),
    ):
        pairs = " ".join("+".join(f"{c}:{s}" for c, s in pair) for pair in default)
        g.add_argument(
            f"--heldout-{flag}",
            action="append",
            metavar="C:S+C:S",
            help=f"two objects never together {what} (repeatable; replaces the default {pairs})",
        )


def _scene_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``{"scenes": SceneSpec}`` from --scenes FILE and the scene flags; empty when none."""
    from imagen_ray.config import read_yaml
    from imagen_ray.data.scene_spec import SceneSpec, parse_object_pair

    d = read_yaml(args.scenes) if args.scenes else {}
    if args.scene_probs is not None:
        d["probs"] = tuple(args.scene_probs)
    for flag in ("heldout_binding", "heldout_object_pair"):
        if getattr(args, flag):
            d[f"{flag}s"] = tuple(parse_object_pair(t) for t in getattr(args, flag))
    return {"scenes": SceneSpec.model_validate(d)} if d else {}


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
    """``imagen-ray data shards``: folder, table or HF dataset -> shards; 1 if none written."""
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
    elif args.from_hf:
        from imagen_ray.data.hf import write_hf_shards

        try:
            import datasets  # noqa: F401 (checked here: the error is one line, not a trace)
        except ImportError as e:
            raise ValueError(
                "--from-hf needs the Hugging Face `datasets` library: pip install 'imagen-ray[hf]'"
            ) from e
        summary = write_hf_shards(
            args.from_hf,
            args.out,
            image_column=args.image_column,
            caption_column=args.caption_column,
            id_column=args.id_column,
            split=args.split,
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
    from imagen_ray.data.preview import write_synthetic_preview
    from imagen_ray.data.synthetic import write_synthetic
    from imagen_ray.data.synthetic_spec import DEFAULT_HELDOUT, SyntheticSpec
    from imagen_ray.data.synthetic_vocab import parse_pair

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
    extra.update(_scene_settings(args))
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
    write_synthetic_preview(spec, args.out)
    print(f"{summary.one_line()}; held-out pairs in {Path(args.out) / 'heldout.json'}")
    return 0 if summary.samples else 1


@contextmanager
def ray_session(verbose: bool = False) -> Iterator[None]:
    """Use the running Ray, or start one (``RAY_ADDRESS`` or local) and stop it after."""
    import ray

    from imagen_ray.runtime import init_ray, logs_hint

    if ray.is_initialized():
        yield
        return
    print(logs_hint(init_ray(verbose=verbose), verbose), flush=True)
    try:
        yield
    finally:
        ray.shutdown()


def cmd_encode(args: argparse.Namespace) -> int:
    """``imagen-ray data encode``: precompute text embeddings (see ``encode_shards``)."""
    from imagen_ray.config import load_run_config
    from imagen_ray.data.precompute import check_output, encode_shards
    from imagen_ray.data.reader import expand_shards
    from imagen_ray.text.encoder import check_dtype

    cfg = load_run_config(args.config, args.overrides)
    if args.writers < 1:
        raise ValueError(f"--writers must be >= 1, got {args.writers}")
    # bad input, an --out that holds something else, float16 T5: errors before Ray starts
    check_output(args.out, expand_shards(args.shards), cfg.text, args.overwrite)
    check_dtype(cfg.text)
    with ray_session(args.verbose):
        summary = encode_shards(
            args.shards,
            args.out,
            cfg.text,
            encoder_batch_size=cfg.data.encoder_batch_size,
            concurrency=cfg.data.encoder_concurrency,
            num_cpus=cfg.data.encoder_num_cpus,
            num_gpus=cfg.data.encoder_num_gpus,
            writers=args.writers,
            cache_bytes=int(cfg.data.caption_cache_mb * 2**20),
            overwrite=args.overwrite,
            caption_key=cfg.data.caption_key,
            max_member_bytes=cfg.data.max_member_bytes,
        )
    print(json.dumps({k: v for k, v in summary.items() if k != "shards"}))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """``imagen-ray data preview``: a few real batches -> grid.png, preview.json, stats."""
    from imagen_ray.config import load_run_config
    from imagen_ray.data.preview import preview_pipeline, write_preview_grid
    from imagen_ray.data.reader import expand_shards
    from imagen_ray.fs import atomic_write_json

    cfg = load_run_config(args.config, args.overrides)
    if args.batches < 1 or args.max_images < 1:
        raise ValueError("--batches and --max-images must be >= 1")
    if not cfg.data.shards:
        raise ValueError("the config has no data.shards: pass --set data.shards=DIR")
    expand_shards(cfg.data.shards)
    out = Path(args.out)
    with ray_session(args.verbose):
        batches, report = preview_pipeline(cfg, args.batches)
    report["grid"] = str(write_preview_grid(batches, out / "grid.png", args.max_images))
    keys = [str(k) for b in batches for k in b["__key__"]][: args.max_images]
    captions = [str(c) for b in batches for c in b["caption"]][: args.max_images]
    atomic_write_json(out / "preview.json", {**report, "keys": keys, "captions": captions})
    print(json.dumps(report))
    return 0
