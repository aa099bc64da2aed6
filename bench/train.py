#!/usr/bin/env python
"""Training benchmark: the real Ray Train + DeepSpeed path (``imagen_ray.train``).

Three sections, in ONE process and one local Ray cluster:

* ``zero_memory``: per-rank bytes of parameters, gradients and optimizer states at ZeRO 0, 2
  and 3 with 2 CPU workers, for the ~27M-parameter U-Net of configs/bench/unet27m.yaml.
  Measured inside each worker from the tensors the DeepSpeed engine and its ZeRO optimizer
  hold (``imagen_ray.train.memory.ModelStateMemory``, a step hook: each storage counted
  once), between ``backward`` and ``step`` of the second optimizer step, and reported with
  its ratio to ZeRO 0.
* ``optimizer_memory``: per-rank optimizer-state bytes of AdamW vs Adafactor at ZeRO 0, 1,
  2 and 3 with 2 CPU workers (configs/tiny/base.yaml unless ``--optimizer-config``), from
  the same hook. Adafactor's saving is its factored second moment (a row and a column
  vector per matrix); ZeRO 1-3 hand the optimizer flat 1-D partitions, where it cannot
  factor. Reported as ratios Adafactor / AdamW per ZeRO stage, and to AdamW at ZeRO 0.
* ``throughput``: training samples/s of the tiny base stage (configs/tiny/base.yaml) with
  2 workers (ZeRO-2, fp32) fed by (a) seeded in-memory tensors (``random_batches``), (b) the
  full Ray Data pipeline reading synthetic webdataset shards with precomputed text
  embeddings, (c) the same pipeline encoding captions with MiniLM on an actor pool. Same
  model, batch and steps; figures are the trainer's own metrics (``samples_per_s``,
  ``data_wait_frac``) over the second half of the steps (the first half warms up).
  Reported as ratios to (a).
* ``sr_crops``: an SR stage trained on random crops (``data.train_crop``) vs at its full
  size, same model, batch and steps (configs/tiny/sr64.yaml: 32 px crops of the 64 px stage,
  a quarter of the pixels; with CUDA configs/small/sr256_crops.yaml in bf16: 128 px crops of
  256 px). Samples/s (the trainer's, last half of the steps) and per-rank peak memory
  (``imagen_ray.train.memory.PeakMemory``: CUDA allocator peak, or peak RSS of the worker
  process on CPU, which includes the Python/torch runtime), fed by ``random_batches`` so the
  data pipeline does not weigh in; reported as crops / full ratios.
* ``gpu``: only with CUDA: samples/s and model FLOPs utilisation (MFU) of
  configs/small/base.yaml in bf16 on the visible GPUs (one worker per GPU, ``random_batches``).
  FLOPs per sample and the GPU's peak come from ``imagen_ray.train.perf`` (forward and
  backward counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta device), as
  in the training metrics. Without CUDA the section says why it was skipped.

Output: one JSON object per line on stdout (one per measured run, then the summary, always
last); progress on stderr. ``--quick`` is a smoke run (numbers not meaningful).
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

import torch

from imagen_ray.cli.args import add_overrides_argument
from imagen_ray.train.batches import random_batches
from imagen_ray.train.memory import ModelStateMemory, PeakMemory

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("WANDB_MODE", "disabled")  # no W&B runs from a benchmark

try:  # imported as bench.train (tests) or run as a script (python bench/train.py)
    from bench._common import emit, loadavg, log, machine_info, rnd
except ImportError:  # pragma: no cover - script mode: bench/ is sys.path[0]
    from _common import emit, loadavg, log, machine_info, rnd

ROOT = Path(__file__).resolve().parents[1]
_STDOUT = sys.stdout  # JSON only; run() sends everything else printed on stdout to stderr


def emit_json(obj: dict[str, Any]) -> None:
    """One JSON line on the real stdout (Ray prints raylet warnings on the driver's)."""
    with contextlib.redirect_stdout(_STDOUT):
        emit(obj)


MEMORY_CONFIG = ROOT / "configs" / "bench" / "unet27m.yaml"
THROUGHPUT_CONFIG = ROOT / "configs" / "tiny" / "base.yaml"
GPU_CONFIG = ROOT / "configs" / "small" / "base.yaml"
CROPS_CONFIG = ROOT / "configs" / "tiny" / "sr64.yaml"  # on CPU; 32 px crops by default
CROPS_GPU_CONFIG = ROOT / "configs" / "small" / "sr256_crops.yaml"  # with CUDA (128 px crops)
PARTS = ("params", "grads", "optimizer", "master_weights")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/train.py",
        description=(
            "Benchmark training on Ray Train + DeepSpeed: per-rank model-state memory at "
            "ZeRO 0/2/3 (2 workers), samples/s through the Ray Data pipeline vs in-memory "
            "tensors with the data-wait fraction, and (with CUDA) samples/s and MFU of the "
            "small base stage in bf16. JSON lines on stdout (summary last), progress on "
            "stderr."
        ),
        epilog="examples:\n  python bench/train.py\n  python bench/train.py --quick\n"
        "  python bench/train.py --only throughput --steps 80\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny work, numbers meaningless")
    p.add_argument(
        "--only",
        action="append",
        choices=["zero_memory", "optimizer_memory", "throughput", "sr_crops", "gpu"],
        help="run only these sections (repeatable; default all)",
    )
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    p.add_argument(
        "--num-cpus",
        type=float,
        default=4,
        help="logical CPUs of the local Ray cluster (default 4: more than a 2-core box has, "
        "so the data tasks schedule beside the workers)",
    )
    p.add_argument("--memory-config", default=str(MEMORY_CONFIG), help="zero_memory model")
    p.add_argument(
        "--memory-batch", type=int, default=2, help="zero_memory micro batch per worker (2)"
    )
    p.add_argument(
        "--optimizer-config", default=str(THROUGHPUT_CONFIG), help="optimizer_memory model"
    )
    p.add_argument("--throughput-config", default=str(THROUGHPUT_CONFIG), help="model")
    p.add_argument("--steps", type=int, default=None, help="throughput steps (default 40)")
    p.add_argument("--batch", type=int, default=8, help="throughput batch per worker (8)")
    p.add_argument(
        "--crops-config",
        default=None,
        help=f"sr_crops: the SR stage (default {CROPS_CONFIG.relative_to(ROOT)}, with CUDA "
        f"{CROPS_GPU_CONFIG.relative_to(ROOT)})",
    )
    p.add_argument(
        "--crop",
        type=int,
        default=None,
        help="sr_crops: crop side (default the config's data.train_crop, else half the size)",
    )
    p.add_argument("--crops-batch", type=int, default=8, help="sr_crops batch per worker (8)")
    p.add_argument("--gpu-config", default=str(GPU_CONFIG), help="gpu section model")
    p.add_argument("--gpu-batch", type=int, default=32, help="gpu batch per worker (32)")
    p.add_argument("--gpu-steps", type=int, default=None, help="gpu steps (default 40)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="peak bf16 TFLOP/s per GPU for MFU (default: from the device name)",
    )
    add_overrides_argument(p)  # applied to every run config
    p.add_argument("--keep", metavar="DIR", help="keep runs and shards here (default: temp)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers {args.workers}: need at least 1")
    args.steps = args.steps or (6 if args.quick else 40)
    args.gpu_steps = args.gpu_steps or (6 if args.quick else 40)
    if args.steps < 4 or args.steps % 2:
        p.error(f"--steps {args.steps}: need an even number >= 4 (half warm-up, half measured)")
    args.sections = args.only or [
        "zero_memory",
        "optimizer_memory",
        "throughput",
        "sr_crops",
        "gpu",
    ]
    return args


def run_config(path: str, overrides: list[str], extra: list[str]) -> Any:
    from imagen_ray.config import load_run_config

    return load_run_config(path, [*overrides, *extra])


def fit(cfg: Any, **kw: Any) -> dict[str, Any]:
    """One Ray Train run; the metrics of its last report (the last half of the steps)."""
    from imagen_ray.train.launcher import build_trainer

    t0 = time.perf_counter()
    result = build_trainer(cfg, **kw).fit()
    if result.error is not None:
        raise RuntimeError(f"training run {cfg.train.name} failed: {result.error}")
    metrics: dict[str, Any] = dict(result.metrics or {})
    metrics["wall_s"] = time.perf_counter() - t0
    return metrics


def common_train(tmp: Path, name: str, steps: int, workers: int) -> list[str]:
    return [
        f"train.steps={steps}",
        f"train.log_every={max(1, steps // 2)}",
        f"train.checkpoint_every={steps}",
        f"train.num_workers={workers}",
        # one restart: a worker lost on a crowded machine does not end the benchmark (the
        # measured window is the last half of the steps of the attempt that finishes)
        "train.max_failures=1",
        "train.warmup_steps=1",
        f"train.storage_path={tmp}",
        f"train.name={name}",
        "wandb.mode=disabled",
    ]


# --------------------------------------------------------------------------- sections


def stage_params(cfg: Any) -> int:
    """Parameters of the run's stage, counted on the meta device (no weights allocated)."""
    from imagen_ray.cascade import Stage
    from imagen_ray.text import text_dim
    from imagen_ray.unet import count_parameters

    with torch.device("meta"):
        return count_parameters(Stage(cfg.stage, text_dim=text_dim(cfg.text)))


def zero_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    stages = [0, 2, 3]
    per_stage: dict[str, Any] = {}
    params = None
    for z in stages:
        cfg = run_config(
            args.memory_config,
            args.overrides,
            [
                *common_train(tmp, f"zero{z}", 2, args.workers),
                f"train.zero_stage={z}",
                f"data.batch_size={args.memory_batch}",
            ],
        )
        if params is None:
            params = stage_params(cfg)
        log(f"zero_memory: ZeRO-{z}, {args.workers} workers, {params / 1e6:.1f}M parameters")
        m = fit(cfg, batches=random_batches, hooks=[ModelStateMemory()])
        ranks = m["memory/model_state_bytes"]
        for r in ranks:
            r["total"] = sum(r[k] for k in PARTS)
        per_stage[str(z)] = {
            "ranks": ranks,
            "max_rank": {k: max(r[k] for r in ranks) for k in (*PARTS, "total", "buffers")},
            "wall_s": rnd(m["wall_s"]),
        }
        emit_json({"event": "zero_memory", "zero_stage": z, **per_stage[str(z)]})
        shutil.rmtree(tmp / f"zero{z}", ignore_errors=True)  # 27M-param checkpoints
    base = per_stage["0"]["max_rank"]
    for z in stages:
        mx = per_stage[str(z)]["max_rank"]
        per_stage[str(z)]["ratio_to_zero0"] = {
            k: rnd(mx[k] / base[k]) if base[k] else None
            for k in ("params", "grads", "optimizer", "total")
        }
    return {
        "config": str(args.memory_config),
        "params": params,
        "workers": args.workers,
        "micro_batch": args.memory_batch,
        "precision": "fp32 (CPU)",
        "optimizer": "AdamW (torch_adam)",
        "measured": "tensors held by the engine/optimizer on each rank, each storage once, "
        "between backward and step of optimizer step 2; 'max_rank' is the larger rank; "
        "'master_weights' is the separate fp32 copy of the rank's partition that ZeRO 1/2 "
        "keep even in fp32 (0 at ZeRO 0 and at fp32 ZeRO-3, which step the parameters), in "
        "'total'; 'buffers' (ZeRO communication buckets etc.) is apart, not in 'total'",
        "expected": f"grads and optimizer fall to ~1/{args.workers} at ZeRO-2, and params "
        "too at ZeRO-3",
        "per_stage": per_stage,
    }


def optimizer_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    runs: dict[str, dict[str, Any]] = {}
    params = None
    for opt in ("adamw", "adafactor"):
        for z in (0, 1, 2, 3):
            name = f"{opt}_zero{z}"
            cfg = run_config(
                args.optimizer_config,
                args.overrides,
                [
                    *common_train(tmp, name, 2, args.workers),
                    f"train.optimizer={opt}",
                    f"train.zero_stage={z}",
                    f"data.batch_size={args.memory_batch}",
                ],
            )
            if params is None:
                params = stage_params(cfg)
            log(f"optimizer_memory: {opt}, ZeRO-{z}, {args.workers} workers")
            m = fit(cfg, batches=random_batches, hooks=[ModelStateMemory()])
            ranks = m["memory/model_state_bytes"]
            runs[name] = {
                "optimizer": max(r["optimizer"] for r in ranks),
                "master_weights": max(r["master_weights"] for r in ranks),
                "total": max(sum(r[k] for k in PARTS) for r in ranks),
            }
            emit_json({"event": "optimizer_memory", "run": name, **runs[name]})
            shutil.rmtree(tmp / name, ignore_errors=True)
    ref = runs["adamw_zero0"]["optimizer"]
    return {
        "config": str(args.optimizer_config),
        "params": params,
        "param_bytes_fp32": 4 * (params or 0),
        "workers": args.workers,
        "precision": "fp32 (CPU)",
        "measured": "bytes of the inner optimizer's states on the larger rank (Adam's two "
        "moments; Adafactor's row/column or full second moments), between backward and step "
        "of optimizer step 2; 'total' adds params, grads and the ZeRO 1/2 fp32 master copy",
        "runs": runs,
        "adafactor_over_adamw": {
            str(z): rnd(
                runs[f"adafactor_zero{z}"]["optimizer"] / runs[f"adamw_zero{z}"]["optimizer"]
            )
            for z in (0, 1, 2, 3)
        },
        "ratio_to_adamw_zero0": {k: rnd(v["optimizer"] / ref) for k, v in runs.items()},
    }


def write_shards(args: argparse.Namespace, cfg: Any, tmp: Path, samples: int) -> dict[str, Any]:
    """Synthetic shards at the stage's size, and a copy with precomputed embeddings."""
    from imagen_ray.data.precompute import encode_shards
    from imagen_ray.data.synthetic import write_synthetic
    from imagen_ray.data.synthetic_spec import SyntheticSpec

    per_shard = max(16, samples // 8)
    log(f"throughput: writing {samples} synthetic samples and encoding their captions")
    write_synthetic(
        SyntheticSpec(num_samples=samples, size=cfg.stage.size, samples_per_shard=per_shard),
        tmp / "raw",
        progress=False,
    )
    t0 = time.perf_counter()
    encode_shards(tmp / "raw", tmp / "encoded", cfg.text)
    return {
        "samples": samples,
        "samples_per_shard": per_shard,
        "encode_s": rnd(time.perf_counter() - t0),
    }


def throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base = [f"data.batch_size={args.batch}", "train.zero_stage=2"]
    probe = run_config(args.throughput_config, args.overrides, base)
    # one pass over the set covers the run: no epoch restart inside the measurement
    samples = args.steps * args.batch * args.workers + 8 * args.batch
    shards = write_shards(args, probe, tmp, samples)
    variants: dict[str, tuple[Any, list[str]]] = {  # batches (None: Ray Data), overrides
        "memory": (random_batches, []),
        "ray_precomputed": (None, [f"data.shards={tmp / 'encoded'}", "data.precomputed=true"]),
        "ray_encoder": (None, [f"data.shards={tmp / 'raw'}", "data.precomputed=false"]),
    }
    if args.quick:
        variants.pop("ray_encoder")
    out: dict[str, Any] = {}
    for name, (batches, extra) in variants.items():
        cfg = run_config(
            args.throughput_config,
            args.overrides,
            [*base, *common_train(tmp, name, args.steps, args.workers), *extra],
        )
        log(f"throughput: {name} ({args.steps} steps, {args.workers} x {args.batch})")
        try:
            m = fit(cfg, batches=batches)
        except Exception as e:  # report it and measure the other variants
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            emit_json({"event": "throughput", "variant": name, **out[name]})
            continue
        out[name] = {
            "samples_per_s": rnd(m["samples_per_s"]),
            "data_wait_frac": rnd(m["data_wait_frac"]),
            "loss": rnd(m["loss"]),
            "samples_decoded": m.get("data/ok"),
            "wall_s": rnd(m["wall_s"]),
        }
        emit_json({"event": "throughput", "variant": name, **out[name]})
    ref = out["memory"].get("samples_per_s")
    return {
        "config": str(args.throughput_config),
        "workers": args.workers,
        "batch_per_worker": args.batch,
        "steps": args.steps,
        "measured_steps": args.steps // 2,
        "zero_stage": 2,
        "shards": shards,
        "variants": out,
        "ratio_to_memory": {
            k: rnd(v["samples_per_s"] / ref)
            for k, v in out.items()
            if k != "memory" and ref and "samples_per_s" in v
        },
        "statistic": "the trainer's samples_per_s / data_wait_frac over the last "
        f"{args.steps // 2} steps of each run (one run per variant, run one after another)",
    }


def flops_per_sample(cfg: Any) -> int:
    """Training FLOPs of one sample: forward + backward counted on the meta device, as the
    training metrics count them (``imagen_ray.train.perf``)."""
    from imagen_ray.text import text_dim
    from imagen_ray.train.perf import count_flops_per_sample

    flops, _ = count_flops_per_sample(
        cfg.stage,
        text_dim(cfg.text),
        batch=1,
        side=cfg.data.train_crop or cfg.stage.size,
        text_len=cfg.text.max_length,
    )
    return int(flops)


def peak_flops(args: argparse.Namespace) -> tuple[float | None, str]:
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "--peak-tflops"
    from imagen_ray.train.perf import peak_tflops

    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name)  # the table the training metrics use
    if peak is None:
        return None, f"unknown device {name!r}: pass --peak-tflops"
    return peak * 1e12, f"dense bf16 peak of {name!r} (imagen_ray.train.perf)"


def sr_crops(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Samples/s and per-rank peak memory of an SR stage on crops vs at full size."""
    cuda = torch.cuda.is_available()
    path = args.crops_config or str(CROPS_GPU_CONFIG if cuda else CROPS_CONFIG)
    workers = torch.cuda.device_count() if cuda else args.workers
    device = ["train.use_gpu=true", "train.precision=bf16"] if cuda else []
    probe = run_config(path, args.overrides, ["data.train_crop=null"])
    crop = args.crop or run_config(path, args.overrides, []).data.train_crop
    crop = crop or probe.stage.size // 2
    out: dict[str, Any] = {}
    for name, value in (("full", "null"), ("crops", str(crop))):
        cfg = run_config(
            path,
            args.overrides,
            [
                *common_train(tmp, f"sr_{name}", args.steps, workers),
                *device,
                "train.zero_stage=2",
                f"data.batch_size={args.crops_batch}",
                f"data.train_crop={value}",
            ],
        )
        side = cfg.data.train_crop or cfg.stage.size
        log(f"sr_crops: {name} ({side} px, {args.steps} steps, {workers} x {args.crops_batch})")
        m = fit(cfg, batches=random_batches, hooks=[PeakMemory()])
        peak = m["memory/peak_bytes"]
        out[name] = {
            "image_px": side,
            "lowres_px": side * (cfg.stage.lowres_size or 0) // cfg.stage.size,
            "samples_per_s": rnd(m["samples_per_s"]),
            "peak_bytes_per_rank": peak,
            "peak_bytes_max_rank": max(peak),
            "wall_s": rnd(m["wall_s"]),
        }
        emit_json({"event": "sr_crops", "variant": name, **out[name]})
        shutil.rmtree(tmp / f"sr_{name}", ignore_errors=True)
    full, crops = out["full"], out["crops"]
    return {
        "config": path,
        "stage_size": probe.stage.size,
        "crop": crop,
        "pixel_ratio": rnd((crop / probe.stage.size) ** 2),
        "workers": workers,
        "batch_per_worker": args.crops_batch,
        "steps": args.steps,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (fp32)",
        "variants": out,
        "ratio_crops_to_full": {
            "samples_per_s": rnd(crops["samples_per_s"] / full["samples_per_s"]),
            "peak_bytes_max_rank": rnd(crops["peak_bytes_max_rank"] / full["peak_bytes_max_rank"]),
        },
        "statistic": f"samples_per_s over the last {args.steps // 2} steps; peak memory per "
        "rank: "
        + (
            "torch.cuda.max_memory_allocated"
            if cuda
            else "peak RSS of each worker process (runtime included: ratios understate the "
            "activation saving)"
        ),
    }


def gpu(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device (torch.cuda.is_available() is False)"}
    workers = torch.cuda.device_count()
    cfg = run_config(
        args.gpu_config,
        args.overrides,
        [
            *common_train(tmp, "gpu", args.gpu_steps, workers),
            "train.use_gpu=true",
            "train.precision=bf16",
            "train.zero_stage=2",
            f"data.batch_size={args.gpu_batch}",
        ],
    )
    flops = flops_per_sample(cfg)
    log(f"gpu: {workers} x {torch.cuda.get_device_name(0)}, {flops / 1e9:.1f} GFLOP/sample")
    m = fit(cfg, batches=random_batches)
    peak, peak_source = peak_flops(args)
    achieved = m["samples_per_s"] * flops
    return {
        "config": str(args.gpu_config),
        "device": torch.cuda.get_device_name(0),
        "workers": workers,
        "batch_per_worker": args.gpu_batch,
        "steps": args.gpu_steps,
        "precision": "bf16",
        "samples_per_s": rnd(m["samples_per_s"]),
        "data_wait_frac": rnd(m["data_wait_frac"]),
        "flops_per_sample": flops,
        "achieved_tflops": rnd(achieved / 1e12),
        "peak_tflops_per_gpu": rnd(peak / 1e12) if peak else None,
        "peak_source": peak_source,
        "mfu": rnd(achieved / (peak * workers)) if peak else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    t_start = time.perf_counter()
    machine = machine_info()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="imagen-ray-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    sections: dict[str, Any] = {}
    try:
        for name, fn in (
            ("zero_memory", zero_memory),
            ("optimizer_memory", optimizer_memory),
            ("throughput", throughput),
            ("sr_crops", sr_crops),
            ("gpu", gpu),
        ):
            if name in args.sections:
                sections[name] = fn(args, tmp)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "event": "summary",
        "bench": "train",
        "quick": bool(args.quick),
        **sections,
        "machine": machine,
        "loadavg_end": loadavg(),
        "elapsed_s": rnd(time.perf_counter() - t_start),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        summary = run(args)
    emit_json(summary)  # always the last line on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
