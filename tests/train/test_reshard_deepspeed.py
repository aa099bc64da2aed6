"""Re-sharding against real DeepSpeed engines without Ray: 2 gloo processes train 3 steps
at one ZeRO stage and checkpoint, then 3 more; another process group of another size and
ZeRO stage loads the checkpoint through ``imagen_ray.train.reshard`` and trains the same 3
steps on the same global batch. With AdamW the weights must match bit for bit."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

GLOBAL_MICRO = 2  # micro batches per step: 2 ranks x 1, or 1 rank x 2 accumulation steps


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _engine(world: int, stage: int, optimizer: str):
    import deepspeed

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": GLOBAL_MICRO // world,
        "train_batch_size": 2 * GLOBAL_MICRO,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 1.0,
        "steps_per_print": 10**9,
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {"total_num_steps": 10, "warmup_num_steps": 2},
        },
    }
    client = None
    if optimizer == "adamw":
        cfg["optimizer"] = {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}}
    else:
        cfg["zero_allow_untested_optimizer"] = True
        client = torch.optim.Adafactor(m.parameters(), lr=1e-2)
    engine, *_ = deepspeed.initialize(
        model=m, model_parameters=list(m.parameters()), optimizer=client, config=cfg
    )
    return engine


def _train(engine, rank: int, world: int, steps: range) -> None:
    accum = GLOBAL_MICRO // world
    for step in steps:
        for a in range(accum):  # global micro batch j = rank * accum + a, the same data
            g = torch.Generator().manual_seed(step * 10 + rank * accum + a)
            loss = engine(torch.randn(2, 5, generator=g)).pow(2).mean()
            engine.backward(loss)
            engine.step()


def _worker(rank, world, stage, optimizer, port, ckpt, mode, out) -> None:
    import deepspeed
    import torch.distributed as dist

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
        WORLD_SIZE=str(world), LOCAL_RANK=str(rank), DS_ACCELERATOR="cpu",
    )  # fmt: skip
    dist.init_process_group("gloo", rank=rank, world_size=world)
    engine = _engine(world, stage, optimizer)
    if mode == "straight":
        _train(engine, rank, world, range(3))
        engine.save_checkpoint(ckpt, tag="ds")
    else:
        from imagen_ray.train import reshard

        full = reshard.read_full_state(Path(ckpt) / "ds", reshard.trainable_names(engine.module))
        reshard.load_full_state(engine, full, rank=rank, world=world)
        assert engine.global_steps == 3
    _train(engine, rank, world, range(3, 6))
    weights = {}
    for n, p in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            weights[n] = p.data.detach().float().clone()
    if rank == 0:
        torch.save(weights, out)
    dist.barrier()
    dist.destroy_process_group()
    # skip C++ static destructors: a gloo/shm thread aborted one exit here
    # ("terminate called without an active exception") after all work was done
    os._exit(0)


@pytest.mark.parametrize(
    ("src", "dst", "optimizer"),
    [((2, 2), (1, 2), "adamw"), ((2, 3), (1, 0), "adamw"), ((2, 2), (2, 2), "adafactor")],
    ids=["zero2x2-to-zero2x1", "zero3x2-to-zero0x1", "adafactor-zero2x2-through-reshard"],
)
def test_resharded_training_continues_bit_for_bit(tmp_path: Path, src, dst, optimizer) -> None:
    import torch.multiprocessing as mp

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
    ckpt = str(tmp_path / "ckpt")
    for (world, stage), mode in ((src, "straight"), (dst, "resume")):
        args = (world, stage, optimizer, _port(), ckpt, mode, str(tmp_path / f"{mode}.pt"))
        mp.spawn(_worker, args=args, nprocs=world)
    straight, resumed = torch.load(tmp_path / "straight.pt"), torch.load(tmp_path / "resume.pt")
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
