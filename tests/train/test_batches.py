"""Batch factories, the per-worker arguments and the step hooks, without Ray (fast)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import cloudpickle
import pytest
import torch
from torch import nn

from imagen_ray.config import load_run_config
from imagen_ray.train.batches import WorkerContext, random_batches, shard_batches
from imagen_ray.train.hooks import StepContext, StepHook
from imagen_ray.train.loop import WorkerArgs
from imagen_ray.train.memory import ModelStateMemory
from tests.train.conftest import ROOT, TEXT_DIM, tiny_cfg
from tests.train.faults import KillWorker, NaNBatches


def _ctx(tmp_path, *extra: str, rank: int = 0) -> WorkerContext:
    return WorkerContext(tiny_cfg(tmp_path, "b", *extra), rank, 2, TEXT_DIM)


def test_random_batches_are_seeded_per_rank_and_cycle(tmp_path) -> None:
    ctx = _ctx(tmp_path)
    first = list(itertools.islice(random_batches(ctx), 5))
    again = list(itertools.islice(random_batches(ctx), 5))
    other = next(random_batches(_ctx(tmp_path, rank=1)))
    b = first[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["emb"].shape == (4, 8, TEXT_DIM)
    assert b["mask"].shape == (4, 8) and b["mask"].dtype == torch.bool
    assert b["image"].min() >= -1 and b["image"].max() <= 1 and "lowres" not in b
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(first, again, strict=True))
    assert torch.equal(first[4]["image"], first[0]["image"])  # a cycle of 4
    assert not torch.equal(other["image"], b["image"])  # each rank its own data


def test_random_batches_of_an_sr_stage_carry_the_lowres_input() -> None:
    cfg = load_run_config(ROOT / "configs/tiny/sr64.yaml", ["data.batch_size=2"])
    b = next(random_batches(WorkerContext(cfg, 0, 1, TEXT_DIM)))
    lowres = cfg.stage.lowres_size
    assert b["image"].shape[-1] == 64 and b["lowres"].shape == (2, 3, lowres, lowres)


def test_worker_args_cross_the_ray_boundary_as_plain_data_and_pickles(tmp_path) -> None:
    cfg = tiny_cfg(tmp_path, "w")
    hook = KillWorker(rank=1, step=3, marker=str(tmp_path / "m"))
    args = WorkerArgs(run=cfg, text_dim=TEXT_DIM, batches=random_batches, hooks=(hook,))
    d = args.to_dict()
    assert d["run"] == cfg.model_dump(mode="json")  # the config as JSON data, not the model
    back = WorkerArgs.from_dict(cloudpickle.loads(cloudpickle.dumps(d)))
    assert back == args
    assert WorkerArgs(run=cfg, text_dim=TEXT_DIM).batches is shard_batches  # the default


def test_nan_batches_poison_exactly_the_given_micro_batches(tmp_path) -> None:
    got = list(itertools.islice(NaNBatches(at=(2, 3))(_ctx(tmp_path)), 4))
    finite = [bool(torch.isfinite(b["image"]).all()) for b in got]
    assert finite == [True, False, False, True]
    assert all(torch.isfinite(b["emb"]).all() for b in got)


def test_model_state_memory_measures_once_in_the_second_step(tmp_path) -> None:
    module = nn.Linear(8, 16)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    engine = SimpleNamespace(module=module, optimizer=opt)
    hook = ModelStateMemory()

    def at(step: int) -> StepContext:
        return StepContext(rank=0, world_size=1, step=step, engine=engine)

    module(torch.randn(2, 8)).sum().backward()
    hook.before_step(at(0))  # step 1: no optimizer state yet, nothing measured
    assert hook.metrics(at(0)) == {}
    opt.step()
    hook.before_step(at(1))
    [rank0] = hook.metrics(at(1))["memory/model_state_bytes"]
    assert rank0["params"] == rank0["grads"] == 144 * 4 and rank0["optimizer"] > 2 * 144 * 4
    module.weight.grad = None
    hook.before_step(at(2))  # measured once: later steps keep the step-2 figures
    assert hook.metrics(at(2))["memory/model_state_bytes"] == [rank0]


def test_a_plain_step_hook_does_nothing() -> None:
    hook, ctx = StepHook(), StepContext(rank=0, world_size=1, step=0, engine=None)
    hook.before_step(ctx)
    hook.after_step(ctx)
    assert hook.metrics(ctx) == {}


@pytest.mark.parametrize("rank, step", [(0, 3), (1, 2)])
def test_kill_worker_spares_other_ranks_and_steps(tmp_path, rank: int, step: int) -> None:
    hook = KillWorker(rank=1, step=3, marker=str(tmp_path / "m"))
    hook.after_step(StepContext(rank=rank, world_size=2, step=step, engine=None))
    assert not (tmp_path / "m").exists()  # and this process is still alive
