"""``imagen-ray eval probe | compositional``: images read back against what their prompts ask
(one object, or scenes of several), on held-out and seen synthetic prompts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import (
    cascade_path,
    parse_sampling_overrides,
    positive,
)
from imagen_ray.cli.eval_common import (
    EXAMPLES,
    cascade_args,
    load_for_eval,
    log_results,
    stage_runs,
    wandb_args,
)


def add_probe(esub: Any) -> None:
    """``probe``: text-image alignment read back from held-out and seen synthetic prompts."""
    q = esub.add_parser(
        "probe",
        help="text-image alignment on the synthetic set (held-out and seen combinations)",
        description="Generate images for the held-out prompts of the synthetic set and for as "
        "many seen (colour, shape, position) combinations, read colour, shape, position and "
        "count back with the deterministic probe (imagen_ray.eval.probe), and report accuracy "
        "per attribute. Writes metrics.json, readings.jsonl (prompt, seed, expected, read, "
        "file), images/ and failures.png (each failure with its prompt and what was read). "
        "The last stage run (--until) is the one read.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cascade_args(q)
    q.add_argument("--out", required=True, metavar="DIR", help="report directory")
    q.add_argument("--images-per-prompt", "-n", type=int, default=1, metavar="N", help="default 1")
    q.add_argument(
        "--heldout",
        metavar="PATH",
        help="heldout.json of the synthetic shards (or their directory); default: the "
        "synthetic set's default held-out pairs",
    )
    q.add_argument(
        "--num-seen",
        type=int,
        metavar="N",
        help="seen combinations to add (default: as many as held-out prompts; 0 for none)",
    )
    q.add_argument("--until", metavar="STAGE", help="last stage to run and read (default all)")
    wandb_args(q, stage_run=True)
    q.set_defaults(func=cmd_probe)


COMPOSITIONAL = """\
The built-in suite (without --prompts) comes from the synthetic set's settings (--heldout):
colour binding (each held-out binding, e.g. a blue circle and a red square never together in
training, and its seen counterpart, in every relation and both orders), spatial relation
(held-out object pairs, the held-out phrasing, seen pairs), counting and single object.
A prompts file is JSONL, one prompt per line:
  {"prompt": "a red circle to the left of a blue square", "objects": [{"colour": "red",
   "shape": "circle"}, {"colour": "blue", "shape": "square"}], "relation": "left of",
   "category": "spatial relation", "split": "seen"}
objects: what the image shows, each `relation` of the next ("count": 2 repeats one);
optional: relation, position (a region, for one object or copies), category (colour
binding, spatial relation, counting, single object; inferred except colour binding), split
(default heldout), reason, and file (the image --images scores, relative to --images).
The report's prompts.jsonl is such a file, with the file of each image it scored.
"""


def add_compositional(esub: Any) -> None:
    """``compositional``: scenes of several objects read back, scored per category."""
    q = esub.add_parser(
        "compositional",
        help="scenes of two or three objects: colour binding, relations, counting, per category",
        description="Generate an image per prompt of the compositional suite (or score "
        "existing images with --images), find every object in each image and read its "
        "colour, shape and position (imagen_ray.eval.scenes), match them to the prompt's "
        "objects in any order, and report accuracy per category and split: per object "
        "(colour, shape), the relation, and the whole scene (every object's colour and shape "
        "right, no object missing or extra, and the relation right). Writes metrics.json, "
        "readings.jsonl, prompts.jsonl, images/ and failures.png.",
        epilog=COMPOSITIONAL + "\n" + EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cascade_args(q, required=False)
    q.add_argument("--out", required=True, metavar="DIR", help="report directory")
    src = q.add_mutually_exclusive_group()
    src.add_argument("--prompts", metavar="FILE", help="prompts file (JSONL, below)")
    src.add_argument(
        "--heldout",
        metavar="PATH",
        help="heldout.json of the synthetic shards (or their directory) for the built-in "
        "suite; default: the default held-out choices",
    )
    what = q.add_mutually_exclusive_group()
    what.add_argument(
        "--images",
        metavar="DIR",
        help="score these images instead of generating: each prompt's `file`, under DIR",
    )
    what.add_argument(
        "--prompts-only",
        action="store_true",
        help="write the suite to OUT/prompts.jsonl and stop (no --cascade needed)",
    )
    q.add_argument("--images-per-prompt", "-n", type=int, default=1, metavar="N", help="default 1")
    q.add_argument(
        "--num-seen",
        type=int,
        metavar="N",
        help="built-in suite: seen prompts per category (default: as many as held-out "
        "spatial-relation prompts)",
    )
    q.add_argument("--until", metavar="STAGE", help="last stage to run and read (default all)")
    wandb_args(q, stage_run=True)
    q.set_defaults(func=cmd_compositional)


def _generate_for(
    args: argparse.Namespace, base: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[Any], list[int], dict[str, Any]]:
    """``--images-per-prompt`` images of each item's prompt from ``--cascade`` (seeds
    ``--seed``, ``--seed`` + 1, ...): ``(items, images, seeds, settings for metrics.json)``,
    one item per image."""
    from imagen_ray.eval.alignment import generate_images

    sampling = parse_sampling_overrides(args.sampling)
    k = args.images_per_prompt
    items = [it for it in base for _ in range(k)]
    seeds = [args.seed + i for i in range(len(items))]
    cascade = load_for_eval(args, cascade_path(args.cascade))
    t0 = time.perf_counter()
    images = generate_images(
        cascade,
        [it["prompt"] for it in items],
        seeds,
        sampling=sampling,
        until=args.until,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    extra = {
        "cascade": [str(c) for c in args.cascade],
        "images_per_prompt": k,
        "seed": args.seed,
        "sampling": sampling,
        "until": args.until,
        "generate_seconds": round(time.perf_counter() - t0, 3),
    }
    return items, images, seeds, extra


def _print_report(table: str, metrics: dict[str, Any], images: int, out: str) -> None:
    print(table)
    fail = f", failures.png ({metrics['failures']} failures)" if metrics["failures_png"] else ""
    print(f"wrote metrics.json, readings.jsonl, {images} images{fail} to {out}")


def _check_counts(args: argparse.Namespace) -> None:
    positive("--images-per-prompt", args.images_per_prompt)
    if args.num_seen is not None:
        positive("--num-seen", args.num_seen, 0)
    parse_sampling_overrides(args.sampling)  # a bad override fails before anything loads


def cmd_probe(args: argparse.Namespace) -> int:
    """``imagen-ray eval probe``: alignment accuracy on held-out and seen prompts."""
    from imagen_ray.eval.alignment import evaluate_probe, load_spec, probe_items, summary_table

    _check_counts(args)
    base = probe_items(load_spec(args.heldout), num_seen=args.num_seen, seed=args.seed)
    runs = stage_runs(args, args.until)
    items, images, seeds, extra = _generate_for(args, base)
    extra["heldout"] = args.heldout
    metrics = evaluate_probe(images, items, args.out, seeds=seeds, extra=extra)
    _print_report(summary_table(metrics), metrics, len(images), args.out)
    log_results(runs, "probe", metrics, args.out)
    return 0


def cmd_compositional(args: argparse.Namespace) -> int:
    """``imagen-ray eval compositional``: the compositional suite, per category."""
    from imagen_ray.eval.alignment import load_spec
    from imagen_ray.eval.compositional import evaluate_compositional, summary_table
    from imagen_ray.eval.compositional_prompts import (
        read_images,
        read_prompts,
        suite_items,
        write_prompts,
    )

    _check_counts(args)
    if bool(args.cascade) == bool(args.images or args.prompts_only):
        raise ValueError("pass --cascade to generate, or --images or --prompts-only")
    if args.prompts:
        base = read_prompts(args.prompts)
    else:
        base = suite_items(load_spec(args.heldout), num_seen=args.num_seen, seed=args.seed)
    if args.prompts_only:
        path = write_prompts(base, Path(args.out) / "prompts.jsonl")
        print(f"wrote {len(base)} prompts to {path}")
        return 0
    runs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    seeds: list[int] | None = None
    if args.images:
        items, images = base, read_images(base, args.images)
    else:
        runs = stage_runs(args, args.until)
        items, images, seeds, extra = _generate_for(args, base)
    extra |= {"prompts": args.prompts, "heldout": args.heldout, "images": args.images}
    metrics = evaluate_compositional(images, items, args.out, seeds=seeds, extra=extra)
    _print_report(summary_table(metrics), metrics, len(images), args.out)
    log_results(runs, "compositional", metrics, args.out)
    return 0
