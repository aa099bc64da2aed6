"""Launch one Ray Train run per cascade stage: ``imagen-ray train``, ``python -m imagen_ray.train``.

Connects to the cluster in ``RAY_ADDRESS`` or starts a local one, checks the config against
the cluster before any worker starts, and hands the typed config to the workers as a dict
(``imagen_ray.train.loop.WorkerArgs``) with the batch factory and step hooks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagen_ray import storage
from imagen_ray.cluster import Capacity, ClusterTooSmall, Demand, check_demands
from imagen_ray.config import RunConfig

if TYPE_CHECKING:  # torch loads with the trainer, not with the resource checks
    from imagen_ray.runtime import ConsoleSink
    from imagen_ray.train.batches import BatchFactory
    from imagen_ray.train.hooks import StepHook


class LaunchError(ValueError):
    """The run cannot start on this cluster; the message says what to change."""


def run_demands(cfg: RunConfig, *, pipeline: bool = True, local: bool = False) -> list[Demand]:
    """What one stage's run holds at once: its workers and, with ``pipeline``, the least
    the Ray Data pipeline needs to make progress (one read task, one decode task and the
    text-encoder actors when embeddings are not precomputed).

    Args:
        cfg: the run.
        pipeline: the run reads ``data.shards`` through Ray Data (not ``--data memory``).
        local: the command starts its own local cluster (the fix is then ``--num-cpus``).
    """
    t, d = cfg.train, cfg.data
    worker: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        worker["GPU"] = 1.0
    fix = (
        "set train.use_gpu=false or add a node type with GPUs"
        if t.use_gpu
        else "lower train.num_workers or train.cpus_per_worker"
    )
    demands = [
        Demand(
            f"train.num_workers={t.num_workers} x train.cpus_per_worker={t.cpus_per_worker:g}"
            + (" + 1 GPU" if t.use_gpu else ""),
            worker,
            t.num_workers,
            fix=fix,
        )
    ]
    if not pipeline:
        return demands
    data_fix = (
        "give the local cluster more logical CPUs (--num-cpus N, above the cores is fine), "
        if local
        else ""
    ) + "lower train.cpus_per_worker, data.read_num_cpus or data.map_num_cpus"
    demands += [
        Demand(
            f"one read task (data.read_num_cpus={d.read_num_cpus:g})",
            {"CPU": d.read_num_cpus},
            fix=data_fix,
        ),
        Demand(
            f"one decode task (data.map_num_cpus={d.map_num_cpus:g})",
            {"CPU": d.map_num_cpus},
            fix=data_fix,
        ),
    ]
    if d.precomputed is not True:  # null: on the fly unless the shards carry embeddings
        enc = {"CPU": d.encoder_num_cpus, "GPU": d.encoder_num_gpus}
        demands.append(
            Demand(
                f"data.encoder_concurrency={d.encoder_concurrency} text-encoder actors x "
                f"data.encoder_num_cpus={d.encoder_num_cpus:g}",
                enc,
                d.encoder_concurrency,
                fix=data_fix + ", or precompute embeddings (imagen-ray data encode) and set "
                "data.precomputed=true",
            )
        )
    return demands


def check_resources(
    cfgs: Sequence[RunConfig],
    capacity: Capacity,
    *,
    pipeline: bool = True,
    local: bool = False,
) -> str | None:
    """Fail before any worker starts when the cluster can never host the runs together.

    Returns:
        None, or a line saying the runs start and wait for the autoscaler.

    Raises:
        LaunchError: what can never be scheduled, the numbers and the fix.
    """
    demands = [x for c in cfgs for x in run_demands(c, pipeline=pipeline, local=local)]
    fix = (
        (
            "start the local cluster with --num-cpus {need} (more logical CPUs than cores is "
            "fine), or lower "
            if local
            else "add nodes, or lower "
        )
        + "train.num_workers or train.cpus_per_worker"
        + (
            " (the Ray Data read/decode tasks and text-encoder actors need CPUs beside the "
            "workers: data.read_num_cpus, data.map_num_cpus, data.encoder_num_cpus, or "
            "precompute embeddings with `imagen-ray data encode`)"
            if pipeline
            else ""
        )
    )
    try:
        return check_demands(capacity, demands, fix)
    except ClusterTooSmall as e:
        raise LaunchError(str(e)) from None


def run_dir(cfg: RunConfig) -> str:
    """Absolute run directory (local storage) or URI of the run."""
    return storage.join(storage.resolve(cfg.train.storage_path), cfg.train.name or cfg.stage.name)


def check_storage(cfg: RunConfig) -> None:
    """``train.storage_path`` can be written (a bucket that exists, credentials that work),
    checked before any worker starts.

    Raises:
        LaunchError: naming the path, what went wrong and the fix.
    """
    try:
        storage.check_writable(cfg.train.storage_path, "train.storage_path")
    except ValueError as e:
        raise LaunchError(str(e)) from None


def resolve_resume(cfg: RunConfig, resume_from: str) -> str:
    """The checkpoint a run starts from, checked against the run before any worker starts.

    A checkpoint of another world size or ZeRO stage resumes too (elastic resume,
    :mod:`imagen_ray.train.reshard`), except where its optimizer state cannot be
    re-sharded.

    Args:
        cfg: the run that will resume.
        resume_from: a ``checkpoint_*`` directory, or a run directory (its latest complete
            checkpoint is used); local or a URI (``s3://...``, read in place).

    Returns:
        The checkpoint directory (a URI stays a URI: every worker downloads it).

    Raises:
        LaunchError: no complete checkpoint there, or it was written by a run with another
            stage (model) config or optimizer, or a change of topology that cannot carry
            its optimizer state over (named, with the fix).
    """
    from imagen_ray.train.checkpoint import IncompleteCheckpoint, find_checkpoint, read_config

    try:
        ckpt = find_checkpoint(resume_from if storage.is_uri(resume_from) else Path(resume_from))
        meta = read_config(ckpt)
    except IncompleteCheckpoint as e:
        raise LaunchError(f"--resume-from {resume_from}: {e}") from e
    problems = []
    if meta["run"]["stage"] != cfg.stage.model_dump(mode="json"):
        problems.append("its stage (model) config differs from this run's")
    old_train = meta["run"]["train"]
    if old_train["optimizer"] != cfg.train.optimizer:
        problems.append(
            f"it was trained with train.optimizer={old_train['optimizer']}, this run has "
            f"{cfg.train.optimizer}"
        )
    old_zero, new_zero = int(meta["zero_stage"]), cfg.train.zero_stage
    elastic = int(meta["world_size"]) != cfg.train.num_workers or old_zero != new_zero
    if elastic and cfg.train.optimizer == "adafactor" and (old_zero == 0) != (new_zero == 0):
        problems.append(
            f"Adafactor's second moments are factored at ZeRO 0 and flat at ZeRO 1-3, so "
            f"ZeRO {old_zero} -> train.zero_stage={new_zero} cannot carry them over (keep "
            f"train.zero_stage {'0' if old_zero == 0 else 'at 1-3'})"
        )
    if elastic:
        from imagen_ray.config import TrainConfig

        old_prec = TrainConfig.model_validate(old_train).resolved_precision
        for prec, zero in ((old_prec, old_zero), (cfg.train.resolved_precision, new_zero)):
            if zero == 0 and prec != "fp32":
                problems.append(
                    f"a ZeRO 0 run in {prec} keeps its fp32 master weights inside "
                    "DeepSpeed's wrapper, which an elastic resume does not read (use ZeRO 1-3 "
                    "or fp32, or the checkpoint's world size and ZeRO stage)"
                )
    if problems:
        raise LaunchError(
            f"cannot resume from {ckpt}: {'; '.join(problems)}. Use the checkpoint's own "
            "settings (its config.json holds them), or `imagen-ray export` it and start a "
            "new run"
        )
    return storage.resolve(ckpt)


def resolve_init(cfg: RunConfig, init_from: str, text_dim: int) -> str:
    """The stage or checkpoint directory ``train.init_from`` names, checked against the run.

    Args:
        cfg: the run that starts from it.
        init_from: an exported stage directory, a ``checkpoint_*`` directory or a run
            directory (its latest complete checkpoint); local or a URI.
        text_dim: this run's text encoder width.

    Returns:
        The stage or checkpoint directory the workers load.

    Raises:
        LaunchError: not a stage or checkpoint, or its model differs from the run's (each
            mismatched key named, see :func:`imagen_ray.train.warmstart.model_mismatches`).
    """
    from imagen_ray.train.warmstart import model_mismatches, read_init_source

    try:
        source = read_init_source(init_from)
    except ValueError as e:
        raise LaunchError(str(e)) from e
    problems = model_mismatches(cfg, text_dim, source)
    if problems:
        raise LaunchError(
            f"train.init_from={init_from}: the {source.kind} at {source.path} has another "
            f"model than this run: {'; '.join(problems)}. Set these keys as the source has "
            "them (its config.json), or start from a matching stage"
        )
    return storage.resolve(source.path)


def build_trainer(
    cfg: RunConfig,
    *,
    batches: BatchFactory | None = None,
    hooks: Sequence[StepHook] = (),
    resume_from: str | None = None,
    text_dim: int | None = None,
    console: ConsoleSink | None = None,
    check: bool = True,
) -> Any:
    """A ``TorchTrainer`` for one stage.

    Args:
        cfg: the run.
        batches: each worker's batch stream (``imagen_ray.train.batches``); None (default):
            the Ray Data pipeline of ``cfg.data``, built here, each worker reading its
            shard, with the pipeline's sample counts in the metrics (``data/<reason>``).
        hooks: called by every worker at each step (``imagen_ray.train.hooks``), e.g.
            ``imagen_ray.train.memory.ModelStateMemory`` in benchmarks.
        resume_from: a checkpoint or run directory, used when the run has no checkpoint of
            its own yet; after a worker failure Ray Train's latest checkpoint of this run
            wins.
        text_dim: the text encoder's width (default: resolved from ``cfg.text``).
        console: where rank 0's progress lines go besides its stdout
            (:meth:`imagen_ray.runtime.Console.sink`).
        check: check the run against the cluster (:func:`check_resources`); False when
            the caller checked all of its runs together.
    """
    from imagen_ray.train.batches import PipelineCounts, ShardBatches
    from imagen_ray.train.loop import WorkerArgs

    if check:
        from imagen_ray.cluster import cluster_capacity

        check_storage(cfg)
        wait = check_resources([cfg], cluster_capacity(), pipeline=batches is None)
        if wait:
            print(f"{cfg.train.name or cfg.stage.name}: {wait}", flush=True)
    if resume_from is not None:
        resume_from = resolve_resume(cfg, resume_from)
    if text_dim is None:
        from imagen_ray.text import text_dim as resolve_dim

        text_dim = resolve_dim(cfg.text)
    init_from = None
    if cfg.train.init_from and resume_from is None:  # a resumed fine-tune has its weights
        init_from = resolve_init(cfg, cfg.train.init_from, text_dim)
    datasets: dict[str, Any] = {}
    if batches is None:
        from imagen_ray.data.pipeline import build_dataset

        ds, stats = build_dataset(cfg)
        datasets = {"train": ds}
        batches = ShardBatches(stats)  # resumes by announcing its epochs on stats
        hooks = (PipelineCounts(stats), *hooks)
    args = WorkerArgs(
        run=cfg,
        text_dim=text_dim,
        run_dir=run_dir(cfg),
        resume_from=resume_from,
        init_from=init_from,
        batches=batches,
        hooks=tuple(hooks),
        console=console,
    )
    return _torch_trainer(cfg, args.to_dict(), datasets)


def _torch_trainer(cfg: RunConfig, loop_config: dict[str, Any], datasets: dict[str, Any]) -> Any:
    """Ray Train's ``TorchTrainer`` of ``train_loop_per_worker``: workers, storage, failure
    and checkpoint policy, the workers' environment and the dataset."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from imagen_ray.train.loop import train_loop_per_worker

    name = cfg.train.name or cfg.stage.name
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    if not cfg.train.use_gpu:
        env["DS_ACCELERATOR"] = "cpu"  # CPU workers on a GPU box: DeepSpeed's CPU backend
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        # Train V2's RunConfig takes worker_runtime_env; mypy sees the V1 class.
        run_config=ray.train.RunConfig(  # type: ignore[call-arg]
            name=name,
            storage_path=storage.resolve(cfg.train.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            worker_runtime_env={"env_vars": env},
        ),
        datasets=datasets or None,
        # Only when needed: building it calls Ray's default_ingest_options, which warns
        # (RayDeprecationWarning) on the console of every run.
        dataset_config=_dataset_config(cfg) if datasets and cfg.data.preserve_order else None,
    )


def _dataset_config(cfg: RunConfig) -> Any:
    """Ray Train's DataConfig; it resets the dataset's execution options to the driver's
    before splitting it, so ``data.preserve_order`` has to travel through here."""
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = cfg.data.preserve_order
    return ray.train.DataConfig(execution_options=options)


_FORWARDED_ENV = (
    "WANDB_MODE",
    "WANDB_DIR",
    "WANDB_API_KEY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_HOME",
    "TORCH_EXTENSIONS_DIR",
    "TOKENIZERS_PARALLELISM",
    *storage.CREDENTIAL_ENV,  # remote storage_path / shards / init_from on every node
)
