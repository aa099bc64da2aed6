"""``imagen-ray generate``: batch generation over a prompt file (see :mod:`imagen_ray.batch`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import (
    add_cascade_argument,
    add_dtype_argument,
    add_overrides_argument,
    add_sampling_argument,
    add_verbose_argument,
    parse_sampling_overrides,
)
from imagen_ray.images import FORMAT_ALIASES, IMAGE_FORMATS

EXAMPLES = """\
examples:
  imagen-ray generate --cascade runs/tiny-random --prompts prompts.txt --out outputs/batch \\
      --images-per-prompt 4 --sampling base.steps=8
  imagen-ray generate --cascade runs/export/base runs/export/sr64 --prompts drawbench.csv \\
      --out outputs/drawbench --replicas 4 --num-gpus 1 --batch-size 16
  RAY_ADDRESS=127.0.0.1:6379 imagen-ray generate ...   # on a running cluster (GCS address)

Run the same command again to finish an interrupted run: finished images are skipped.
Image j of prompt i has seed SeedSequence([seed, i, j]) (in the manifest); `imagen-ray
sample --seed <that seed>` with the prompt alone makes the same image.
"""


def register(sub: Any) -> None:
    """Add ``imagen-ray generate`` to the CLI's subcommands."""
    p = sub.add_parser(
        "generate",
        help="batch-generate images for a prompt file on a Ray Data actor pool (resumable)",
        description="Offline batch generation: every prompt of a .txt/.csv/.jsonl file,\n"
        "N images each, made by a Ray Data pool of actors that each hold the cascade.\n"
        "Writes images/ with a JSON record beside every image, and manifest.jsonl\n"
        "(prompt, seed, settings, file). Re-running skips finished images.\n"
        "Settings: --config YAML (optional), then the flags below, then --set KEY=VALUE\n"
        "(keys: seed, images_per_prompt, negative_prompt, until, sampling.STAGE.KEY,\n"
        "format, batch_size, replicas, num_cpus, num_gpus, dtype).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cascade_argument(p)
    p.add_argument(
        "--prompts",
        required=True,
        metavar="FILE",
        help=".txt (one prompt per line), .csv (header with a prompt/Prompts/text/caption "
        'column; other columns go to the manifest) or .jsonl ({"prompt": ...} per line); '
        "rows with image (and mask, strength) columns are edits, as `imagen-ray edit` makes "
        "them (paths relative to the file)",
    )
    p.add_argument("--prompt-column", metavar="NAME", help="CSV column / JSONL key of prompts")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory; on a multi-node cluster, one that every node sees (as the "
        "cascade directory must be)",
    )
    p.add_argument("--config", "-c", metavar="YAML", help="generate settings file (optional)")
    p.add_argument("--seed", type=int, metavar="N", help="base seed (default 0)")
    p.add_argument(
        "--images-per-prompt", "-n", type=int, metavar="N", help="images per prompt (default 1)"
    )
    p.add_argument(
        "--negative-prompt", metavar="TEXT", help="steer away from this text (all stages)"
    )
    p.add_argument("--until", metavar="STAGE", help="last stage to run (default: all)")
    add_sampling_argument(p)
    p.add_argument(
        "--format",
        choices=[*IMAGE_FORMATS, *FORMAT_ALIASES],
        help="image format (png; jpg is jpeg)",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="images per cascade call (default 4)"
    )
    p.add_argument("--replicas", type=int, metavar="N", help="actors in the pool (default 1)")
    p.add_argument("--num-cpus", type=float, metavar="X", help="CPUs per replica (default 1)")
    p.add_argument(
        "--num-gpus", type=float, metavar="X", help="GPUs per replica, 0.5 shares one (default 0)"
    )
    p.add_argument(
        "--ray-num-cpus",
        type=float,
        metavar="X",
        help="logical CPUs of a LOCAL Ray cluster started for this run (ignored with "
        "RAY_ADDRESS); default: replicas x num_cpus, at least the machine's cores",
    )
    add_dtype_argument(p, default=None)
    add_verbose_argument(p)
    p.add_argument("--overwrite", action="store_true", help="make every image again")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_overrides_argument(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    """``imagen-ray generate``: settings, prompts, then :func:`imagen_ray.batch.run.generate`."""
    from imagen_ray.batch.config import load_generate_config
    from imagen_ray.batch.run import generate
    from imagen_ray.cluster import Demand, local_num_cpus
    from imagen_ray.prompts import read_prompt_file
    from imagen_ray.runtime import stop_on_signals

    sampling = parse_sampling_overrides(args.sampling) or None
    flags = {
        "seed": args.seed,
        "images_per_prompt": args.images_per_prompt,
        "negative_prompt": args.negative_prompt,
        "until": args.until,
        "sampling": sampling,
        "format": args.format,
        "batch_size": args.batch_size,
        "replicas": args.replicas,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "dtype": args.dtype,
    }
    cfg = load_generate_config(args.config, flags, args.overrides)
    prompts = read_prompt_file(args.prompts, args.prompt_column)

    def start_ray() -> None:
        from imagen_ray.runtime import init_ray, logs_hint

        num_cpus = args.ray_num_cpus
        if num_cpus is None:  # a local cluster gets the pool's CPUs, at least the cores
            num_cpus = local_num_cpus([Demand("pool", {"CPU": cfg.num_cpus}, cfg.replicas)])
        logs = init_ray(num_cpus=num_cpus, verbose=args.verbose, run_dir=args.out)
        print(logs_hint(logs, args.verbose), flush=True)

    with stop_on_signals():
        generate(
            args.cascade,
            prompts,
            args.out,
            cfg,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            start_ray=start_ray,
            prompts_dir=Path(args.prompts).resolve().parent,
        )
    return 0
