"""This machine's own figure for a CPU plan: a stage's training step, timed here.

A plan for CPU workers cannot take a datasheet peak: it times the stage here. ``ranks``
processes start side by side (as a run's workers share the machine's cores), each with
``train.cpus_per_worker`` torch threads, join one gloo group and build the run's own
DeepSpeed engine (``imagen_ray.train.loop.build_engine``: its ZeRO stage, optimizer and
precision); each times forward + backward + the optimizer step, gradient sync included, at
the run's micro batch on random data. The slowest rank's median is the plan's *measured*
step time, labelled with the date. What a full run adds (Ray Train's loop, the data, the
EMA, logging) is what ``bench/plan.py`` measures against it.
"""

from __future__ import annotations

import datetime
import os
import queue
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from imagen_ray.config import RunConfig
from imagen_ray.plan.figures import Figure


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(
    rank: int, ranks: int, port: int, cfg_json: str, text_dim: int, steps: int, q: Any, log: str
) -> None:
    import torch.distributed as dist

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)  # DeepSpeed's chatter: a log
    os.dup2(fd, 1)
    os.dup2(fd, 2)

    from imagen_ray.cascade import Stage
    from imagen_ray.config import RunConfig
    from imagen_ray.train.loop import build_engine

    cfg = RunConfig.model_validate_json(cfg_json)
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(rank)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(ranks), LOCAL_WORLD_SIZE=str(ranks), DS_ACCELERATOR="cpu",
    )  # fmt: skip
    dist.init_process_group("gloo", rank=rank, world_size=ranks)
    try:
        engine = build_engine(Stage(cfg.stage, text_dim=text_dim), cfg, ranks, torch.device("cpu"))
        b, side = cfg.data.batch_size, cfg.data.train_crop or cfg.stage.size
        n = cfg.text.max_length
        x0 = torch.randn(b, 3, side, side)
        emb = torch.randn(b, n, text_dim)
        mask = torch.ones(b, n, dtype=torch.bool)
        low = side * (cfg.stage.lowres_size or side) // cfg.stage.size  # the aligned crop
        lowres = torch.randn(b, 3, low, low) if cfg.stage.is_sr else None
        times = []
        for i in range(steps + 2):  # two warm-up steps
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(cfg.train.grad_accum):
                loss = engine(x0, emb, mask, lowres).float().mean()
                engine.backward(loss)
                engine.step()
            if i >= 2:
                times.append((time.perf_counter() - t0) / cfg.train.grad_accum)
        q.put((rank, statistics.median(times)))
    finally:
        dist.destroy_process_group()


def calibrate(cfg: RunConfig, ranks: int, text_dim: int, *, steps: int = 5) -> Figure:
    """Time a stage's training step on this machine with ``ranks`` workers.

    Returns:
        Seconds per micro batch (``measured``), gradient sync included: the slowest rank's
        median over ``steps`` steps after two warm-up steps.

    Raises:
        RuntimeError: a worker died or gave no result (the workers' log is in the message).
    """
    import tempfile

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    fd, log = tempfile.mkstemp(prefix="imagen-ray-plan-", suffix=".log")
    os.close(fd)
    q = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, ranks, port, cfg.model_dump_json(), text_dim, steps, q, log),
            daemon=True,
        )
        for r in range(ranks)
    ]
    for p in procs:
        p.start()
    results: list[tuple[int, float]] = []
    deadline = time.monotonic() + 900
    while len(results) < ranks:
        try:
            results.append(q.get(timeout=5))
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                why = f"exit codes {dead}" if dead else "no result in 900 s"
                tail = Path(log).read_text(errors="replace")[-2000:]
                raise RuntimeError(
                    f"timing the stage on this machine failed ({why}); the workers' log "
                    f"{log} ends:\n{tail}"
                ) from None
    for p in procs:
        p.join(timeout=60)
    Path(log).unlink(missing_ok=True)
    step = max(r[1] for r in results)
    today = datetime.date.today().isoformat()
    threads = max(1, int(cfg.train.cpus_per_worker))
    how = (
        f"timed here on {today}: {ranks} processes x {threads} thread(s), micro batch "
        f"{cfg.data.batch_size}, median of {steps} steps"
    )
    return Figure(
        step,
        "s",
        "measured",
        how + f" of the run's DeepSpeed engine (ZeRO {cfg.train.zero_stage}, gloo)",
    )
