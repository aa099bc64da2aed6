"""The resume arithmetic of :mod:`imagen_ray.data.position` and the batch factories' start
positions (no Ray cluster): a resumed epoch lays out the same shard order and passes over
exactly the samples taken, and the in-memory batches start at the position by index."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import torch

from imagen_ray.config import RunConfig
from imagen_ray.data.position import count_tar_samples, shard_order, shard_sample_counts, skip_plan
from imagen_ray.train.batches import DataPosition, WorkerContext, random_batches, resume_batches
from imagen_ray.train.loop import RunState

COUNTS = {"a": 5, "b": 3, "c": 4}


def write_tar(path: Path, keys: list[str], exts: tuple[str, ...] = ("png", "txt")) -> None:
    with tarfile.open(path, "w") as tar:
        for key in keys:
            for ext in exts:
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))


def test_shard_order_is_a_seeded_permutation_per_epoch() -> None:
    paths = [f"s{i:02d}" for i in range(20)]
    orders = [shard_order(paths, seed=3, epoch=e) for e in range(3)]
    assert all(sorted(o) == paths for o in orders)
    assert len({tuple(o) for o in orders}) == 3  # a new order each epoch
    assert shard_order(paths, seed=3, epoch=1) == orders[1]  # fixed by (seed, epoch)
    assert shard_order(paths, seed=4, epoch=1) != orders[1]
    assert shard_order(paths, seed=3, epoch=1, shuffle=False) == paths


def test_skip_plan_drops_whole_shards_and_the_head_of_the_next() -> None:
    order = ["a", "b", "c"]  # 5 + 3 + 4 = 12 samples
    assert skip_plan(order, COUNTS.__getitem__, 0) == (order, 0, 0)
    assert skip_plan(order, COUNTS.__getitem__, 2) == (order, 2, 0)
    assert skip_plan(order, COUNTS.__getitem__, 5) == (["b", "c"], 0, 5)  # a shard's end
    assert skip_plan(order, COUNTS.__getitem__, 7) == (["b", "c"], 2, 5)
    assert skip_plan(order, COUNTS.__getitem__, 11) == (["c"], 3, 8)
    assert skip_plan(order, COUNTS.__getitem__, 12) == ([], 0, 12)  # the epoch is done
    assert skip_plan(order, COUNTS.__getitem__, 50) == ([], 0, 12)


def test_skip_plan_counts_only_the_shards_it_passes() -> None:
    asked: list[str] = []

    def count(path: str) -> int:
        asked.append(path)
        return 10

    order = [f"s{i}" for i in range(1000)]
    kept, first, dropped = skip_plan(order, count, 25)
    assert (len(kept), first, dropped) == (998, 5, 20)
    assert asked == ["s0", "s1", "s2"]  # not the 997 shards after the position


def test_counts_come_from_summary_json_or_the_tar_headers(tmp_path: Path) -> None:
    write_tar(tmp_path / "shard-000000.tar", [f"k{i}" for i in range(4)])
    write_tar(tmp_path / "shard-000001.tar", [f"d/k{i}" for i in range(7)], ("jpg", "json"))
    paths = [str(tmp_path / f"shard-00000{i}.tar") for i in range(2)]
    assert [count_tar_samples(p) for p in paths] == [4, 7]
    assert shard_sample_counts(paths) == {}  # no summary.json
    summary = {"shards": ["shard-000000.tar"], "shard_samples": [40]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert shard_sample_counts(paths) == {paths[0]: 40}  # the summary wins where it lists one
    cut = tmp_path / "cut.tar"
    cut.write_bytes((tmp_path / "shard-000000.tar").read_bytes()[:4096])  # 2 samples, no end
    assert count_tar_samples(str(cut)) == 2


def _cfg(tmp_path: Path) -> RunConfig:
    return RunConfig.model_validate(
        {
            "stage": {"name": "base", "size": 8},
            "data": {"shards": str(tmp_path), "batch_size": 2},
            "train": {"storage_path": str(tmp_path)},
        }
    )


def test_random_batches_start_at_the_position_by_index(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    straight = list(itertools.islice(random_batches(WorkerContext(cfg, 0, 2, 16)), 11))
    # 6 micro batches of 2 rows on each of 2 workers taken: 24 samples
    start = WorkerContext(cfg, 0, 2, 16, start=DataPosition(0, 24))
    resumed = list(itertools.islice(random_batches(start), 5))
    for a, b in zip(resumed, straight[6:], strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["emb"], b["emb"])


def test_resume_batches_track_the_position_and_resume_old_checkpoints(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    ctx = WorkerContext(cfg, 0, 2, 16)
    state = RunState()
    stream = resume_batches(random_batches, ctx, state)
    straight = [next(stream) for _ in range(7)]
    assert (state.epoch, state.epoch_samples) == (0, 7 * 2 * 2)

    resumed = RunState(micro_batches=5, epoch=0, epoch_samples=20)
    first = next(resume_batches(random_batches, ctx, resumed))
    assert torch.equal(first["image"], straight[5]["image"])
    assert resumed.epoch_samples == 24

    old = RunState(micro_batches=5)  # a checkpoint from before the position was kept
    first = next(resume_batches(random_batches, ctx, old))
    assert torch.equal(first["image"], straight[5]["image"])
