"""``imagen-ray train`` (also ``python -m imagen_ray.train``) and ``imagen-ray export``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from imagen_ray import storage
from imagen_ray.cli.args import add_overrides_argument, add_verbose_argument


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``train``."""
    p.add_argument(
        "--config",
        "-c",
        action="append",
        required=True,
        metavar="YAML",
        help="run config of one stage; repeat to train several stages at once, each its "
        "own Ray Train run on its own workers",
    )
    add_overrides_argument(p)  # applied to every --config
    p.add_argument(
        "--data",
        choices=["ray", "memory"],
        default="ray",
        help="ray: the Ray Data webdataset pipeline (default); memory: seeded random "
        "tensors (benchmarks, smoke tests)",
    )
    p.add_argument(
        "--resume-from",
        action="append",
        metavar="DIR",
        help="start from this checkpoint_* directory or run directory (its latest complete "
        "checkpoint): weights, optimizer, LR schedule, EMA, step, RNG and the W&B run id; "
        "once per --config, in the same order. Needs the same stage, workers and ZeRO stage",
    )
    p.add_argument(
        "--num-cpus",
        type=float,
        help="logical CPUs of a LOCAL Ray cluster (ignored with RAY_ADDRESS); default: what "
        "the runs hold at once (workers x train.cpus_per_worker + one read and one decode "
        "task + the text-encoder actors), at least the machine's cores",
    )
    add_verbose_argument(p)


def cmd_train(args: argparse.Namespace) -> int:
    """``imagen-ray train``: one Ray Train run per --config, all at once."""
    from imagen_ray.cluster import cluster_capacity, local_num_cpus
    from imagen_ray.config import load_run_config
    from imagen_ray.runtime import Console, init_ray, link_logs, logs_hint, stop_on_signals
    from imagen_ray.train.batches import random_batches
    from imagen_ray.train.launcher import (
        build_trainer,
        check_resources,
        check_storage,
        run_demands,
        run_dir,
    )

    cfgs = [load_run_config(path, args.overrides) for path in args.config]
    names = [c.train.name or c.stage.name for c in cfgs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must differ, got {names}: set train.name per config")
    resume: list[str | None] = list(args.resume_from or [None] * len(cfgs))
    if len(resume) != len(cfgs):
        raise ValueError(
            f"{len(resume)} --resume-from for {len(cfgs)} --config: give one --resume-from "
            "per --config (in the same order), or train the stages in separate commands"
        )
    for cfg in cfgs:  # a missing bucket or bad credentials, before Ray starts
        check_storage(cfg)
    pipeline = args.data != "memory"
    local = not os.environ.get("RAY_ADDRESS")
    num_cpus = args.num_cpus
    if local and num_cpus is None:  # size the local cluster for the runs
        num_cpus = local_num_cpus(
            d for c in cfgs for d in run_demands(c, pipeline=pipeline, local=True)
        )
    with stop_on_signals():
        logs = init_ray(num_cpus=num_cpus, verbose=args.verbose)
        for cfg in cfgs:
            if logs is not None and not storage.is_uri(run_dir(cfg)):
                link_logs(Path(run_dir(cfg)), logs)
        print(logs_hint(logs, args.verbose), flush=True)
        # all runs checked together, against what the cluster can become, before any starts
        wait = check_resources(cfgs, cluster_capacity(local=local), pipeline=pipeline, local=local)
        if wait:
            print(wait, flush=True)
        batches = random_batches if args.data == "memory" else None
        console = Console()
        try:
            trainers = [
                build_trainer(
                    c, batches=batches, resume_from=r, console=console.sink(), check=False
                )
                for c, r in zip(cfgs, resume, strict=True)
            ]
            results = console.run([t.fit for t in trainers])
        finally:
            console.close()
    for cfg, res in zip(cfgs, results, strict=True):
        summary: dict[str, Any] = {
            "stage": cfg.stage.name,
            "run_dir": run_dir(cfg),
            # Ray reports a remote checkpoint without its scheme: name it by the run's URI
            "checkpoint": storage.join(run_dir(cfg), storage.name(res.checkpoint.path))
            if res.checkpoint
            else None,
            "metrics": res.metrics,
        }
        print(json.dumps(summary, default=str))
    return 2 if _last_checkpoints_missing(cfgs, run_dir) else 0


def _last_checkpoints_missing(cfgs: list[Any], run_dir: Any) -> int:
    """How many runs end without their last step's checkpoint, each said on stderr."""
    missing = 0
    for cfg in cfgs:
        # the run directory's latest complete checkpoint: short of train.steps, the last
        # checkpoint was not written (the run printed why: a full disk, or storage that stayed
        # unreachable past train.upload_retry_s)
        try:
            step = _latest_step(run_dir(cfg))
        except OSError as e:  # the store is unreachable now: nothing to conclude
            print(f"warning: could not list {run_dir(cfg)} to check its last checkpoint ({e})",
                  file=sys.stderr)  # fmt: skip
            continue
        if step is None or step < cfg.train.steps:
            latest = f"the latest is at step {step}" if step else "no checkpoint was written"
            print(
                f"imagen-ray train: error: stage {cfg.stage.name}: the last checkpoint was not "
                f"written ({latest} of {cfg.train.steps}; why is printed above: a full disk or "
                "storage that stayed unreachable); fix that and rerun the same command to "
                "resume",
                file=sys.stderr,
            )
            missing += 1
    return missing


def _latest_step(run: str) -> int | None:
    """The step of a run directory's latest complete checkpoint (None: there is none).

    Raises:
        OSError: the run's storage cannot be listed.
    """
    from imagen_ray.train.checkpoint import IncompleteCheckpoint, find_checkpoint, read_config

    try:
        return int(read_config(find_checkpoint(run))["step"])
    except (IncompleteCheckpoint, FileNotFoundError, KeyError, ValueError):
        return None


def cmd_export(args: argparse.Namespace) -> int:
    """``imagen-ray export``: a training checkpoint -> a stage directory."""
    from imagen_ray.train.export import export_checkpoint
    from imagen_ray.train.wandb_runs import log_stage_artifact

    out = export_checkpoint(args.checkpoint, args.out, weights=args.weights)
    print(f"exported {args.weights} weights of {args.checkpoint} to {out}")
    if not args.no_artifact:
        print(log_stage_artifact(out))
    if storage.is_uri(out):  # sample, publish.load_cascade read URIs; serve, generate, assemble not
        print(
            f"next: `imagen-ray sample --cascade {out}` or "
            f"imagen_ray.publish.load_cascade('{out}') samples it; "
            "copy it to a local directory to serve it, generate with it or assemble a cascade"
        )
        return 0
    print(
        f"next: `--cascade {out}` samples or serves it alone; `imagen-ray cascade assemble "
        f"--stage {out} --stage <sr stage>… --out <dir>` makes a cascade of stages"
    )
    return 0


def register(sub: Any) -> None:
    """Add ``train`` and ``export`` to the main CLI."""
    p = sub.add_parser(
        "train",
        help="train cascade stages with Ray Train + DeepSpeed (one run per --config)",
        description="Train one stage per --config on the Ray cluster in RAY_ADDRESS (or a "
        "local one): Ray Data streams the shards in data.shards, DeepSpeed ZeRO shards the "
        "model over train.num_workers workers, checkpoints go to "
        "train.storage_path/<train.name>. Rerun with the same name to resume.",
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "export",
        help="consolidate a training checkpoint into a stage directory for sample/serve",
        description="Write config.json + model.safetensors (EMA weights by default) from a "
        "run directory (its latest complete checkpoint) or a checkpoint_* directory. The "
        "training run's W&B id goes into config.json (for `imagen-ray eval ... --log-to-run`); "
        "when W&B is online (wandb.mode of the run, or WANDB_MODE) the stage is also logged "
        "to that run as a `model` artifact.",
    )
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="run or checkpoint dir")
    p.add_argument("--out", required=True, metavar="DIR", help="stage directory to write")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="default: ema")
    p.add_argument(
        "--no-artifact",
        action="store_true",
        help="do not log the exported stage as a W&B model artifact (even when online)",
    )
    p.set_defaults(func=cmd_export)
