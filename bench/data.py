"""Benchmark of the Ray Data pipeline: throughput, reader comparison, memory.

Prints JSON lines on stdout (the last line is the summary), progress on stderr:

* ``pipeline``      read_shards -> decode_filter_resize to 64 px (no text encoding), Ray;
* ``pipeline_2tasks`` the same with at most 2 read and 2 decode tasks at once
  (``data.read_tasks`` / ``data.map_tasks``): every task is a worker process, and with
  0.25 CPU per task Ray otherwise starts 4 per CPU;
* ``pipeline_text`` the same plus the MiniLM text encoder (one actor);
* ``wds_loop``      a plain single-process ``webdataset.WebDataset`` loop doing the same
  decode + resize with PIL (no Ray);
* ``ray_wds``       ``ray.data.read_webdataset(decoder=None)`` + the same map, to compare
  readers on identical work;
* ``flat_memory``   ``pipeline`` over the shards once and listed 10 times: peak memory of
  the driver and of Ray's worker processes should not grow with the data (it streams);
* ``encode_writers_1`` / ``encode_writers_N`` ``imagen-ray data encode`` (MiniLM, one
  encoder actor) of the same shards with one shard task at a time vs ``--writers`` N, and
  their ratio (``--encode-only`` runs just these).

The shards are generated into a temp dir (``--samples`` images of ~128-192 px, JPEG).
Configurations are run in alternating rounds (``--rounds``); each reports the best and
median samples/s, and samples per CPU-second summed over the driver and every process of
its Ray cluster (on a shared machine wall time depends on the neighbours; CPU time much
less). Memory is sampled every 0.2 s: driver RSS, and the summed RSS of Ray
cluster's processes (the driver's descendants: raylet, GCS, workers; shared object-store
pages count in every process that touches them, so this over-counts).

    python bench/data.py            # full run (~4-6 min on 2 cores)
    python bench/data.py --quick    # smoke run (< 60 s)
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import psutil
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, loadavg, log, machine_info, median, rnd

SIZE = 64


def make_shards(out: Path, n: int, per_shard: int, seed: int = 0) -> list[str]:
    """``n`` synthetic JPEGs (gradient, shapes, mild noise; 128-192 px) with captions."""
    from webdataset import ShardWriter

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    words = ["red", "green", "blue", "yellow", "large", "small", "circle", "square", "left"]
    with ShardWriter(str(out / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(n):
            width, height = int(rng.integers(128, 193)), int(rng.integers(128, 161))
            y, x = np.mgrid[0:height, 0:width]
            img = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
            for _ in range(3):
                x0, y0 = int(rng.integers(0, width - 32)), int(rng.integers(0, height - 32))
                img[y0 : y0 + 32, x0 : x0 + 32] = rng.integers(0, 256, 3)
            img = np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=90)
            caption = " ".join(rng.choice(words, size=int(rng.integers(3, 9))))
            w.write({"__key__": f"b{i:07d}", "jpg": buf.getvalue(), "txt": caption})
    return sorted(str(p) for p in out.glob("*.tar"))


# ---------------------------------------------------------------------------- memory


def _cluster_processes() -> list[psutil.Process]:
    """This driver's local Ray cluster: raylet, GCS, workers (all descendants of the driver;
    other Ray clusters on the machine are not counted)."""
    with suppress(psutil.Error):
        return psutil.Process().children(recursive=True)
    return []


def _cpu_seconds() -> dict[int, float]:
    """user + system CPU seconds of the driver and each process of its Ray cluster."""
    out = {}
    for p in [psutil.Process(), *_cluster_processes()]:
        with suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


class ResourceSampler:
    """Peak memory (sampled in a thread) and CPU seconds used by the driver and its cluster.

    CPU seconds make runs comparable on a shared machine: wall time there depends on what
    else runs, CPU time per sample much less.
    """

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s = period_s
        self.driver = psutil.Process()
        self.peak_driver = 0
        self.peak_workers = 0
        self.peak_process = 0
        self.max_processes = 0
        self.cpu_s = 0.0
        self._cpu0: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.peak_driver = max(self.peak_driver, self.driver.memory_info().rss)
        rss = []
        procs = _cluster_processes()
        for p in procs:
            with suppress(psutil.Error):  # a worker may exit between listing and reading
                rss.append(p.memory_info().rss)
        self.peak_workers = max(self.peak_workers, sum(rss))
        self.peak_process = max(self.peak_process, max(rss, default=0))
        self.max_processes = max(self.max_processes, len(procs))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period_s)

    def __enter__(self) -> ResourceSampler:
        self._cpu0 = _cpu_seconds()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        cpu1 = _cpu_seconds()
        self.cpu_s = sum(t - self._cpu0.get(pid, 0.0) for pid, t in cpu1.items())

    def report(self) -> dict[str, float | int | None]:
        return {
            "cpu_s": rnd(self.cpu_s),
            "driver_peak_rss_mb": rnd(self.peak_driver / 2**20),
            "cluster_peak_rss_mb": rnd(self.peak_workers / 2**20),
            "largest_process_peak_rss_mb": rnd(self.peak_process / 2**20),
            "cluster_processes": self.max_processes,
        }


@contextmanager
def measured(name: str, samples: int) -> Iterator[dict[str, Any]]:
    """Time a block and sample memory and CPU; fills the dict with samples/s and peaks."""
    result: dict[str, Any] = {"config": name}
    sampler = ResourceSampler()
    t0 = time.perf_counter()
    with sampler:
        yield result
    seconds = time.perf_counter() - t0
    rows = result.get("rows", samples)
    result.update(
        seconds=rnd(seconds),
        samples_per_s=rnd(rows / seconds),
        samples_per_cpu_s=rnd(rows / sampler.cpu_s) if sampler.cpu_s > 0 else None,
        **sampler.report(),
        loadavg=loadavg(),
    )


# ---------------------------------------------------------------------------- configs


def run_cfg(shards: list[str], *, text_len: int = 32, tasks: int | None = None) -> Any:
    from imagen_ray.config import RunConfig

    data = {"shards": shards, "batch_size": 64, "precomputed": False}
    return RunConfig.model_validate(
        {
            "text": {"name": "minilm", "max_length": text_len},
            "stage": {"name": "base", "size": SIZE},
            "data": data | {"read_tasks": tasks, "map_tasks": tasks},
        }
    )


def count_rows(ds: Any) -> int:
    n = 0
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        n += len(batch["image"])
    return n


def bench_pipeline(shards: list[str], stats: Any = None, tasks: int | None = None) -> int:
    """(a) the real pipeline without text: read_shards -> decode_filter_resize."""
    from imagen_ray.data.pipeline import build_dataset

    ds, _ = build_dataset(run_cfg(shards, tasks=tasks), text=False, stats=stats)
    return count_rows(ds)


def bench_pipeline_text(shards: list[str], stats: Any = None) -> int:
    """(b) the real pipeline with the MiniLM encoder on one actor."""
    from imagen_ray.data.pipeline import build_dataset

    ds, _ = build_dataset(run_cfg(shards), stats=stats)
    n = 0
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        n += len(batch["emb"])
    return n


def bench_wds_loop(shards: list[str]) -> int:
    """(c) one process: webdataset.WebDataset + PIL decode, draft, resize, crop."""
    import webdataset as wds

    from imagen_ray.data.decode import resize_crop

    n = 0
    for _key, raw, caption in wds.WebDataset(
        shards, shardshuffle=False, empty_check=False
    ).to_tuple("__key__", "jpg", "txt"):
        img = Image.open(io.BytesIO(raw))
        img.draft("RGB", (SIZE, SIZE))
        arr = np.asarray(resize_crop(img.convert("RGB"), SIZE), dtype=np.uint8)
        assert arr.shape == (SIZE, SIZE, 3) and caption
        n += 1
    return n


def bench_ray_wds(shards: list[str]) -> int:
    """(d) ray.data.read_webdataset (raw bytes) + the same decode_filter_resize map."""
    import ray

    from imagen_ray.data.decode import decode_filter_resize

    cfg = run_cfg(shards)
    ds = ray.data.read_webdataset(shards, decoder=None, num_cpus=0.25).map_batches(
        decode_filter_resize,
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=0.25,
        fn_kwargs={
            "data_cfg": cfg.data.model_dump(),
            "stage_cfg": cfg.stage.model_dump(),
            "columns": ["image"],
        },
    )
    return count_rows(ds)


def bench_read_only(shards: list[str], reader: str) -> int:
    """Reader alone: rows of raw bytes through the object store, no decoding."""
    import ray

    from imagen_ray.data.reader import read_shards

    if reader == "read_shards":
        ds = read_shards(shards)
    else:
        ds = ray.data.read_webdataset(shards, decoder=None, num_cpus=0.25)
    n = 0
    for batch in ds.iter_batches(batch_size=256, batch_format="pyarrow"):
        n += batch.num_rows
    return n


# ---------------------------------------------------------------------------- main


def bench_encode(shards: list[str], tmp: Path, writers: int) -> dict[str, Any]:
    """``encode_shards`` with 1 and ``writers`` shard tasks (fresh output each), one run each;
    the encoder actor's start-up is inside both timings."""
    from imagen_ray.config import TextEncoderConfig
    from imagen_ray.data.precompute import encode_shards

    text = TextEncoderConfig(max_length=32)
    out: dict[str, Any] = {}
    for n in (1, writers):
        name = f"encode_writers_{n}"
        with measured(name, 0) as res:
            res["rows"] = encode_shards(shards, tmp / name, text, writers=n)["samples"]
        emit(res)
        out[name] = res
    one, many = out["encode_writers_1"], out[f"encode_writers_{writers}"]
    return {
        "encode_writers": writers,
        "encode_samples_per_s_1": one["samples_per_s"],
        f"encode_samples_per_s_{writers}": many["samples_per_s"],
        "encode_speedup": rnd(many["samples_per_s"] / max(one["samples_per_s"], 1e-9)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Ray Data pipeline benchmark: samples/s of the pipeline with and without "
        "text encoding, a plain webdataset loop and ray.data.read_webdataset; reader-only "
        "throughput; peak memory at 1x and 10x data. JSON lines on stdout.",
    )
    p.add_argument("--samples", type=int, default=2000, help="generated images (2000)")
    p.add_argument("--per-shard", type=int, default=100, help="samples per shard (100)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    p.add_argument("--repeat", type=int, default=10, help="flat-memory data multiple (10)")
    p.add_argument("--num-cpus", type=int, default=None, help="Ray CPUs (default: all)")
    p.add_argument("--no-text", action="store_true", help="skip the text-encoder run")
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 100 samples, 1 round, no text encoder"
    )
    p.add_argument("--keep", metavar="DIR", help="write the shards here and keep them")
    p.add_argument("--writers", type=int, default=4, help="parallel encode writers (4)")
    p.add_argument(
        "--encode-only", action="store_true", help="only the encode benchmark (1 vs N writers)"
    )
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.per_shard, args.rounds, args.repeat = 100, 25, 1, 4
        args.no_text = True

    import ray

    from imagen_ray.data.pipeline import create_stats, read_stats

    t_start = time.perf_counter()
    emit({"bench": "data", "args": vars(args), "machine": machine_info()})
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        t0 = time.perf_counter()
        shards = make_shards(tmp / "shards", args.samples, args.per_shard)
        seconds = time.perf_counter() - t0
        log(f"wrote {args.samples} samples in {len(shards)} shards ({seconds:.1f} s)")
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        if args.encode_only:
            summary = {"bench": "data_encode", **bench_encode(shards, tmp, args.writers)}
            summary["total_seconds"] = rnd(time.perf_counter() - t_start)
            emit(summary)
            return 0
        stats = create_stats()  # one counter actor, as a trainer would hold

        configs: dict[str, Callable[[list[str]], int]] = {
            "pipeline": lambda s: bench_pipeline(s, stats),
            "pipeline_2tasks": lambda s: bench_pipeline(s, stats, tasks=2),
            "ray_wds": bench_ray_wds,
            "wds_loop": bench_wds_loop,
        }
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in configs}
        log("warm-up (worker processes, imports)")
        bench_pipeline(shards, stats)
        bench_ray_wds(shards[:2])
        for r in range(args.rounds):
            for name, fn in configs.items():
                with measured(name, args.samples) as res:
                    res["rows"] = fn(shards)
                res["round"] = r
                emit(res)
                results[name].append(res)
        for reader in ("read_shards", "read_webdataset"):
            with measured(f"read_only_{reader}", args.samples) as res:
                res["rows"] = bench_read_only(shards, reader)
            emit(res)
            results[f"read_only_{reader}"] = [res]
        if not args.no_text:
            with measured("pipeline_text", args.samples) as res:
                res["rows"] = bench_pipeline_text(shards, stats)
            emit(res)
            results["pipeline_text"] = [res]

        flat = {}
        for mult in (1, args.repeat):
            with measured(f"flat_memory_x{mult}", args.samples * mult) as res:
                res["rows"] = bench_pipeline(shards * mult, stats)
            emit(res)
            flat[mult] = res
        rows_ok = (
            sum(
                r["rows"] for name, rs in results.items() if name.startswith("pipeline") for r in rs
            )
            + sum(r["rows"] for r in flat.values())
            + args.samples
        )
        counts = read_stats(stats, min_ok=rows_ok)

        def best(name: str) -> float | None:
            return max(r["samples_per_s"] for r in results[name]) if name in results else None

        def ratio(a: str, b: str) -> float | None:
            x, y = best(a), best(b)
            return rnd(x / y, 3) if x is not None and y else None

        def cpu_ratio(a: str, b: str) -> float | None:
            if a not in results or b not in results:
                return None
            x = max(r["samples_per_cpu_s"] or 0 for r in results[a])
            y = max(r["samples_per_cpu_s"] or 0 for r in results[b])
            return rnd(x / y, 3) if y else None

        mem_keys = ("driver_peak_rss_mb", "cluster_peak_rss_mb", "largest_process_peak_rss_mb")
        summary = {
            "summary": "data",
            "samples": args.samples,
            "size": SIZE,
            "cpus": ray.cluster_resources().get("CPU"),
            "samples_per_s": {
                name: {
                    "best": best(name),
                    "median": rnd(median([r["samples_per_s"] for r in results[name]])),
                    "per_cpu_s": max(r["samples_per_cpu_s"] or 0 for r in results[name]),
                }
                for name in results
            },
            "ratios": {
                "pipeline_vs_wds_loop": ratio("pipeline", "wds_loop"),
                "pipeline_2tasks_vs_pipeline": ratio("pipeline_2tasks", "pipeline"),
                "per_cpu_s_pipeline_2tasks_vs_pipeline": cpu_ratio("pipeline_2tasks", "pipeline"),
                "pipeline_vs_ray_read_webdataset": ratio("pipeline", "ray_wds"),
                "read_shards_vs_read_webdataset": ratio(
                    "read_only_read_shards", "read_only_read_webdataset"
                ),
                "text_vs_no_text": ratio("pipeline_text", "pipeline"),
                "per_cpu_s_pipeline_vs_wds_loop": cpu_ratio("pipeline", "wds_loop"),
                "per_cpu_s_pipeline_vs_ray_read_webdataset": cpu_ratio("pipeline", "ray_wds"),
                "per_cpu_s_read_shards_vs_read_webdataset": cpu_ratio(
                    "read_only_read_shards", "read_only_read_webdataset"
                ),
            },
            "memory_mb": {name: {k: rs[-1][k] for k in mem_keys} for name, rs in results.items()},
            "flat_memory": {
                f"x{m}": {"rows": r["rows"], "processes": r["cluster_processes"]}
                | {k: r[k] for k in mem_keys}
                for m, r in flat.items()
            },
            "flat_memory_growth": {
                k.removesuffix("_peak_rss_mb"): rnd(flat[args.repeat][k] / flat[1][k], 3)
                for k in mem_keys
            },
            "pipeline_counts": counts,
            "pipeline_counts_match_rows": counts.get("ok") == rows_ok,
            "seconds": rnd(time.perf_counter() - t_start),
            "loadavg_end": loadavg(),
        }
        emit(summary)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
