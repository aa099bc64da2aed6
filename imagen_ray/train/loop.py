"""``train_loop_per_worker``: one stage, one DeepSpeed engine per Ray Train worker.

Reads top to bottom: rebuild the typed arguments, build the stage and the DeepSpeed engine,
resume, then loop (batch -> loss -> backward -> step -> EMA -> report/checkpoint). Where the
batches come from (``imagen_ray.train.batches``) and what runs beside each step
(``imagen_ray.train.hooks``: memory accounting, fault injection) are arguments.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from imagen_ray import storage
from imagen_ray.cascade import Stage
from imagen_ray.config import RunConfig
from imagen_ray.train import checkpoint as ckpt_io
from imagen_ray.train import persist, reshard
from imagen_ray.train.accel import TrainDevicePaths
from imagen_ray.train.batches import BatchFactory, WorkerContext, resume_batches, shard_batches
from imagen_ray.train.deepspeed_config import build_deepspeed_config
from imagen_ray.train.ema import EMA, local_part
from imagen_ray.train.extensions import clear_stale_build_locks
from imagen_ray.train.finite import (
    NonFiniteStreak,
    NonFiniteWeights,
    all_ranks_true,
    guarded_step,
    nonfinite_names,
    require_finite,
)
from imagen_ray.train.hooks import StepContext, StepHook
from imagen_ray.train.perf import TrainPerf
from imagen_ray.train.placement import report_worker_nodes
from imagen_ray.train.progress import Window, print_progress, say
from imagen_ray.train.tracking import SampleGrids, log_metrics
from imagen_ray.train.warmstart import load_init_weights


@dataclass
class RunState:
    """What a checkpoint stores besides weights: counters and the W&B run id."""

    step: int = 0
    samples: int = 0
    micro_batches: int = 0
    epoch: int = 0  # data position (train.batches.DataPosition): the epoch and the samples
    epoch_samples: int = 0  # all workers have taken from it
    nonfinite_skipped: int = 0
    wandb_run_id: str | None = None


@dataclass(frozen=True)
class WorkerArgs:
    """What the launcher gives every worker.

    Crosses the Ray boundary as :meth:`to_dict` (the run config as plain JSON data; the
    factory and hooks are pickled) and is rebuilt with :meth:`from_dict` on the worker.
    """

    run: RunConfig
    text_dim: int
    run_dir: str | None = None  # where sample grids and W&B files go
    resume_from: str | None = None  # a checkpoint directory, checked by the launcher
    init_from: str | None = None  # train.init_from resolved and checked by the launcher
    batches: BatchFactory = shard_batches
    hooks: tuple[StepHook, ...] = ()
    # Where rank 0's progress lines also go: the driver's console (imagen_ray.runtime), so
    # they show while the rest of the workers' output stays in Ray's log files.
    console: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run.model_dump(mode="json"),
            "text_dim": self.text_dim,
            "run_dir": self.run_dir,
            "resume_from": self.resume_from,
            "init_from": self.init_from,
            "batches": self.batches,
            "hooks": list(self.hooks),
            "console": self.console,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorkerArgs:
        return cls(
            run=RunConfig.model_validate(d["run"]),
            text_dim=int(d["text_dim"]),
            run_dir=d["run_dir"],
            resume_from=d["resume_from"],
            init_from=d.get("init_from"),
            batches=d["batches"],
            hooks=tuple(d["hooks"]),
            console=d.get("console"),
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point for one stage.

    Args:
        config: :meth:`WorkerArgs.to_dict` of the run.
    """
    import ray.train
    import ray.train.torch

    args = WorkerArgs.from_dict(config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if rank == 0:  # a run stopped while DeepSpeed compiled would hang this one silently
        clear_stale_build_locks(say=lambda line: say(line, args.console))
    resume = ray.train.get_checkpoint()  # this run's own latest checkpoint (a restart)
    w = _build(args, rank, world, device, warm_start=resume is None and args.resume_from is None)
    _resume(w, resume)
    if rank == 0:
        _start_tracking(w)
    # Data position: the stream starts at the checkpoint's epoch and samples taken from it
    # (global, any worker count) without drawing the batches before it again.
    cfg = args.run
    batches = resume_batches(args.batches, WorkerContext(cfg, rank, world, args.text_dim), w.state)
    _train(w, batches)
    if w.wandb_run is not None:
        w.wandb_run.finish()
    if rank == 0:
        storage.sync_run_files(args.run_dir)


@dataclass
class _Worker:
    """One rank's run: what the build gives the loop."""

    args: WorkerArgs
    rank: int
    world: int
    device: torch.device
    paths: TrainDevicePaths
    engine: Any  # the DeepSpeed engine around the stage
    ema: EMA
    gen: torch.Generator
    state: RunState = field(default_factory=RunState)
    wandb_run: Any = None
    grids: SampleGrids | None = None  # rank 0 samples; its encoder loads once, at the 1st grid

    @property
    def cfg(self) -> RunConfig:
        return self.args.run

    def step_ctx(self) -> StepContext:
        return StepContext(
            rank=self.rank, world_size=self.world, step=self.state.step, engine=self.engine
        )


# ------------------------------------------------------------------------ build


def _build(
    args: WorkerArgs, rank: int, world: int, device: torch.device, *, warm_start: bool
) -> _Worker:
    """The stage (warm-started from ``args.init_from`` when ``warm_start``), its DeepSpeed
    engine, the EMA and this rank's generator."""
    cfg = args.run
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    stage = Stage(cfg.stage, text_dim=args.text_dim)
    if args.init_from and warm_start:
        # warm start: weights only, before DeepSpeed wraps (and ZeRO-3 partitions) the
        # module, so the engine, its optimizer and the EMA all start from them
        stage.unet.load_state_dict(load_init_weights(args.init_from), strict=True)
        if rank == 0:
            say(f"[{cfg.stage.name}] initialised from {args.init_from}", args.console)
    paths = TrainDevicePaths.resolve(cfg.train, device.type)
    paths.prepare(stage)  # autocast in its forward, channels_last on CUDA
    engine = build_engine(stage, cfg, world, device)
    # the process group exists now: rank 0 records which node each rank runs on
    report_worker_nodes(rank, args.run_dir, args.console, name=cfg.stage.name)
    ema = EMA(engine.module, cfg.train.ema_decay, cfg.train.ema_warmup_steps)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed * 1_000_003 + rank)
    return _Worker(args, rank, world, device, paths, engine, ema, gen)


def build_engine(stage: Stage, cfg: RunConfig, world: int, device: torch.device) -> Any:
    """DeepSpeed's engine around ``stage``, with Adafactor when the run asks for it."""
    import deepspeed

    ds_config = build_deepspeed_config(
        cfg.train, cfg.data, world_size=world, device_type=device.type
    )
    client_opt = None
    if cfg.train.optimizer == "adafactor":
        # Under ZeRO 1-3 DeepSpeed hands the optimizer flat 1-D fp32 partitions, so Adafactor
        # keeps unfactored second moments there (Adam's exp_avg_sq size, without exp_avg);
        # its factored row/column statistics apply at ZeRO 0, where it sees the real shapes.
        client_opt = torch.optim.Adafactor(
            stage.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
    engine, _, _, _ = deepspeed.initialize(
        model=stage,
        model_parameters=[p for p in stage.parameters() if p.requires_grad],
        optimizer=client_opt,
        config=ds_config,
    )
    return engine


def _resume(w: _Worker, resume: Any) -> None:
    """Restore from ``resume`` (this run's latest Ray Train checkpoint, after a failure) or
    else from ``args.resume_from``; neither: a fresh start."""
    name, console = w.cfg.stage.name, w.args.console
    if resume is not None:  # a restart after a failure: this run's latest checkpoint
        with resume.as_directory() as d:
            how = _restore(Path(d), w)
        if w.rank == 0:
            say(f"[{name}] restarted from its latest checkpoint {how}", console)
    elif w.args.resume_from:  # a local directory, or a URI every worker downloads
        with storage.local_dir(w.args.resume_from, what="checkpoint") as d:
            how = _restore(d, w)
        if w.rank == 0:
            say(f"[{name}] resumed from {w.args.resume_from} {how}", console)


def _start_tracking(w: _Worker) -> None:
    """Rank 0's sample grids and W&B run (resumed when the checkpoint names one)."""
    from imagen_ray.train.tracking import start_wandb

    local_dir = storage.local_run_dir(w.args.run_dir)  # a run URI: synced to it below
    w.grids = SampleGrids(w.cfg, text_dim=w.args.text_dim, run_dir=local_dir)
    w.wandb_run = start_wandb(w.cfg, local_dir, w.state.wandb_run_id)
    w.state.wandb_run_id = w.wandb_run.id if w.wandb_run is not None else None


# ------------------------------------------------------------------------- loop


def _train(w: _Worker, batches: Iterator[dict[str, Tensor]]) -> None:
    """Micro batches until ``train.steps`` optimizer steps; a report when one is due."""
    cfg = w.cfg
    streak = NonFiniteStreak(cfg.train.nan_patience)  # non-finite losses/gradients in a row
    perf = TrainPerf.for_run(cfg, w.args.text_dim, w.device)  # FLOPs, MFU, peak GPU memory
    window = Window(perf)
    t_start = time.perf_counter()
    while w.state.step < cfg.train.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        t_data = time.perf_counter() - t0
        if not _micro_step(w, batch, streak, window, t0, t_data):
            continue
        last = w.state.step == cfg.train.steps
        due_log = w.state.step % cfg.train.log_every == 0 or last
        due_ckpt = w.state.step % cfg.train.checkpoint_every == 0 or last
        if not (due_log or due_ckpt):
            continue
        _report(w, batch, window, t_start, checkpoint=due_ckpt)
        window = Window(perf)


def _micro_step(
    w: _Worker,
    batch: dict[str, Tensor],
    streak: NonFiniteStreak,
    window: Window,
    t0: float,
    t_data: float,
) -> bool:
    """Forward and backward on one micro batch, and the optimizer step at an accumulation
    boundary unless the loss or the gradients are non-finite. True when an optimizer step
    completed (``w.state.step`` advanced)."""
    cfg, engine, state = w.cfg, w.engine, w.state
    x0 = w.paths.image(batch["image"], w.device)  # (B, 3, S, S)
    emb = w.paths.tokens(batch["emb"], w.device)  # (B, L, D)
    mask = batch["mask"].to(w.device)  # (B, L)
    lowres = w.paths.image(batch["lowres"], w.device) if "lowres" in batch else None

    loss = engine(x0, emb, mask, lowres, generator=w.gen).float().mean()  # autocast inside
    finite = all_ranks_true(bool(torch.isfinite(loss)), w.device)
    state.micro_batches += 1
    if not finite:
        engine.zero_grad()
        state.nonfinite_skipped += 1
        streak.skipped("loss", step=state.step + 1)
        return False
    boundary = engine.is_gradient_accumulation_boundary()
    engine.backward(loss)
    if boundary:
        for hook in w.args.hooks:
            hook.before_step(w.step_ctx())
    # A finite loss can still give NaN/inf gradients (an overflow in backward): the step
    # is skipped as for a non-finite loss. fp16 is left to its dynamic loss scale, whose
    # overflow skips are routine (counted in nonfinite_skipped, not as a streak).
    check_grads = cfg.train.resolved_precision != "fp16"
    outcome = guarded_step(engine, w.device, boundary=boundary, check_grads=check_grads)
    if outcome != "stepped":
        state.nonfinite_skipped += 1
        if outcome == "gradient":
            streak.skipped("gradient", step=state.step + 1)
        return False
    streak.reset()
    window.add(loss.item(), x0.shape[0], t_data, time.perf_counter() - t0)
    if not boundary:
        return False
    w.ema.update()
    state.step += 1
    state.samples += x0.shape[0] * w.world * cfg.train.grad_accum
    for hook in w.args.hooks:
        hook.after_step(w.step_ctx())
    return True


def _report(
    w: _Worker, batch: dict[str, Tensor], window: Window, t_start: float, *, checkpoint: bool
) -> None:
    """Metrics for the window just ended, to Ray Train (with a checkpoint when
    ``checkpoint``), the console and W&B; a sample grid when one is due."""
    import ray.train

    cfg, state = w.cfg, w.state
    metrics = window.metrics(w.engine, w.device, w.world)
    metrics.update(
        step=state.step,
        samples_seen=state.samples,
        nonfinite_skipped=state.nonfinite_skipped,
        elapsed_s=round(time.perf_counter() - t_start, 2),
    )
    for hook in w.args.hooks:
        metrics.update(hook.metrics(w.step_ctx()))
    if w.rank == 0:
        print_progress(cfg, state.step, metrics, t_start, w.args.console)
        log_metrics(w.wandb_run, metrics, state.step)  # every numeric metric, vs step
    if cfg.train.sample_every and state.step % cfg.train.sample_every == 0:
        _log_samples(w.ema, batch, state.step, w.wandb_run, w.grids)
    if checkpoint:
        with tempfile.TemporaryDirectory(prefix="imagen-ray-ckpt-") as tmp:
            _save(Path(tmp), w, metrics)
            problem = _no_room(Path(tmp), w)
            persisted = None if problem else _persist(Path(tmp), w)
            if isinstance(persisted, ray.train.Checkpoint):
                ray.train.report(
                    metrics,
                    checkpoint=persisted,
                    checkpoint_dir_name=persist.name_of(persisted),
                    checkpoint_upload_mode=ray.train.CheckpointUploadMode.NO_UPLOAD,
                )
            else:  # the last complete checkpoint stays the latest; training goes on
                metrics[CHECKPOINT_SKIPPED] = str(problem or persisted)
                if w.rank == 0:
                    say(
                        f"[{cfg.stage.name}] step {state.step}: checkpoint not written: "
                        f"{metrics[CHECKPOINT_SKIPPED]}",
                        w.args.console,
                    )
                ray.train.report(metrics)
        if w.rank == 0:
            storage.sync_run_files(w.args.run_dir)  # W&B files, sample grids
    else:
        ray.train.report(metrics)


CHECKPOINT_SKIPPED = "checkpoint/not_written"  # a metric: why the step's checkpoint is missing


def _no_room(local: Path, w: _Worker) -> Any:
    """A :class:`~imagen_ray.fs.NoSpaceError` when the run directory's filesystem cannot
    take the checkpoint just written locally (every rank's part together), else None.
    Object stores report no free space: there the upload itself says when it fails.
    (A collective: every rank calls it.)"""
    from imagen_ray.fs import NoSpaceError, free_bytes, tree_bytes

    run_dir = w.args.run_dir
    if not run_dir or storage.is_uri(run_dir):
        return None
    need = torch.tensor([float(tree_bytes(local))], dtype=torch.float64, device=w.device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(need)
    free = free_bytes(run_dir)
    fits = free is None or free >= need.item() + 2**20
    if all_ranks_true(fits, w.device):
        return None
    cfg, step = w.cfg, w.state.step
    if step >= cfg.train.steps:
        note = (
            "the run ends without its last checkpoint; the last one written stays the latest: "
            "free space and rerun the same command to train the steps since it again"
        )
    else:
        note = (
            f"training goes on and tries again at step "
            f"{min(step + cfg.train.checkpoint_every, cfg.train.steps)}; "
            "the last checkpoint written stays the latest"
        )
    return NoSpaceError(run_dir, int(need.item()), free, note=note)


def _persist(local: Path, w: _Worker) -> Any:
    """:func:`imagen_ray.train.persist.persist_part` for this worker; when it fails, why
    and what happens next. (A collective.)"""
    cfg, step = w.cfg, w.state.step

    def phase(name: str) -> None:
        for hook in w.args.hooks:
            hook.during_checkpoint(w.step_ctx(), name)

    got = persist.persist_part(
        local,
        retry_s=cfg.train.upload_retry_s,
        rank=w.rank,
        device=w.device,
        tell=lambda line: say(
            f"[{cfg.stage.name}] step {step}, rank {w.rank}: {line}", w.args.console
        ),
        phase=phase,
    )
    if not isinstance(got, str):
        return got
    nxt = min(step + cfg.train.checkpoint_every, cfg.train.steps)
    then = "the run ends without it" if step >= cfg.train.steps else f"tries again at step {nxt}"
    return f"{got}; the last complete checkpoint stays the latest, training goes on and {then}"


# -------------------------------------------------------------------- helpers


def _save(d: Path, w: _Worker, metrics: dict[str, Any] | None = None) -> None:
    """Write this rank's part of a checkpoint; the complete marker goes last. The latest
    reported metrics go into its config (exports carry them into the model card).

    Weights or EMA weights with NaN/inf on any rank are refused on every rank before
    anything is written or reported, so the last good checkpoint stays the latest.
    """
    engine, ema, state, rank = w.engine, w.ema, w.state, w.rank
    mine = [(f"weights {n}", local_part(p)) for n, p in engine.module.named_parameters()]
    mine += [(f"EMA {n}", s) for n, s in zip(ema.names, ema.shadow, strict=True)]
    if not all_ranks_true(not nonfinite_names(mine), engine.device):
        require_finite(
            mine,
            what=f"rank {rank} at step {state.step}",
            fix="checkpoint not written (another rank holds them if this lists none). The "
            "last good checkpoint is kept: lower train.lr or check the data, then rerun with "
            "the same name to resume from it",
        )
        raise NonFiniteWeights(
            f"another rank's weights or EMA hold NaN/inf at step {state.step}; checkpoint "
            "not written, the last good one is kept"
        )
    engine.save_checkpoint(str(d), tag=ckpt_io.DS_TAG)
    for hook in w.args.hooks:
        hook.during_checkpoint(w.step_ctx(), "writing")
    ckpt_io.save_rank_files(
        d,
        rank=rank,
        ema_state=ema.state_dict(),
        state={**state.__dict__},
        rng={"generator": w.gen.get_state(), "torch": torch.get_rng_state()},
    )
    if rank == 0:
        ckpt_io.write_config(
            d,
            w.cfg.model_dump(mode="json"),
            text_dim=w.args.text_dim,
            world_size=w.world,
            zero_stage=w.cfg.train.zero_stage,
            step=state.step,
            samples=state.samples,
            metrics={k: v for k, v in (metrics or {}).items() if isinstance(v, (int, float))},
        )
    ckpt_io.mark_complete(d, rank)


def _restore(d: Path, w: _Worker) -> str:
    """Resume weights, optimizer, LR schedule (DeepSpeed), EMA, counters and RNG; on
    another world size or ZeRO stage through :mod:`imagen_ray.train.reshard`. Returns where
    it resumed, for the user ("at step N", and how it was re-sharded)."""
    engine, ema, gen, state, rank = w.engine, w.ema, w.gen, w.state, w.rank
    meta = ckpt_io.read_config(d)
    world = dist.get_world_size() if dist.is_initialized() else 1
    rng: dict[str, Tensor] | None
    same = reshard.same_topology(meta, world, int(engine.zero_optimization_stage()))
    if same:
        engine.load_checkpoint(str(d), tag=ckpt_io.DS_TAG)
        ema.load_state_dict(ckpt_io.load_ema_state(d, rank))
        saved, rng = ckpt_io.load_rank_state(d, rank)
    else:
        saved, rng = reshard.restore_resharded(d, meta, engine, ema, rank=rank, world=world)
    for k, v in saved.items():
        setattr(state, k, v)
    if rng is not None:
        gen.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
    else:  # a rank the checkpoint's run did not have
        seed = reshard.new_rank_seed(int(meta["run"]["train"]["seed"]), state.step, rank)
        gen.manual_seed(seed)
        torch.manual_seed(seed + 1)
    if same:
        return f"at step {meta['step']}"
    return (
        f"at step {meta['step']} (re-sharded from {meta['world_size']} workers, "
        f"ZeRO {meta['zero_stage']})"
    )


def _log_samples(
    ema: EMA,
    batch: dict[str, Tensor],
    step: int,
    wandb_run: Any,
    grids: SampleGrids | None,
) -> None:
    """A sample grid with the EMA weights (every rank joins the ZeRO-3 gather; only rank 0,
    which holds ``grids``, samples)."""
    weights = ema.full_state_dict()
    if grids is not None:
        grids.log(weights, batch, step, wandb_run)
