#!/usr/bin/env python
"""Serving benchmark: requests/s and p50/p99 latency of the tiny cascade behind Ray Serve,
with dynamic batching on vs off, at client concurrency 1, 4 and 16, on CPU.

Both variants are deployed at once in ONE Ray Serve instance (routes ``/on`` and ``/off``;
the same cascade, config and replicas; "off" is ``max_batch_size: 1`` on the encoder and
every stage) and measured alternately, per round and concurrency: on, off. Each measurement
is a closed loop: C client threads each send ``--requests-per-client`` requests back to back
(``POST /v1/generate``, one prompt, its own seed, the whole cascade with the steps given by
``--steps``). Reported per variant and concurrency: requests/s (requests / wall time), p50
and p99 latency (over all rounds' requests), and the batch sizes the stage replicas formed;
the summary gives the ratios on/off and the targets (batching on at concurrency 16 gives
>= 2x the requests/s of batching off; p99 < 3x p50).

Output: one JSON object per line on stdout (one per measurement, then the summary, always
last); progress on stderr. Before serving, it measures in-process what batching can give at
most on this machine (``batching_ceiling_in_process``: per-image time of each stage at batch 1
vs batch max-concurrency, one torch thread). ``--quick`` is a smoke run (numbers not
meaningful). ``--soak`` runs the soak instead (:mod:`bench._soak`: 32 clients, valid and
invalid requests, status counts, latency, memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

try:  # imported as bench.serve (tests) or run as a script (python bench/serve.py)
    from bench._common import emit, loadavg, log, machine_info, rnd
except ImportError:  # pragma: no cover - script mode: bench/ is sys.path[0]
    from _common import emit, loadavg, log, machine_info, rnd

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "configs" / "tiny" / "serve.yaml"
CASCADE_CONFIG = ROOT / "configs" / "tiny" / "cascade.yaml"
VARIANTS = ("on", "off")
TARGET_SPEEDUP = 2.0
TARGET_TAIL = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from imagen_ray.cli.args import add_overrides_argument

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cascade", help="saved cascade (default: a random tiny one in a temp dir)")
    p.add_argument("--config", default=str(SERVE_CONFIG), help="serve config (serve: section)")
    add_overrides_argument(
        p,
        help="serve config override, applied to both variants (repeatable): "
        "--set serve.stage_defaults.batch_wait_timeout_s=0.05",
    )
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client threads")
    p.add_argument(
        "--requests-per-client", type=int, default=3, help="requests per client per round"
    )
    p.add_argument("--rounds", type=int, default=2, help="on/off rounds per concurrency")
    p.add_argument(
        "--steps",
        nargs="+",
        default=["base=4", "sr64=2"],
        metavar="STAGE=N",
        help="sampler steps per stage in every request (default base=4 sr64=2)",
    )
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the in-process measurement of what batching can give at most",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, concurrency 1 4")
    p.add_argument(
        "--soak",
        action="store_true",
        help="instead of the batching benchmark: the soak (bench/_soak.py): valid requests "
        "mixed with every kind of invalid one, auth on; 0 x 5xx for valid, a 4xx for each "
        "invalid, p50/p99 latency, Serve processes' RSS at start vs end",
    )
    p.add_argument("--soak-requests", type=int, default=640, help="requests in the soak")
    p.add_argument("--soak-clients", type=int, default=32, help="concurrent soak clients")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="with --soak: run for this long instead of --soak-requests, sampling the Serve "
        "processes' RSS every --sample-every seconds (warm-up: the first 30 %%)",
    )
    p.add_argument("--sample-every", type=float, default=30.0, help="RSS sampling period (s)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.concurrency, args.requests_per_client = 1, [1, 4], 1
    return args


def make_cascade(out: Path) -> Path:
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    return Cascade.from_config(load_cascade_config(CASCADE_CONFIG), seed=0).save(out)


def deploy(args: argparse.Namespace, cascade: str) -> dict[str, Any]:
    """Both variants as two applications of one Serve instance; returns their configs."""
    from ray import serve

    from imagen_ray.config import load_serve_config
    from imagen_ray.serve.app import build_application

    cfgs = {}
    for variant in VARIANTS:
        extra = [f"serve.app_name=bench-{variant}", f"serve.route_prefix=/{variant}"]
        if variant == "off":
            extra += ["serve.encoder.max_batch_size=1", "serve.stage_defaults.max_batch_size=1"]
        cfg = load_serve_config(args.config, [*args.overrides, *extra], cascade=cascade)
        cfgs[variant] = cfg
        log(f"deploying variant {variant!r} at /{variant}")
        serve.run(build_application(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    return cfgs


def measure(
    url: str, concurrency: int, per_client: int, steps: dict[str, int], seed0: int
) -> tuple[float, list[float]]:
    """C closed-loop clients; returns (wall seconds, per-request latencies)."""
    import requests

    stages = {name: {"steps": n} for name, n in steps.items()}
    latencies: list[float] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with requests.Session() as s:
            for k in range(per_client):
                body = {"prompts": f"a red circle {c} {k}", "seed": seed0 + c * 1000 + k}
                t0 = time.perf_counter()
                r = s.post(url, json={**body, "stages": stages}, timeout=600)
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:300]}")
                with lock:
                    latencies.append(dt)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    return time.perf_counter() - t0, latencies


def batching_ceiling(cascade: str, steps: dict[str, int], batch: int, reps: int) -> dict[str, Any]:
    """What batching can give at most here: in this process, on one torch thread (as the
    replicas run), per-image time of ``Stage.sample`` at batch 1 and at ``batch``, measured
    alternately ``reps`` times (medians). Serving cannot beat this ratio by batching."""
    import torch

    from imagen_ray.cascade import Cascade, stage_generators

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        c = Cascade.load(cascade)
        dev = torch.device("cpu")
        for i, stage in enumerate(c.stage_list):
            s = stage.cfg.sampling.model_copy(update={"steps": steps.get(stage.cfg.name, 4)})
            per_image: dict[int, list[float]] = {1: [], batch: []}
            for _ in range(reps + 1):  # the first repetition is a warm-up
                for b in (1, batch):
                    emb = torch.randn(b, 24, stage.text_dim)  # (B, L, D)
                    mask = torch.ones(b, 24, dtype=torch.bool)
                    low = (
                        torch.rand(b, 3, stage.cfg.lowres_size, stage.cfg.lowres_size) * 2 - 1
                        if stage.cfg.is_sr and stage.cfg.lowres_size
                        else None
                    )
                    gens = stage_generators(list(range(b)), i, dev)
                    t0 = time.perf_counter()
                    stage.sample(emb, mask, lowres=low, sampling=s, generator=gens)
                    per_image[b].append((time.perf_counter() - t0) / b)
            m1 = float(np.median(per_image[1][1:]))
            mb = float(np.median(per_image[batch][1:]))
            out[stage.cfg.name] = {
                "ms_per_image_batch_1": rnd(m1 * 1e3),
                f"ms_per_image_batch_{batch}": rnd(mb * 1e3),
                "ratio": rnd(m1 / mb),
            }
            log(
                f"ceiling {stage.cfg.name}: batch 1 {m1 * 1e3:.0f} ms/img, batch {batch} "
                f"{mb * 1e3:.0f} ms/img, ratio {m1 / mb:.2f}"
            )
    finally:
        torch.set_num_threads(threads)
    return out


def stage_batches(base_url: str) -> dict[str, Any]:
    import requests

    stats = requests.get(f"{base_url}/v1/stats", timeout=60).json()
    return {name: s["batches"] for name, s in stats["stages"].items()} | {
        "encoder": stats["encoder"]["batches"]
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray
    from ray import serve

    t_start = time.perf_counter()
    machine = machine_info()
    steps = {k: int(v) for k, v in (s.split("=", 1) for s in args.steps)}
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    cascade = args.cascade or str(make_cascade(Path(tmp.name) / "tiny"))
    ceiling = None
    if not args.no_ceiling:
        reps = 1 if args.quick else 3
        ceiling = batching_ceiling(cascade, steps, max(args.concurrency), reps)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        from imagen_ray.serve.app import free_port, port_in_use

        if port_in_use("127.0.0.1", args.port):  # Serve would share it (SO_REUSEPORT)
            busy, args.port = args.port, free_port()
            log(f"port {busy} is in use by another server; using {args.port}")
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        cfgs = deploy(args, cascade)
        base = f"http://127.0.0.1:{args.port}"
        for variant in VARIANTS:  # warm-up: first calls load lazily initialised kernels
            measure(f"{base}/{variant}/v1/generate", 2, 1, steps, seed0=0)
        results: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in VARIANTS}
        for c in args.concurrency:
            for rnd_i in range(args.rounds):
                for variant in VARIANTS:
                    url = f"{base}/{variant}/v1/generate"
                    wall, lat = measure(url, c, args.requests_per_client, steps, seed0=rnd_i)
                    acc = results[variant].setdefault(c, {"wall": 0.0, "lat": []})
                    acc["wall"] += wall
                    acc["lat"] += lat
                    row = {
                        "variant": variant,
                        "concurrency": c,
                        "round": rnd_i,
                        "requests": len(lat),
                        "requests_per_s": rnd(len(lat) / wall),
                        "p50_s": rnd(float(np.percentile(lat, 50))),
                        "p99_s": rnd(float(np.percentile(lat, 99))),
                        "loadavg": loadavg(),
                    }
                    emit(row)
                    log(
                        f"{variant:3s} c={c:2d} round {rnd_i}: {row['requests_per_s']} req/s, "
                        f"p50 {row['p50_s']} s, p99 {row['p99_s']} s"
                    )
        batches = {v: stage_batches(f"{base}/{v}") for v in VARIANTS}
    finally:
        # ray.shutdown() ends a local cluster's Serve too (see imagen_ray.serve.app.stop_app)
        ray.shutdown()
        tmp.cleanup()

    table: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
    for v in VARIANTS:
        for c, acc in results[v].items():
            lat = acc["lat"]
            p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
            table[v][str(c)] = {
                "requests": len(lat),
                "requests_per_s": rnd(len(lat) / acc["wall"]),
                "p50_s": rnd(p50),
                "p99_s": rnd(p99),
                "p99_over_p50": rnd(p99 / p50),
            }
    ratios = {
        str(c): rnd(table["on"][str(c)]["requests_per_s"] / table["off"][str(c)]["requests_per_s"])
        for c in args.concurrency
    }
    top = str(max(args.concurrency))
    on_cfg = cfgs["on"]
    summary: dict[str, Any] = {
        "bench": "serve",
        "quick": args.quick,
        "workload": {
            "cascade": "random tiny cascade (configs/tiny/cascade.yaml: 32 px base -> 64 px SR)"
            if not args.cascade
            else args.cascade,
            "steps": steps,
            "request": "one prompt, whole cascade, PNG, own seed",
            "concurrency": args.concurrency,
            "requests_per_client_per_round": args.requests_per_client,
            "rounds": args.rounds,
            "order": "per concurrency and round: on, off (closed-loop clients)",
            "ray_num_cpus": args.num_cpus,
            "port": args.port,
        },
        "variants": {
            "on": {
                "encoder_max_batch_size": on_cfg.encoder.max_batch_size,
                "stage_max_batch_size": on_cfg.stage_defaults.max_batch_size,
                "batch_wait_timeout_s": on_cfg.stage_defaults.batch_wait_timeout_s,
                "torch_threads": on_cfg.stage_defaults.torch_threads,
            },
            "off": {"encoder_max_batch_size": 1, "stage_max_batch_size": 1},
        },
        "machine": machine,
        "results": table,
        "ratio_on_over_off_requests_per_s": ratios,
        "batch_sizes_formed": batches,
        "batching_ceiling_in_process": ceiling,
        "target": {
            "speedup_at_top_concurrency": TARGET_SPEEDUP,
            "speedup_met": (ratios[top] or 0) >= TARGET_SPEEDUP,
            "tail_p99_over_p50_max": TARGET_TAIL,
            "tail_met": (table["on"][top]["p99_over_p50"] or 0) < TARGET_TAIL,
        },
        "loadavg_end": loadavg(),
        "elapsed_s": rnd(time.perf_counter() - t_start),
    }
    return summary


def soak(args: argparse.Namespace) -> dict[str, Any]:
    """The soak (``--soak``) on the given or a random tiny cascade."""
    try:
        from bench._soak import run_soak
    except ImportError:  # pragma: no cover - script mode
        from _soak import run_soak

    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        cascade = args.cascade or str(make_cascade(Path(tmp) / "tiny"))
        out = run_soak(
            cascade,
            args.config,
            list(args.overrides),
            args.port,
            args.soak_requests,
            args.soak_clients,
            args.num_cpus,
            log,
            minutes=args.minutes,
            sample_every_s=args.sample_every,
        )
    return {"machine": machine_info(), **out}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    emit(soak(args) if args.soak else run(args))  # always the last line on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
