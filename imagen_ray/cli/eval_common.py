"""Arguments and W&B logging shared by the ``imagen-ray eval`` subcommands."""

from __future__ import annotations

import argparse
from typing import Any

from imagen_ray.cli.args import (
    add_cascade_argument,
    add_sampling_argument,
    cascade_path,
)

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


def cascade_args(p: argparse.ArgumentParser, *, many: bool = False, required: bool = True) -> None:
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


def wandb_args(p: argparse.ArgumentParser, *, stage_run: bool) -> None:
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


def stage_runs(args: argparse.Namespace, which: str | None = None) -> dict[str, Any]:
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


def log_results(runs: dict[str, Any], kind: str, results: dict[str, Any], out: str | None) -> None:
    from imagen_ray.train.wandb_runs import log_eval

    for ref, step in runs.values():
        print(log_eval(results, ref, kind=kind, trained_step=step, wandb_dir=out))


def load_for_eval(args: argparse.Namespace, path: Any) -> Any:
    from imagen_ray.publish import load_cascade

    cascade = load_cascade(path, device=args.device)
    _ = cascade.encoder  # load it before any progress bar starts
    return cascade
