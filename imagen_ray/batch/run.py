"""``generate``: every missing image of a plan, made on a Ray Data actor pool."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagen_ray import storage
from imagen_ray.batch.config import GenerateConfig
from imagen_ray.batch.plan import (
    IMAGES,
    plan_records,
    resolved_sampling,
    run_dtype,
    stage_configs,
)
from imagen_ray.batch.resume import split_done, write_manifest
from imagen_ray.batch.worker import WRITE_RETRY_S, CascadeWorker, check_cluster
from imagen_ray.fs import NoSpaceError
from imagen_ray.prompts import Prompt


@dataclass
class Summary:
    """What a run did: images generated now, skipped as already done, and where."""

    generated: int
    skipped: int
    out: str  # a local directory or a URI
    manifest: str
    seconds: float


def generate(
    cascade: Sequence[str | Path],
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    cfg: GenerateConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    start_ray: Callable[[], Any] | None = None,
    prompts_dir: Path | None = None,
) -> Summary:
    """Generate every missing image of the plan on a Ray Data actor pool.

    Args:
        cascade: a saved cascade directory, or stage directories base first.
        prompts: the prompts (:func:`imagen_ray.prompts.read_prompt_file`).
        out_dir: output directory (created), local or a URI (``s3://...``: every replica
            writes there directly); existing finished images are kept.
        cfg: seeds, sampling, pool size and resources.
        overwrite: make every image again even if it exists.
        progress: show Ray Data's progress bars.
        log: where one-line status messages go.
        start_ray: starts or joins Ray, called only when Ray is not initialised and there
            is something to generate (a run with nothing left to do never starts Ray);
            default :func:`imagen_ray.runtime.init_ray` (``RAY_ADDRESS`` or a local Ray).
        prompts_dir: where the prompts' relative ``image`` / ``mask`` paths start (edits;
            default the working directory).

    Returns:
        Summary with the counts and the manifest path.
    """
    t0 = time.perf_counter()
    paths = [str(Path(c).resolve()) for c in cascade]
    sampling = resolved_sampling(stage_configs(paths), cfg)
    out = storage.resolve(out_dir)
    records = plan_records(prompts, cfg, sampling, prompts_dir)
    done, todo = ([], records) if overwrite else split_done(out, records)
    log(
        f"{len(records)} images planned ({len(prompts)} prompts x {cfg.images_per_prompt}); "
        f"{len(done)} already done and skipped; {len(todo)} to generate"
    )
    if todo:
        if not storage.is_uri(out):
            Path(out, IMAGES).mkdir(parents=True, exist_ok=True)
        _join_ray(cfg, log, start_ray)
        _run_pool(todo, paths, out, cfg, progress=progress)
    manifest = write_manifest(out, records)
    seconds = time.perf_counter() - t0
    log(
        f"generated {len(todo)} images, skipped {len(done)} already done; manifest: {manifest} "
        f"({seconds:.1f} s)"
    )
    return Summary(len(todo), len(done), out, manifest, seconds)


def _join_ray(
    cfg: GenerateConfig, log: Callable[[str], None], start_ray: Callable[[], Any] | None
) -> None:
    """Start or join Ray unless it runs (``start_ray``, default ``init_ray``); say when the
    pool must wait for the cluster to grow."""
    import ray

    if not ray.is_initialized():
        if start_ray is not None:
            start_ray()
        else:
            from imagen_ray.runtime import init_ray

            init_ray()
    from imagen_ray.cluster import cluster_capacity

    wait = check_cluster(cfg, cluster_capacity())
    if wait:
        log(wait)


def _run_pool(
    todo: list[dict[str, Any]], paths: list[str], out: str, cfg: GenerateConfig, *, progress: bool
) -> None:
    """``todo``'s images made and written by the :class:`CascadeWorker` actor pool."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # One block per batch, so that every replica gets work and progress moves per batch.
    blocks = -(-len(todo) // cfg.batch_size)
    ds = ray.data.from_items([{"record": json.dumps(r)} for r in todo], override_num_blocks=blocks)
    results = ds.map_batches(
        CascadeWorker,
        fn_constructor_kwargs={
            "cascade": paths,
            "out": out,
            "until": cfg.until,
            "use_gpu": cfg.num_gpus > 0,
            "dtype": run_dtype(cfg),
        },
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
    )
    written, why = 0, None
    for b in results.iter_batches(batch_size=None):
        missing = [x for x in b["not_written"] if x]
        written += len(b["file"]) - len(missing)
        why = why or (missing[0] if missing else None)
    if why is not None:  # a full disk or unreachable storage: said plainly, with how to go on
        kind, path, *rest = json.loads(why)
        kept = f"{written} images of {len(todo)} were written and are kept whole; the same command"
        if kind == "no_space":
            raise NoSpaceError(
                path, rest[0], rest[1], note=f"{kept} makes the rest once there is space"
            )
        raise storage.StorageUnavailable(
            path, OSError(rest[0]), WRITE_RETRY_S, note=f"{kept} makes the rest once it answers"
        )
    if written != len(todo):
        raise RuntimeError(f"expected {len(todo)} images from the pool, got {written}")
