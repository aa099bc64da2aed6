"""``imagen-ray plan``: how long, how much, how many CPUs and how big, before a run starts."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from imagen_ray.cli.args import add_overrides_argument

EXAMPLES = """\
examples:
  # the paper's base recipe (2.5M steps at batch 2048) on 64 H100s in 8 nodes
  imagen-ray plan -c configs/paper/base.yaml --gpus 64 --gpu h100
  # the whole cascade, with a quoted price, as JSON
  imagen-ray plan -c configs/paper/base.yaml -c configs/paper/sr256.yaml \\
      -c configs/paper/sr1024.yaml --gpus 64 --price-per-gpu-hour 2.10 --json
  # this machine's CPU workers, timed here (what `imagen-ray train` would do)
  imagen-ray plan -c configs/tiny/base.yaml --gpu cpu

Every figure is labelled: counted (from the model's shapes or DeepSpeed's tensors),
measured (with the command and date), datasheet, or assumed (a flag overrides it).
"""


def register(sub: Any) -> None:
    """Add ``plan``."""
    from imagen_ray.plan.figures import GPUS

    p = sub.add_parser(
        "plan",
        help="capacity and cost of training each stage: time, memory per rank, data CPUs, "
        "checkpoints, GPU-hours",
        description="Plan one training run per stage from its run config: FLOPs per sample "
        "and step time, memory per rank at the configured ZeRO stage (refused, with the fix, "
        "when a rank does not fit), samples/s and time to train.steps, data-loading CPUs, "
        "the text encoder's cost, checkpoint size and upload time, GPU-hours and cost. The "
        "config's global batch (micro batch x grad_accum x num_workers) is kept on any "
        "number of GPUs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config", "-c", action="append", required=True, metavar="YAML",
        help="a stage's run config (repeat for each stage of a cascade)",
    )  # fmt: skip
    add_overrides_argument(p)
    p.add_argument(
        "--gpus", type=int, default=None,
        help="data-parallel ranks (default: train.num_workers of each config)",
    )  # fmt: skip
    p.add_argument(
        "--gpu", choices=[*GPUS, "cpu"], default=None,
        help="accelerator (default: h100 when train.use_gpu, else cpu: CPU workers timed on "
        "this machine)",
    )  # fmt: skip
    p.add_argument(
        "--nodes", type=int, default=None,
        help="machines the GPUs spread over (default: 8 GPUs per node)",
    )  # fmt: skip
    p.add_argument("--price-per-gpu-hour", type=float, default=None, metavar="USD")
    p.add_argument(
        "--mfu", type=float, default=None,
        help="model FLOPs utilisation to assume on the GPU (default 0.40: assumed)",
    )  # fmt: skip
    p.add_argument("--upload-gbps", type=float, default=None, metavar="GB/S",
                   help="checkpoint upload bandwidth (default 1 GB/s: assumed)")  # fmt: skip
    p.add_argument("--node-link-gbps", type=float, default=None, metavar="GB/S",
                   help="bandwidth per GPU between nodes (default 50 GB/s: assumed)")  # fmt: skip
    p.add_argument(
        "--source-size", type=int, default=512, metavar="PX",
        help="short side of the source images the loaders decode (default 512)",
    )  # fmt: skip
    p.add_argument("--source-format", choices=["jpg", "webp"], default="jpg")
    p.add_argument("--json", action="store_true", help="one JSON object per stage, then totals")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    """``imagen-ray plan``."""
    from imagen_ray.cli.args import positive
    from imagen_ray.config import load_run_config
    from imagen_ray.plan.model import Hardware, batch_split, plan_stage
    from imagen_ray.text import text_dim

    for name in ("gpus", "nodes", "source_size"):
        if getattr(args, name) is not None:
            positive("--" + name.replace("_", "-"), getattr(args, name))
    for name in ("mfu", "price_per_gpu_hour", "upload_gbps", "node_link_gbps"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be a positive number, got {value:g}")
    if args.mfu is not None and args.mfu > 1:
        raise ValueError(f"--mfu is a fraction of the peak (0-1], got {args.mfu:g}")
    plans = []
    for path in args.config:
        cfg = load_run_config(path, args.overrides)
        gpu = args.gpu or ("h100" if cfg.train.use_gpu else "cpu")
        ranks = args.gpus or cfg.train.num_workers
        nodes = args.nodes or (1 if gpu == "cpu" else math.ceil(ranks / 8))
        dim = cfg.text.dim or text_dim(cfg.text)
        hw = Hardware(
            gpu=gpu, ranks=ranks, nodes=nodes, mfu=args.mfu,
            price_per_hour=args.price_per_gpu_hour, upload_gbps=args.upload_gbps,
            node_link_gbps=args.node_link_gbps, source_size=args.source_size,
            source_format=args.source_format,
        )  # fmt: skip
        if gpu == "cpu":
            batch_split(cfg, ranks)  # refused before minutes of timing
            if cfg.train.use_gpu:  # as CPU workers train it: fp32, nothing offloaded
                update = {"use_gpu": False, "offload_optimizer": False, "offload_params": False}
                cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})
            hw = _with_cpu_figures(hw, cfg, dim)
        plan = plan_stage(cfg, hw, text_dim=dim)
        plans.append(plan)
        print(json.dumps(plan.as_dict()) if args.json else _render(plan, hw), flush=True)
    if len(plans) > 1 or args.json:
        totals = _totals(plans)
        print(json.dumps({"totals": totals}) if args.json else _render_totals(totals))
    return 0


def _with_cpu_figures(hw: Any, cfg: Any, dim: int) -> Any:
    """The hardware with this machine's step and sync times and its memory per worker."""
    import dataclasses
    import sys

    import psutil

    from imagen_ray.plan.calibrate import calibrate

    print(f"timing stage {cfg.stage.name!r} on this machine ({hw.ranks} workers)…", file=sys.stderr)
    try:
        step = calibrate(cfg, hw.ranks, dim)
    except RuntimeError as e:  # printed as the command's error, not a traceback
        raise ValueError(str(e)) from None
    host = psutil.virtual_memory().total / 1e9 / hw.ranks
    return dataclasses.replace(hw, cpu_step_s=step, host_memory_gb=host)


ORDER = (
    "params", "flops_per_sample", "mfu", "compute_s_per_step", "sync_s_per_step", "step_s",
    "samples_per_s", "train_hours", "data_cpus", "encoder_flops_per_sample",
    "encoder_share_on_the_fly", "encoder_gpu_hours_on_the_fly",
    "encoder_gpu_hours_per_100m_encoded_once", "checkpoint_gb", "checkpoint_upload_s", "gpu_hours",
    "price_per_gpu_hour", "cost_usd",
)  # fmt: skip


def _fmt(value: float, unit: str) -> str:
    if unit == "FLOP":
        return f"{value / 1e9:,.4g} GFLOP" if value < 1e12 else f"{value / 1e12:,.4g} TFLOP"
    if unit == "parameters":
        return f"{value / 1e6:,.4g}M" if value < 1e9 else f"{value / 1e9:,.4g}B"
    if unit == "h" and value > 48:
        return f"{value:,.0f} h ({value / 24:,.1f} days)"
    if unit == "USD":
        return f"${value:,.0f}"
    return f"{value:,.4g} {unit}"


def _render(plan: Any, hw: Any) -> str:
    where = "CPU workers" if hw.gpu == "cpu" else f"{hw.gpu} ({hw.nodes} node(s))"
    lines = [
        f"stage {plan.stage}: {plan.ranks} x {where}, micro batch {plan.micro_batch} x "
        f"grad_accum {plan.grad_accum} x {plan.ranks} ranks = "
        f"{plan.micro_batch * plan.grad_accum * plan.ranks} per step"
    ]
    for key in ORDER:
        fig = plan.figures.get(key)
        if fig is not None:
            lines.append(f"  {key:<26} {_fmt(fig.value, fig.unit):<24} {fig.source:<9} {fig.how}")
    lines.append("  memory per rank:")
    for key, fig in plan.memory.items():
        lines.append(f"    {key:<34} {_fmt(fig.value, fig.unit):<16} {fig.source:<9} {fig.how}")
    lines += [f"  note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _totals(plans: list[Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("train_hours", "gpu_hours", "cost_usd", "checkpoint_gb"):
        vals = [p.figures[key].value for p in plans if key in p.figures]
        if vals:
            out[key] = sum(vals)
    return out


def _render_totals(totals: dict[str, float]) -> str:
    units = {"train_hours": "h", "gpu_hours": "GPU-h", "cost_usd": "USD", "checkpoint_gb": "GB"}
    parts = [f"{k} {_fmt(v, units[k])}" for k, v in totals.items()]
    return "all stages, one after another: " + ", ".join(parts)
