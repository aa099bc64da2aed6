#!/usr/bin/env python
"""``imagen-ray plan`` against the runs it predicts: samples/s, per-rank memory, checkpoints.

For each case the config trains for real through Ray Train + DeepSpeed with 2 CPU workers,
fed in-memory batches (``random_batches``: the data pipeline is the plan's separate
``data_cpus`` line); then a CPU plan of it is made as ``imagen-ray plan --gpu cpu`` makes it:
this machine's step time (the run's DeepSpeed engine timed for a few steps in ``ranks``
processes side by side, outside Ray) and the model state from the ZeRO accounting.

Reported per case, each as predicted / measured and their ratio: samples/s (the trainer's
own, over the last half of the steps), per-rank model state
(``imagen_ray.train.memory.ModelStateMemory``: parameters, gradients, optimizer states and
master weights as DeepSpeed holds them) and the checkpoint's bytes on disk.

Cases: the tiny and the demo base stage at ZeRO 0 / 2 / 3, and the tiny SR
stage on 16 px crops (``configs/tiny/sr32_crops.yaml``).

    python bench/plan.py                 # every case (~6 min on 2 cores)
    python bench/plan.py --only tiny_zero2 --steps 20
    python bench/plan.py --quick         # smoke run (tiny_zero2, 6 steps)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from _common import emit, loadavg, log, machine_info, rnd

ROOT = Path(__file__).resolve().parents[1]
_STDOUT = sys.stdout
PARTS = ("params", "grads", "optimizer", "master_weights")
CASES: dict[str, tuple[str, list[str]]] = {
    "tiny_zero0": ("configs/tiny/base.yaml", ["train.zero_stage=0"]),
    "tiny_zero2": ("configs/tiny/base.yaml", ["train.zero_stage=2"]),
    "tiny_zero3": ("configs/tiny/base.yaml", ["train.zero_stage=3"]),
    "demo_zero0": ("configs/demo/base.yaml", ["train.zero_stage=0"]),
    "demo_zero2": ("configs/demo/base.yaml", ["train.zero_stage=2"]),
    "demo_zero3": ("configs/demo/base.yaml", ["train.zero_stage=3"]),
    "sr_crops": ("configs/tiny/sr32_crops.yaml", ["train.zero_stage=2"]),
}


def case_config(name: str, tmp: Path, steps: int, workers: int) -> Any:
    from imagen_ray.config import load_run_config

    path, extra = CASES[name]
    return load_run_config(
        ROOT / path,
        [
            *extra,
            f"train.steps={steps}",
            f"train.log_every={max(1, steps // 2)}",
            f"train.checkpoint_every={steps}",
            f"train.sample_every={10 * steps}",
            f"train.num_workers={workers}",
            "train.cpus_per_worker=1",
            "train.max_failures=0",
            "train.warmup_steps=1",
            f"train.storage_path={tmp}",
            f"train.name={name}",
            "wandb.mode=disabled",
        ],
    )


def check(name: str, tmp: Path, steps: int, workers: int, text_dim: int) -> dict[str, Any]:
    """Plan one case, run it, compare."""
    import dataclasses

    from imagen_ray.fs import tree_bytes
    from imagen_ray.plan.calibrate import calibrate
    from imagen_ray.plan.model import Hardware, plan_stage
    from imagen_ray.train.batches import random_batches
    from imagen_ray.train.launcher import build_trainer
    from imagen_ray.train.memory import ModelStateMemory

    cfg = case_config(name, tmp, steps, workers)
    # the run first, the plan after: Ray's own processes keep the CPUs busy for a while
    # after it starts, which the run's unmeasured first half absorbs and a short timing not
    log(f"{name}: training {steps} steps on {workers} workers")
    t0 = time.perf_counter()
    result = build_trainer(
        cfg, text_dim=text_dim, batches=random_batches, hooks=[ModelStateMemory()]
    ).fit()
    if result.error is not None:
        raise RuntimeError(f"{name}: the training run failed: {result.error}")
    wall = time.perf_counter() - t0
    m = dict(result.metrics or {})
    ranks = m["memory/model_state_bytes"]
    measured_state = max(sum(r[k] for k in PARTS) for r in ranks)
    log(f"{name}: timing the stage for the plan ({workers} processes)")
    step = calibrate(cfg, workers, text_dim)
    hw = dataclasses.replace(Hardware(gpu="cpu", ranks=workers), cpu_step_s=step)
    plan = plan_stage(cfg, hw, text_dim=text_dim)
    predicted_state = sum(plan.memory[k].value for k in PARTS) * 1e9
    ckpts = sorted(d for d in (tmp / name).glob("checkpoint_*") if d.is_dir())
    ckpt = tree_bytes(ckpts[-1]) if ckpts else None
    row = {
        "case": name,
        "config": CASES[name][0],
        "zero_stage": cfg.train.zero_stage,
        "params": int(plan.figures["params"].value),
        "samples_per_s": {
            "predicted": rnd(plan.figures["samples_per_s"].value),
            "measured": rnd(m["samples_per_s"]),
            "ratio": rnd(plan.figures["samples_per_s"].value / m["samples_per_s"]),
        },
        "model_state_bytes_per_rank": {
            "predicted": int(predicted_state),
            "measured": int(measured_state),
            "ratio": rnd(predicted_state / measured_state),
        },
        "checkpoint_bytes": {
            "predicted": int(plan.figures["checkpoint_gb"].value * 1e9),
            "measured": ckpt,
            "ratio": rnd(plan.figures["checkpoint_gb"].value * 1e9 / ckpt) if ckpt else None,
        },
        "timed_step_s": rnd(step.value),
        "train_wall_s": rnd(wall),
    }
    shutil.rmtree(tmp / name, ignore_errors=True)
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="imagen-ray-plan-"))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name in args.only or list(CASES):
            row = check(name, tmp, args.steps, args.workers, text_dim=384)
            print_json({"event": "case", **row})
            rows.append(row)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "event": "summary",
        "bench": "plan",
        "cases": rows,
        "workers": args.workers,
        "steps": args.steps,
        "machine": machine_info(),
        "loadavg_end": loadavg(),
        "elapsed_s": rnd(time.perf_counter() - t_start),
    }


def print_json(obj: dict[str, Any]) -> None:
    with contextlib.redirect_stdout(_STDOUT):
        emit(obj)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", nargs="+", choices=list(CASES), help="cases (default all)")
    p.add_argument("--steps", type=int, default=30, help="training steps per case (default 30)")
    p.add_argument("--workers", type=int, default=2, help="CPU workers (default 2)")
    p.add_argument(
        "--num-cpus", type=int, default=4, help="logical CPUs of the local Ray (default 4)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: tiny_zero2 only, 6 steps (not a figure)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.only, args.steps = args.only or ["tiny_zero2"], 6
    with contextlib.redirect_stdout(sys.stderr):
        summary = run(args)
    print_json(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
