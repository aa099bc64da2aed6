"""``imagen-ray eval``: the command group, SR fidelity, prompt-suite gallery, FID, CLIP score
(probe and compositional: :mod:`imagen_ray.cli.eval_alignment`; shared arguments:
:mod:`imagen_ray.cli.eval_common`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import (
    cascade_path,
    parse_sampling_overrides,
    positive,
)
from imagen_ray.cli.eval_alignment import add_compositional, add_probe
from imagen_ray.cli.eval_common import (
    EXAMPLES,
    cascade_args,
    load_for_eval,
    log_results,
    stage_runs,
    wandb_args,
)
from imagen_ray.fs import atomic_write_json


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
    add_probe(esub)
    add_compositional(esub)
    _add_sr_fidelity(esub)
    _add_prompts(esub)
    _add_fid(esub)
    _add_clip(esub)


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
    cascade_args(q)
    q.add_argument("--n", type=int, default=8, help="inputs per stage (>= 2, default 8)")
    q.add_argument(
        "--source",
        choices=("synthetic", "generated"),
        default="synthetic",
        help="low-res inputs: rendered synthetic images (default) or the previous stage's",
    )
    q.add_argument("--out", metavar="DIR", help="write fidelity.json and sr_<stage>.png here")
    wandb_args(q, stage_run=True)  # --log-to-run: each SR stage's result to its own run
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
    cascade_args(q, many=True)
    q.add_argument("--suite", required=True, metavar="CSV", help="prompt suite (Prompts,Category)")
    q.add_argument("--out", required=True, metavar="DIR", help="gallery directory")
    q.add_argument("--n", type=int, default=1, help="images per prompt and cascade (default 1)")
    wandb_args(q, stage_run=True)  # --log-to-run: each cascade's images to its last stage's run
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
    wandb_args(q, stage_run=False)
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
    wandb_args(q, stage_run=False)
    q.set_defaults(func=cmd_clip)


def cmd_sr_fidelity(args: argparse.Namespace) -> int:
    """``imagen-ray eval sr-fidelity``: does each SR stage follow its low-res input?"""
    from imagen_ray.eval.sr_fidelity import GRID_COLUMNS, format_results, sr_fidelity

    positive("--n", args.n, 2)
    sampling = parse_sampling_overrides(args.sampling)
    runs = stage_runs(args, "sr")
    cascade = load_for_eval(args, cascade_path(args.cascade))
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
            log_results({name: run}, "sr-fidelity", by_stage[name], args.out)
    else:  # --wandb-run: every stage's numbers to one run, under the stage's name
        log_results(runs, "sr-fidelity", by_stage, args.out)
    return 0


def cmd_prompts(args: argparse.Namespace) -> int:
    """``imagen-ray eval prompts``: a prompt suite rendered into an HTML gallery."""
    from imagen_ray.eval.suite import cascade_names, read_suite, run_suite

    positive("--n", args.n)
    prompts = read_suite(args.suite)
    sampling = parse_sampling_overrides(args.sampling)
    names = cascade_names(args.cascade)
    runs = _gallery_runs(args, names)
    cascades = [
        (name, load_for_eval(args, path)) for name, path in zip(names, args.cascade, strict=True)
    ]
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
