"""``imagen-ray eval``: alignment probe, SR fidelity, prompt-suite gallery, FID, CLIP score."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import (
    add_cascade_argument,
    add_sampling_argument,
    cascade_path,
    parse_sampling_overrides,
    positive,
)
from imagen_ray.fs import atomic_write_json

EXAMPLES = """\
examples:
  imagen-ray eval probe --cascade runs/export --out eval/probe --heldout data/synthetic
  imagen-ray eval sr-fidelity --cascade runs/export --n 8 --out eval/sr
  imagen-ray eval probe --cascade runs/export --out eval/probe --log-to-run  # + W&B
  imagen-ray eval compositional --cascade runs/export --out eval/comp --heldout data/scenes
  imagen-ray eval compositional --prompts eval/comp/prompts.jsonl --images eval/comp \\
      --out eval/rescored
  imagen-ray eval prompts --suite examples/prompt_suite.csv --cascade runs/a \\
      --cascade runs/b --out eval/gallery --n 2
  imagen-ray eval fid --generated outputs/batch/images --reference data/ref \\
      --inception weights/inception-2015-12-05.pt
  imagen-ray eval clip --images outputs/batch --prompts outputs/batch/manifest.jsonl \\
      --clip weights/clip-vit-large-patch14
"""


def _cascade_args(p: argparse.ArgumentParser, *, many: bool = False, required: bool = True) -> None:
    if many:
        p.add_argument(
            "--cascade",
            required=True,
            action="append",
            metavar="DIR",
            help="saved cascade directory (repeat to compare cascades side by side)",
        )
    else:
        add_cascade_argument(p, required=required)
    add_sampling_argument(p)
    p.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _wandb_args(p: argparse.ArgumentParser, *, stage_run: bool) -> None:
    g = p.add_argument_group("W&B (optional)")
    w = g.add_mutually_exclusive_group()
    if stage_run:
        w.add_argument(
            "--log-to-run",
            action="store_true",
            help="also log the results to the W&B run that trained the evaluated stage "
            "(its id is stored in the exported stage's config.json) as eval/<command>/..., "
            "charted against the exported step; online or offline as that run's "
            "wandb.mode (WANDB_MODE overrides)",
        )
    w.add_argument(
        "--wandb-run",
        metavar="RUN",
        help="also log the results to this W&B run: entity/project/run_id (as in the "
        "run's URL), project/run_id, or a run id of the imagen-ray project",
    )


def _stage_runs(args: argparse.Namespace, which: str | None = None) -> dict[str, Any]:
    """stage name -> (RunRef, exported step) for the results that go to W&B. ``which``: a
    stage name, ``"sr"`` (every stage after the base, each to its own run) or None (the
    last stage). Empty when not asked for; resolved before anything is generated, so a
    stage without a run id fails at once."""
    from imagen_ray.cascade.io import read_stage_meta, stage_dirs
    from imagen_ray.train.wandb_runs import RunRef

    if not (getattr(args, "log_to_run", False) or args.wandb_run):
        return {}
    dirs = {read_stage_meta(d)["stage"]["name"]: d for d in stage_dirs(cascade_path(args.cascade))}
    names = list(dirs)[1:] if which == "sr" else [which or list(dirs)[-1]]
    if args.wandb_run:  # one run for all results
        names = names[-1:]
    out = {}
    for name in names:
        if name not in dirs:
            raise ValueError(f"no stage {name!r} in --cascade (stages: {', '.join(dirs)})")
        step = (read_stage_meta(dirs[name]).get("extra") or {}).get("step")
        ref = RunRef.parse(args.wandb_run) if args.wandb_run else RunRef.of_stage(dirs[name])
        out[name] = (ref, step)
    return out


def _log_results(runs: dict[str, Any], kind: str, results: dict[str, Any], out: str | None) -> None:
    from imagen_ray.train.wandb_runs import log_eval

    for ref, step in runs.values():
        print(log_eval(results, ref, kind=kind, trained_step=step, wandb_dir=out))


def register(sub: Any) -> None:
    """Add ``imagen-ray eval`` and its subcommands to the CLI."""
    p = sub.add_parser(
        "eval",
        help="evaluate a cascade: alignment probe, compositional suite, SR fidelity, prompt "
        "suites, FID, CLIP score",
        description="Evaluation commands. `probe` reads colour/shape/position/count back from "
        "images generated for held-out and seen synthetic prompts; `compositional` reads "
        "scenes of several objects back and scores binding and relations per category; "
        "`sr-fidelity` checks that "
        "SR stages follow their low-res input; `prompts` renders a DrawBench-style CSV into "
        "an HTML gallery; `fid` and `clip` score image folders with local weights.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    _add_probe(esub)
    _add_compositional(esub)
    _add_sr_fidelity(esub)
    _add_prompts(esub)
    _add_fid(esub)
    _add_clip(esub)


def _add_probe(esub: Any) -> None:
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
    _cascade_args(q)
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
    _wandb_args(q, stage_run=True)
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


def _add_compositional(esub: Any) -> None:
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
    _cascade_args(q, required=False)
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
    _wandb_args(q, stage_run=True)
    q.set_defaults(func=cmd_compositional)


def _add_sr_fidelity(esub: Any) -> None:
    """``sr-fidelity``: whether each SR stage follows its low-res input."""
    q = esub.add_parser(
        "sr-fidelity",
        help="does each SR stage follow its low-res input? (PSNR/MAE vs a shuffled control)",
        description="For each super-resolution stage: feed low-res inputs (synthetic images "
        "rendered at the stage's lowres_size, or the previous stage's outputs with --source "
        "generated), shrink the output back with the stage's own resize, and compare it with "
        "the input (PSNR in dB and mean absolute error on 0-255). The control gives every "
        "prompt another prompt's input: a stage that ignores its input scores about the "
        "control; one that follows it scores far above (verdict at a gap of 3 dB).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cascade_args(q)
    q.add_argument("--n", type=int, default=8, help="inputs per stage (>= 2, default 8)")
    q.add_argument(
        "--source",
        choices=("synthetic", "generated"),
        default="synthetic",
        help="low-res inputs: rendered synthetic images (default) or the previous stage's",
    )
    q.add_argument("--out", metavar="DIR", help="write fidelity.json and sr_<stage>.png here")
    _wandb_args(q, stage_run=True)  # --log-to-run: each SR stage's result to its own run
    q.set_defaults(func=cmd_sr_fidelity)


def _add_prompts(esub: Any) -> None:
    """``prompts``: a prompt-suite CSV as an HTML gallery, cascades side by side."""
    q = esub.add_parser(
        "prompts",
        help="render a DrawBench-style CSV into an HTML gallery, cascades side by side",
        description="Read a prompt suite CSV with the columns Prompts and Category (the layout "
        "of DrawBench, whose CSV works as it is), make N images per prompt with every "
        "--cascade using the same seeds, and write index.html (grouped by category, one row "
        "per prompt, one column per cascade), images/ and results.json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cascade_args(q, many=True)
    q.add_argument("--suite", required=True, metavar="CSV", help="prompt suite (Prompts,Category)")
    q.add_argument("--out", required=True, metavar="DIR", help="gallery directory")
    q.add_argument("--n", type=int, default=1, help="images per prompt and cascade (default 1)")
    _wandb_args(q, stage_run=True)  # --log-to-run: each cascade's images to its last stage's run
    q.set_defaults(func=cmd_prompts)


def _add_fid(esub: Any) -> None:
    """``fid``: FID between two image folders."""
    q = esub.add_parser(
        "fid",
        help="FID between two image folders (Inception weights from a local file)",
        description="Fréchet Inception Distance (torchmetrics) between --generated and "
        "--reference image folders. --inception is the local path of the TorchScript "
        "Inception-v3 that clean-fid uses (inception-2015-12-05.pt); nothing is downloaded. "
        "Images are resized to 299 px (bicubic). Use thousands of images for a stable value.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--generated", required=True, metavar="DIR", help="generated images")
    q.add_argument("--reference", required=True, metavar="DIR", help="reference images")
    q.add_argument("--inception", required=True, metavar="WEIGHTS", help="TorchScript Inception")
    q.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    q.add_argument("--device", default="cpu", help="torch device (default cpu)")
    q.add_argument("--out", metavar="JSON", help="also write the result to this file")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _wandb_args(q, stage_run=False)
    q.set_defaults(func=cmd_fid)


def _add_clip(esub: Any) -> None:
    """``clip``: CLIP score of images against their prompts."""
    q = esub.add_parser(
        "clip",
        help="CLIP score of images against their prompts (CLIP model from a local directory)",
        description="CLIP score, max(100 * mean cos(image, text), 0), with a CLIP model "
        "loaded by transformers from a local directory. --prompts is a manifest: .jsonl with "
        "file and prompt per record (imagen-ray generate's manifest.jsonl) or .csv with file "
        "and prompt columns; relative files are under --images.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--images", metavar="DIR", help="folder of the manifest's relative files")
    q.add_argument("--prompts", required=True, metavar="MANIFEST", help=".jsonl or .csv")
    q.add_argument("--clip", required=True, metavar="MODEL_DIR", help="local CLIP model directory")
    q.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    q.add_argument("--device", default="cpu", help="torch device (default cpu)")
    q.add_argument("--out", metavar="JSON", help="also write the result to this file")
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _wandb_args(q, stage_run=False)
    q.set_defaults(func=cmd_clip)


def _load(args: argparse.Namespace, path: Any) -> Any:
    from imagen_ray.publish import load_cascade

    cascade = load_cascade(path, device=args.device)
    _ = cascade.encoder  # load it before any progress bar starts
    return cascade


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
    cascade = _load(args, cascade_path(args.cascade))
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
    runs = _stage_runs(args, args.until)
    items, images, seeds, extra = _generate_for(args, base)
    extra["heldout"] = args.heldout
    metrics = evaluate_probe(images, items, args.out, seeds=seeds, extra=extra)
    _print_report(summary_table(metrics), metrics, len(images), args.out)
    _log_results(runs, "probe", metrics, args.out)
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
        runs = _stage_runs(args, args.until)
        items, images, seeds, extra = _generate_for(args, base)
    extra |= {"prompts": args.prompts, "heldout": args.heldout, "images": args.images}
    metrics = evaluate_compositional(images, items, args.out, seeds=seeds, extra=extra)
    _print_report(summary_table(metrics), metrics, len(images), args.out)
    _log_results(runs, "compositional", metrics, args.out)
    return 0


def cmd_sr_fidelity(args: argparse.Namespace) -> int:
    """``imagen-ray eval sr-fidelity``: does each SR stage follow its low-res input?"""
    from imagen_ray.eval.sr_fidelity import GRID_COLUMNS, format_results, sr_fidelity

    positive("--n", args.n, 2)
    sampling = parse_sampling_overrides(args.sampling)
    runs = _stage_runs(args, "sr")
    cascade = _load(args, cascade_path(args.cascade))
    results = sr_fidelity(
        cascade, n=args.n, seed=args.seed, source=args.source, sampling=sampling, out_dir=args.out
    )
    print(format_results(results))
    if args.out:
        path = Path(args.out) / "fidelity.json"
        atomic_write_json(path, {"stages": results})
        print(f"wrote {path} and sr_<stage>.png (columns: {', '.join(GRID_COLUMNS)})")
    else:
        print(json.dumps({"stages": results}))
    by_stage = {r["stage"]: r for r in results}
    if args.log_to_run:  # each SR stage's numbers to its own training run
        for name, run in runs.items():
            _log_results({name: run}, "sr-fidelity", by_stage[name], args.out)
    else:  # --wandb-run: every stage's numbers to one run, under the stage's name
        _log_results(runs, "sr-fidelity", by_stage, args.out)
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    """``imagen-ray eval prompts``: a prompt suite rendered into an HTML gallery."""
    from imagen_ray.eval.suite import cascade_names, read_suite, run_suite

    positive("--n", args.n)
    prompts = read_suite(args.suite)
    sampling = parse_sampling_overrides(args.sampling)
    names = cascade_names(args.cascade)
    runs = _gallery_runs(args, names)
    cascades = [(name, _load(args, path)) for name, path in zip(names, args.cascade, strict=True)]
    results = run_suite(
        cascades,
        prompts,
        args.out,
        n=args.n,
        seed=args.seed,
        sampling=sampling,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        title=f"prompt suite: {Path(args.suite).name}",
    )
    cats = len({p.category for p in prompts})
    total = len(prompts) * args.n * len(cascades)
    print(
        f"wrote {Path(args.out) / 'index.html'}: {len(prompts)} prompts in {cats} categories, "
        f"{total} images from {', '.join(results['cascades'])}"
    )
    _log_gallery(runs, results, Path(args.out))
    return 0


def _gallery_runs(args: argparse.Namespace, names: list[str]) -> dict[str | None, Any]:
    """cascade name (None: all, for --wandb-run) -> (RunRef, step) of its last stage."""
    from imagen_ray.cascade.io import read_stage_meta, stage_dirs
    from imagen_ray.train.wandb_runs import RunRef

    if args.wandb_run:
        return {None: (RunRef.parse(args.wandb_run), None)}
    if not args.log_to_run:
        return {}
    out: dict[str | None, Any] = {}
    for name, path in zip(names, args.cascade, strict=True):
        last = stage_dirs(path)[-1]
        step = (read_stage_meta(last).get("extra") or {}).get("step")
        out[name] = (RunRef.of_stage(last), step)
    return out


def _log_gallery(runs: dict[str | None, Any], results: dict[str, Any], out: Path) -> None:
    """The gallery as captioned images (``category: prompt``, the first image per prompt)
    and the generation seconds, to each cascade's run or, with the cascade's name in the
    caption, to the one --wandb-run."""
    from imagen_ray.train.wandb_runs import log_eval

    for cascade, (ref, step) in runs.items():
        shown = [cascade] if cascade else list(results["cascades"])
        images = [
            (
                out / p["files"][c][0],
                f"{p['category']}: {p['prompt']}" + ("" if cascade else f" [{c}]"),
            )
            for p in results["prompts"]
            for c in shown
        ]
        seconds = {c: results["seconds"][c] for c in shown}
        line = log_eval(
            {"seconds": seconds},
            ref,
            kind="prompts",
            trained_step=step,
            wandb_dir=out,
            images={"images": images},
        )
        print(line)


def _write_result(
    result: dict[str, Any], out: str | None, kind: str, wandb_run: str | None
) -> None:
    print(json.dumps({k: v for k, v in result.items() if k != "per_image"}))
    if out:
        atomic_write_json(out, result)
    if wandb_run:
        from imagen_ray.train.wandb_runs import RunRef, log_eval

        wdir = str(Path(out).parent) if out else None
        print(log_eval(result, RunRef.parse(wandb_run), kind=kind, wandb_dir=wdir))


def cmd_fid(args: argparse.Namespace) -> int:
    """``imagen-ray eval fid``: FID between two image folders."""
    from imagen_ray.eval.fid import fid, load_inception

    features = load_inception(args.inception, device=args.device)
    result = fid(
        args.generated,
        args.reference,
        features,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    _write_result({**result, "inception": str(args.inception)}, args.out, "fid", args.wandb_run)
    return 0


def cmd_clip(args: argparse.Namespace) -> int:
    """``imagen-ray eval clip``: CLIP score of images against their prompts."""
    from imagen_ray.eval.clip import clip_score, load_clip, read_manifest

    pairs = read_manifest(args.prompts, args.images)
    model, processor = load_clip(args.clip, device=args.device)
    result = clip_score(
        pairs, model, processor, batch_size=args.batch_size, progress=not args.no_progress
    )
    _write_result({**result, "clip": str(args.clip)}, args.out, "clip", args.wandb_run)
    return 0
