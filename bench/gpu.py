"""GPU readiness benchmark: training samples/s, MFU and peak memory; sampling images/s.

Training: one process, one GPU, world size 1 (``torch.distributed`` on 127.0.0.1, no Ray), the
same pieces as a Ray Train worker: ``Stage``, ``build_deepspeed_config`` (ZeRO stage as asked,
bf16, fused AdamW on CUDA), ``TrainDevicePaths`` (autocast, channels_last) and ``TrainPerf``
(model FLOPs per sample counted once, MFU against the GPU's dense bf16 peak, peak memory).
For each model (~100M and ~500M parameter base stages, one SR stage trained on crops) and each
ZeRO stage it times ``--steps`` optimizer steps after ``--warmup`` and prints one JSON line.
On CUDA the attention runs with only the flash / memory-efficient / cuDNN SDPA kernels
allowed, so a layout that needed the slow math fallback fails loudly (``--any-attention``
lifts that).

Sampling: ``bench/gpu_sampling.py`` in bfloat16 at batch 1, 8 and 32 on the same stages.

Without a CUDA device it prints one line saying so and exits 0 (``--allow-cpu --quick``
runs a tiny version on the CPU, which the tests do).

    python bench/gpu.py                     # everything, on one GPU
    python bench/gpu.py --models 100m --zero 2 --no-sampling
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TEXT_DIM = 384  # MiniLM's token width: random embeddings of it, no encoder needed

# name -> (config, overrides); parameter counts measured on the meta device.
MODELS: dict[str, tuple[str, list[str]]] = {
    "100m": ("configs/small/base.yaml", []),  # 95.4M
    "500m": ("configs/small/base.yaml", ["stage.unet.channels=288", "stage.unet.head_dim=72"]),
    "sr256": ("configs/small/sr256_crops.yaml", []),  # 68.8M, 128 px crops
    # --quick (CPU smoke): the tiny stages
    "tiny": ("configs/tiny/base.yaml", ["stage.unet.channels=16", "text.max_length=8"]),
    "tiny-sr": ("configs/tiny/sr32_crops.yaml", ["stage.unet.channels=16", "text.max_length=8"]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["100m", "500m", "sr256"], choices=MODELS)
    p.add_argument("--zero", type=int, nargs="+", default=[2, 3], choices=[0, 1, 2, 3])
    p.add_argument("--batch", type=int, default=None, help="micro batch (default: config's)")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--sampling-batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--sampling-steps", type=int, default=16, help="sampler steps per image")
    p.add_argument("--no-sampling", action="store_true", help="training figures only")
    p.add_argument("--any-attention", action="store_true", help="allow SDPA's math fallback")
    p.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU")
    p.add_argument("--quick", action="store_true", help="CPU smoke: tiny stages, 2 steps")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batch, args.steps, args.warmup = ["tiny", "tiny-sr"], 2, 2, 1
        args.sampling_batches, args.sampling_steps = [1, 2], 2
    return args


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_single_process(backend: str) -> None:
    """World size 1 on 127.0.0.1, as DeepSpeed expects a process group."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
    )
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


@contextlib.contextmanager
def fast_attention_only(device_type: str, allow_math: bool) -> Iterator[None]:
    """On CUDA, SDPA may use flash, memory-efficient or cuDNN attention, not the math path."""
    if device_type != "cuda" or allow_math:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    ]
    with sdpa_kernel(backends):
        yield


def train_throughput(
    model: str, zero: int, args: argparse.Namespace, device: Any
) -> dict[str, Any]:
    """Samples/s, MFU and peak memory of ``args.steps`` bf16 optimizer steps of one stage."""
    import deepspeed
    import torch

    from imagen_ray.cascade import Stage
    from imagen_ray.config import load_run_config
    from imagen_ray.train.accel import TrainDevicePaths
    from imagen_ray.train.deepspeed_config import build_deepspeed_config
    from imagen_ray.train.perf import TrainPerf

    path, overrides = MODELS[model]
    cfg = load_run_config(
        ROOT / path,
        [
            *overrides,
            f"train.zero_stage={zero}",
            f"train.use_gpu={str(device.type == 'cuda').lower()}",
            "train.precision=bf16",
            "train.grad_accum=1",
            "train.num_workers=1",
            f"train.steps={args.warmup + args.steps + 2}",
            "train.warmup_steps=1",
            *([f"data.batch_size={args.batch}"] if args.batch else []),
        ],
    )
    paths = TrainDevicePaths.resolve(cfg.train, device.type)
    torch.manual_seed(0)
    stage = paths.prepare(Stage(cfg.stage, text_dim=TEXT_DIM))
    params = sum(p.numel() for p in stage.parameters())
    ds_config = build_deepspeed_config(cfg.train, cfg.data, world_size=1, device_type=device.type)
    engine, _, _, _ = deepspeed.initialize(
        model=stage, model_parameters=list(stage.parameters()), config=ds_config
    )
    perf = TrainPerf.for_run(cfg, TEXT_DIM, device)
    flops = perf.flops_per_sample  # counted before the timing
    b, side, n_tok = cfg.data.batch_size, cfg.data.train_crop or cfg.stage.size, cfg.text.max_length
    gen = torch.Generator(device=device).manual_seed(0)
    x0 = paths.image(torch.rand(b, 3, side, side) * 2 - 1, device)  # (B, 3, S, S)
    emb = paths.tokens(torch.randn(b, n_tok, TEXT_DIM), device)  # (B, L, D)
    mask = torch.ones(b, n_tok, dtype=torch.bool, device=device)  # (B, L)

    def step() -> float:
        loss = engine(x0, emb, mask, None, generator=gen).float().mean()  # autocast inside
        engine.backward(loss)
        engine.step()
        return float(loss.detach())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with fast_attention_only(device.type, args.any_attention):
        for _ in range(args.warmup):
            step()
        sync()
        perf.start_window()  # the peak of the steady state, not of the set-up
        t0 = time.perf_counter()
        losses = [step() for _ in range(args.steps)]
        sync()
    seconds = time.perf_counter() - t0
    m = perf.metrics(b * args.steps, seconds)
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    row = {
        "bench": "gpu_train",
        "model": model,
        "params_m": round(params / 1e6, 1),
        "size": side,
        "zero": zero,
        "micro_batch": b,
        "optimizer": f"{type(inner).__module__}.{type(inner).__name__}",
        "fused": bool(getattr(inner, "defaults", {}).get("fused")),
        "samples_per_s": round(b * args.steps / seconds, 3),
        "flops_per_sample": flops,
        "achieved_tflops": round(m["achieved_tflops"], 4),
        "mfu": round(m["mfu"], 4) if "mfu" in m else None,
        "peak_gib": round(m["gpu_mem_peak_gib"], 2) if "gpu_mem_peak_gib" in m else None,
        "loss_finite": all(math.isfinite(v) for v in losses),
    }
    engine.destroy()
    return row


def sampling(args: argparse.Namespace, device: Any) -> int:
    """``bench/gpu_sampling.py`` in bfloat16 on the benchmarked models' config files (as
    written: the 500m model's overrides are training-only, so it samples as the 100m)."""
    import gpu_sampling

    paths = sorted({MODELS[m][0] for m in args.models})
    argv = [a for p in paths for a in ("-c", str(ROOT / p))]
    argv += ["--dtypes", "bfloat16", "--text-dim", str(TEXT_DIM), "--reps", "1"]
    argv += ["--steps", str(args.sampling_steps), "--batches"]
    argv += [str(b) for b in args.sampling_batches]
    if device.type != "cuda":
        argv.append("--allow-cpu")
    with fast_attention_only(device.type, args.any_attention):
        return int(gpu_sampling.main(argv))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        emit({"bench": "gpu", "skipped": "no GPU (CUDA not available)"})
        print(
            "no GPU: nothing measured (run bench/gpu.py on a CUDA machine, or --allow-cpu)",
            file=sys.stderr,
        )
        return 0
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_single_process("nccl" if device.type == "cuda" else "gloo")
    import deepspeed

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    emit(
        {
            "bench": "gpu",
            "device": name,
            "torch": torch.__version__,
            "deepspeed": deepspeed.__version__,
        }
    )
    rows = []
    for model in args.models:
        for zero in args.zero:
            rows.append(train_throughput(model, zero, args, device))
            emit(rows[-1])
            if device.type == "cuda":  # the engine is gone with train_throughput's frame
                torch.cuda.empty_cache()
    emit(
        {
            "summary": {
                f"{r['model']}/zero{r['zero']}": {
                    k: r[k] for k in ("samples_per_s", "mfu", "peak_gib")
                }
                for r in rows
            }
        }
    )
    return 0 if args.no_sampling else sampling(args, device)


if __name__ == "__main__":
    sys.exit(main())
