"""Re-sharding logic of the elastic resume without Ray or DeepSpeed: ZeRO-3 partitions,
EMA re-partitioning, the RNG seeds of new ranks, and the launcher's checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from imagen_ray.train.ema import EMA, consolidate_partitions
from imagen_ray.train.reshard import new_rank_seed, zero3_partition, zero3_unpartition
from tests.train.conftest import tiny_cfg


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_zero3_partitions_round_trip_and_pad_with_zeros(world: int) -> None:
    full = torch.arange(1.0, 22.0).reshape(3, 7)  # 21 elements
    parts = [zero3_partition(full, world, r) for r in range(world)]
    assert {p.numel() for p in parts} == {-(-21 // world)}  # ceil(21 / world) each
    assert torch.equal(zero3_unpartition(parts, [3, 7]), full)
    padding = torch.cat(parts)[21:]
    assert torch.all(padding == 0)


def _zero3_module(weights: dict[str, torch.Tensor], world: int, rank: int) -> nn.Module:
    """A module whose parameters look ZeRO-3 partitioned (``ds_tensor``, ``ds_shape``)."""
    m = nn.Module()
    for name, w in weights.items():
        p = nn.Parameter(torch.empty(0))
        p.ds_tensor = zero3_partition(w, world, rank).clone()  # type: ignore[attr-defined]
        p.ds_shape = w.shape  # type: ignore[attr-defined]
        m.register_parameter(name, p)
    return m


def test_ema_reshards_from_two_zero3_ranks_to_three_and_to_replicated() -> None:
    g = torch.Generator().manual_seed(0)
    full = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(7, generator=g)}
    old = []
    for r in range(2):
        ema = EMA(_zero3_module(full, 2, r), decay=0.9)
        ema.num_updates = 6
        old.append(ema.state_dict())
    weights = consolidate_partitions(old)
    for k in full:
        assert torch.equal(weights[k], full[k])
    for r in range(3):  # 2 ZeRO-3 ranks -> 3 ZeRO-3 ranks: each gets its own slice
        ema = EMA(_zero3_module({k: torch.zeros_like(v) for k, v in full.items()}, 3, r), 0.9)
        ema.load_full(weights, num_updates=6, rank=r, world=3)
        assert ema.num_updates == 6
        for name, s in zip(ema.names, ema.shadow, strict=True):
            assert torch.equal(s, zero3_partition(full[name], 3, r))
    plain = nn.Module()  # -> a replicated (ZeRO 0-2) module
    for k, v in full.items():
        plain.register_parameter(k, nn.Parameter(torch.zeros_like(v)))
    ema = EMA(plain, 0.9)
    ema.load_full(weights, num_updates=6, rank=0, world=1)
    for name, s in zip(ema.names, ema.shadow, strict=True):
        assert torch.equal(s, full[name])
    with pytest.raises(KeyError, match="lack 1 parameters"):
        ema.load_full({"w": full["w"]}, num_updates=6, rank=0, world=1)


def test_new_ranks_get_distinct_repeatable_seeds() -> None:
    seeds = {new_rank_seed(0, 5, r) for r in range(64)}
    assert len(seeds) == 64
    assert new_rank_seed(0, 5, 3) == new_rank_seed(0, 5, 3) != new_rank_seed(0, 6, 3)
    assert new_rank_seed(1, 5, 3) != new_rank_seed(0, 5, 3)


def _fake_checkpoint(tmp: Path, world: int, *sets: str) -> Path:
    """A checkpoint directory with only what the launcher reads: config.json + markers."""
    cfg = tiny_cfg(tmp, "src", *sets)
    d = tmp / "src" / "checkpoint_000000"
    (d / "complete").mkdir(parents=True)
    for r in range(world):
        (d / "complete" / f"rank_{r:05d}").write_text("ok\n")
    meta = {
        "run": cfg.model_dump(mode="json"),
        "world_size": world,
        "zero_stage": cfg.train.zero_stage,
        "step": 5,
    }
    (d / "config.json").write_text(json.dumps(meta))
    return d


def test_launcher_accepts_another_topology_and_refuses_what_cannot_convert(
    tmp_path: Path,
) -> None:
    from imagen_ray.train.launcher import LaunchError, resolve_resume

    ckpt = _fake_checkpoint(tmp_path, 2, "train.zero_stage=2")
    for sets in (("train.num_workers=1",), ("train.zero_stage=3",), ("train.zero_stage=0",)):
        assert resolve_resume(tiny_cfg(tmp_path, "r", *sets), str(ckpt)) == str(ckpt)
    with pytest.raises(LaunchError, match=r"ZeRO 0 run in bf16"):
        bf16 = ("train.zero_stage=0", "train.precision=bf16")
        resolve_resume(tiny_cfg(tmp_path, "r", *bf16), str(ckpt))
    with pytest.raises(LaunchError, match=r"train\.optimizer=adamw, this run has adafactor"):
        resolve_resume(tiny_cfg(tmp_path, "r", "train.optimizer=adafactor"), str(ckpt))
    with pytest.raises(LaunchError, match=r"stage \(model\) config differs"):
        resolve_resume(tiny_cfg(tmp_path, "r", "stage.unet.channels=32"), str(ckpt))

    ada = _fake_checkpoint(tmp_path / "a", 2, "train.zero_stage=0", "train.optimizer=adafactor")
    ok = tiny_cfg(tmp_path, "r", "train.zero_stage=0", "train.optimizer=adafactor")
    assert resolve_resume(ok.model_copy(), str(ada)) == str(ada)
    with pytest.raises(LaunchError, match=r"factored at ZeRO 0 .* ZeRO 0 -> train\.zero_stage=2"):
        bad = ("train.zero_stage=2", "train.optimizer=adafactor")
        resolve_resume(tiny_cfg(tmp_path, "r", *bad), str(ada))
