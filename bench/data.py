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
  their ratio (``--encode-only`` runs just these);
* ``decode_sizes`` (``--sizes 256,512,1024``, runs only this) decode + resize at real
  image sizes, per core (one process, one torch thread, no Ray): for each source size S
  and format (JPEG, WebP; ``--samples`` synthetic S x S images, default 64) and each
  target T in 64, 256, 1024 with T <= S (upscaling cases are skipped and listed), the
  samples/s of ``ours`` (the project's tar reader + ``decode_filter_resize``, JPEG
  ``draft`` on), ``ours_no_draft`` (the same with ``draft`` a no-op) and ``dataloader``
  (``webdataset.WebDataset(...).decode("pil")`` + ``DataLoader(num_workers=0)``, Lanczos
  short-side resize, center crop, uint8 tensors); one line per (format, S, T) with best
  and median per wall second and per CPU second, the ratios, and the size JPEG ``draft``
  decodes to (``decoded_size``), then a summary line.

The shards are generated into a temp dir (``--samples`` images of ~128-192 px, JPEG).
Configurations are run in alternating rounds (``--rounds``); each reports the best and
median samples/s, and samples per CPU-second summed over the driver and every process of
its Ray cluster (on a shared machine wall time depends on the neighbours; CPU time much
less). Memory is sampled every 0.2 s: driver RSS, and the summed RSS of Ray
cluster's processes (the driver's descendants: raylet, GCS, workers; shared object-store
pages count in every process that touches them, so this over-counts).

    python bench/data.py            # full run (~4-6 min on 2 cores)
    python bench/data.py --quick    # smoke run (< 60 s)
    python bench/data.py --sizes 256,512,1024           # decode rates (~2-3 min on 2 cores)
    python bench/data.py --sizes 256,512,1024 --quick   # smoke run (8 images, 2 rounds)
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
    with ShardWriter(str(out / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(n):
            width, height = int(rng.integers(128, 193)), int(rng.integers(128, 161))
            jpeg = _encode(_draw(rng, width, height), "JPEG")
            w.write({"__key__": f"b{i:07d}", "jpg": jpeg, "txt": _caption(rng)})
    return sorted(str(p) for p in out.glob("*.tar"))


def _draw(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: a gradient, 3 flat squares (32 px, or a sixth of the short
    side for large images) and mild noise."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
    b = max(32, min(width, height) // 6)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width - b)), int(rng.integers(0, height - b))
        img[y0 : y0 + b, x0 : x0 + b] = rng.integers(0, 256, 3)
    return np.clip(img + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)


def _encode(img: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=90)
    return buf.getvalue()


def _caption(rng: np.random.Generator) -> str:
    words = ["red", "green", "blue", "yellow", "large", "small", "circle", "square", "left"]
    return " ".join(rng.choice(words, size=int(rng.integers(3, 9))))


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


# ---------------------------------------------------------------------------- sizes

TARGETS = (64, 256, 1024)  # the base stage, the SR stage, the 1024 px (crop-trained) stage
FORMATS = {"JPEG": "jpg", "WEBP": "webp"}  # PIL format -> shard entry extension
CONTENDERS = ("ours", "ours_no_draft", "dataloader")
LOADER_BATCH = 16


def make_sized_shards(out: Path, n: int, per_shard: int, size: int, fmt: str) -> list[str]:
    """``n`` synthetic ``size`` x ``size`` images in ``fmt`` (JPEG/WEBP, quality 90)."""
    from webdataset import ShardWriter

    rng = np.random.default_rng(size)
    out.mkdir(parents=True, exist_ok=True)
    with ShardWriter(str(out / "shard-%06d.tar"), maxcount=per_shard, verbose=0) as w:
        for i in range(n):
            raw = _encode(_draw(rng, size, size), fmt)
            w.write({"__key__": f"s{i:07d}", FORMATS[fmt]: raw, "txt": _caption(rng)})
    return sorted(str(p) for p in out.glob("*.tar"))


def bench_ours(shards: list[str], size: int, rows_per_block: int = 128) -> int:
    """(a) the pipeline's per-sample work without Ray: the project's tar reader into Arrow
    blocks (as a read task makes them), then ``decode_filter_resize`` (header checks, JPEG
    ``draft``, RGB + EXIF rotation, Lanczos short-side resize + center crop) to ``size`` px."""
    from imagen_ray.config import DataConfig, StageConfig
    from imagen_ray.data.decode import decode_filter_resize
    from imagen_ray.data.reader import URL_COLUMN, _rows_to_table, iter_tar_samples

    kwargs = {
        "data_cfg": DataConfig().model_dump(),
        "stage_cfg": StageConfig(size=size).model_dump(),
        "columns": ["image"],
    }
    n = 0

    def decode(rows: list[dict[str, Any]]) -> int:
        out = decode_filter_resize(_rows_to_table(rows), **kwargs)
        assert isinstance(out, dict) and out["image"].shape[1:] == (size, size, 3)
        return len(out["image"])

    for path in shards:
        rows: list[dict[str, Any]] = []
        with open(path, "rb") as f:
            for sample in iter_tar_samples(f, path):
                rows.append(sample | {URL_COLUMN: path})
                if len(rows) >= rows_per_block:
                    n, rows = n + decode(rows), []
        if rows:
            n += decode(rows)
    return n


@contextmanager
def no_draft() -> Iterator[None]:
    """JPEG ``draft`` made a no-op: every image decodes at full size."""
    from PIL.JpegImagePlugin import JpegImageFile

    saved = JpegImageFile.draft
    JpegImageFile.draft = lambda self, mode, size: None  # type: ignore[method-assign,assignment,return-value]
    try:
        yield
    finally:
        JpegImageFile.draft = saved  # type: ignore[method-assign]


def bench_ours_no_draft(shards: list[str], size: int) -> int:
    """(c) :func:`bench_ours` with JPEG ``draft`` disabled: what draft saves."""
    with no_draft():
        return bench_ours(shards, size)


def bench_dataloader(shards: list[str], size: int) -> int:
    """(b) the anchor: ``webdataset.WebDataset(...).decode("pil")`` + a ``DataLoader``
    (``num_workers=0``): PIL decode at full size (no draft), Lanczos short-side resize,
    center crop, (size, size, 3) uint8 tensors collated in batches."""
    import torch
    import webdataset as wds
    from torch.utils.data import DataLoader

    def transform(img: Image.Image) -> torch.Tensor:
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize(
            (max(size, round(w * scale)), max(size, round(h * scale))),
            Image.Resampling.LANCZOS,
        )
        left, top = (img.width - size) // 2, (img.height - size) // 2
        return torch.from_numpy(np.array(img.crop((left, top, left + size, top + size))))

    ds = (
        wds.WebDataset(shards, shardshuffle=False, empty_check=False)
        .decode("pil")
        .to_tuple("jpg;webp", "txt")
        .map_tuple(transform, lambda caption: caption)
    )
    n = 0
    for images, _captions in DataLoader(ds, batch_size=LOADER_BATCH, num_workers=0):
        assert images.shape[1:] == (size, size, 3) and images.dtype == torch.uint8
        n += len(images)
    return n


SIZE_BENCHES: dict[str, Callable[[list[str], int], int]] = {
    "ours": bench_ours,
    "ours_no_draft": bench_ours_no_draft,
    "dataloader": bench_dataloader,
}


def draft_decoded_size(shard: str, ext: str, size: int) -> list[int]:
    """[width, height] the first image of ``shard`` decodes to after ``draft("RGB", (size,
    size))``, as ``_decode_image`` calls it (JPEG: 1/2, 1/4 or 1/8 scale, never below
    ``size``; other formats ignore draft)."""
    import webdataset as wds

    raw = next(iter(wds.WebDataset([shard], shardshuffle=False, empty_check=False)))[ext]
    img = Image.open(io.BytesIO(raw))
    img.draft("RGB", (size, size))
    img.load()
    return list(img.size)


def _rates(runs: list[dict[str, float]]) -> dict[str, float | None]:
    wall = [r["samples_per_s"] for r in runs]
    cpu = [r["samples_per_cpu_s"] for r in runs]
    return {
        "best": rnd(max(wall)),
        "median": rnd(median(wall)),
        "per_cpu_s_best": rnd(max(cpu)),
        "per_cpu_s_median": rnd(median(cpu)),
    }


def time_sizes(shards: list[str], size: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Each contender over ``shards`` once per round, the order rotated each round: samples
    per wall second and per CPU second of this process (one thread: the per-core rate)."""
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONTENDERS}
    for r in range(rounds):
        for name in CONTENDERS[r % 3 :] + CONTENDERS[: r % 3]:
            t0, c0 = time.perf_counter(), time.process_time()
            n = SIZE_BENCHES[name](shards, size)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs[name].append(
                {"samples": n, "samples_per_s": n / wall, "samples_per_cpu_s": n / max(cpu, 1e-9)}
            )
    return runs


def size_row(fmt: str, source: int, target: int, shards: list[str], rounds: int) -> dict[str, Any]:
    """One (format, source, target) line: each contender's rates, ratios, the draft size."""
    runs = time_sizes(shards, target, rounds)
    counts = {r["samples"] for rs in runs.values() for r in rs}
    assert len(counts) == 1, f"contenders decoded different numbers of samples: {counts}"
    rates = {name: _rates(rs) for name, rs in runs.items()}

    def ratio(a: str, b: str, key: str = "best") -> float | None:
        x, y = rates[a][key], rates[b][key]
        return rnd(x / y, 3) if x is not None and y else None

    decoded = draft_decoded_size(shards[0], FORMATS[fmt], target)
    return {
        "config": "decode_sizes",
        "format": fmt,
        "source": source,
        "target": target,
        "samples": int(counts.pop()),
        "rounds": rounds,
        "decoded_size": decoded,
        "draft_applies": min(decoded) < source,
        "samples_per_s": rates,
        "ratios": {
            "ours_vs_dataloader": ratio("ours", "dataloader"),
            "ours_vs_ours_no_draft": ratio("ours", "ours_no_draft"),
            "per_cpu_s_ours_vs_dataloader": ratio("ours", "dataloader", "per_cpu_s_best"),
            "per_cpu_s_ours_vs_ours_no_draft": ratio("ours", "ours_no_draft", "per_cpu_s_best"),
        },
        "loadavg": loadavg(),
    }


def bench_sizes(args: argparse.Namespace, tmp: Path, t_start: float) -> int:
    """``--sizes``: decode + resize rates per core at each (format, source, target)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows, skipped = [], []
    try:
        for fmt in FORMATS:
            for source in args.sizes:
                t0 = time.perf_counter()
                out = tmp / "sizes" / f"{fmt.lower()}-{source}"
                shards = make_sized_shards(out, args.samples, args.per_shard, source, fmt)
                log(f"{fmt} {source} px: {args.samples} images ({time.perf_counter() - t0:.1f} s)")
                if not rows:  # warm-up: imports, first-call costs
                    for fn in SIZE_BENCHES.values():
                        fn(shards[:1], TARGETS[0])
                for target in TARGETS:
                    if target > source:
                        skipped.append([fmt, source, target])
                        log(f"skip {fmt} {source} -> {target} px (upscaling)")
                        continue
                    row = size_row(fmt, source, target, shards, args.rounds)
                    emit(row)
                    rows.append(row)
    finally:
        torch.set_num_threads(threads)
    emit(sizes_summary(rows, skipped, t_start))
    return 0


def sizes_summary(
    rows: list[dict[str, Any]], skipped: list[list[Any]], t_start: float
) -> dict[str, Any]:
    """The table in one line, and the goal: per core, ours >= the DataLoader at 1024 px."""
    table = {
        f"{r['format']}_{r['source']}_{r['target']}": {
            "per_cpu_s": {k: v["per_cpu_s_best"] for k, v in r["samples_per_s"].items()},
            "ours_vs_dataloader": r["ratios"]["per_cpu_s_ours_vs_dataloader"],
            "ours_vs_ours_no_draft": r["ratios"]["per_cpu_s_ours_vs_ours_no_draft"],
            "decoded_size": r["decoded_size"],
        }
        for r in rows
    }
    at_1024 = [r["ratios"]["per_cpu_s_ours_vs_dataloader"] for r in rows if r["source"] == 1024]
    return {
        "summary": "data_sizes",
        "threads": 1,
        "table": table,
        "skipped_upscaling": skipped,
        "goal_ours_ge_dataloader_per_core_at_1024": (
            all(x is not None and x >= 1 for x in at_1024) if at_1024 else None
        ),
        "slower_than_dataloader": [
            k for k, v in table.items() if (v["ours_vs_dataloader"] or 0) < 1
        ],
        "seconds": rnd(time.perf_counter() - t_start),
        "loadavg_end": loadavg(),
    }


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
    p.add_argument(
        "--samples", type=int, default=None, help="generated images (2000; --sizes: 64 per size)"
    )
    p.add_argument("--per-shard", type=int, default=100, help="samples per shard (100)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (2; --sizes: 3)")
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
    p.add_argument(
        "--sizes",
        type=_size_list,
        default=None,
        metavar="S,S,...",
        help="only the decode-rate benchmark: synthetic S x S JPEG and WebP sources resized "
        "to 64/256/1024 px (T <= S), ours vs ours without draft vs a webdataset DataLoader, "
        "per core (e.g. 256,512,1024)",
    )
    args = p.parse_args(argv)
    if args.sizes:
        args.samples = args.samples or (8 if args.quick else 64)
        args.rounds = args.rounds or (2 if args.quick else 3)
        return _run_sizes(args)
    args.samples = args.samples or 2000
    args.rounds = args.rounds or 2
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


def _size_list(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--sizes takes pixels like 256,512,1024: {e}") from e
    if not sizes or min(sizes) < TARGETS[0]:
        raise argparse.ArgumentTypeError(f"--sizes needs sizes >= {TARGETS[0]} px, got {text!r}")
    return sizes


def _run_sizes(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    emit({"bench": "data_sizes", "args": vars(args), "machine": machine_info()})
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        return bench_sizes(args, tmp, t_start)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
