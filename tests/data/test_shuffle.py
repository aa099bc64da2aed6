"""Per-epoch shuffling through the real Ray Data pipeline: shard order, shuffle buffer and
random crops change every epoch, and the same ``data.seed`` repeats all of it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_ray.config import RunConfig
from imagen_ray.data.epochs import epoch_seed
from imagen_ray.data.pipeline import build_dataset, iter_training_batches

ray = pytest.importorskip("ray")

SHARDS, PER_SHARD, WIDTH, STEP = 4, 6, 48, 5  # 24 samples of 48 x 16 px


def sample_png(index: int) -> bytes:
    """48 x 16 px: red = 5 * x (a crop's left edge shows its offset), blue = the sample id."""
    img = np.zeros((16, WIDTH, 3), np.uint8)
    img[..., 0] = (np.arange(WIDTH) * STEP)[None, :]
    img[..., 2] = 8 * index + 4
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(out: Path) -> None:
    for s in range(SHARDS):
        with tarfile.open(out / f"shard-{s:06d}.tar", "w") as tar:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                for ext, data in (("png", sample_png(i)), ("txt", f"sample {i}".encode())):
                    info = tarfile.TarInfo(f"k{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def run_epochs(shards: Path, seed: int, epochs: int = 2) -> list[list[tuple[int, int]]]:
    """(sample id, crop offset) in the order a Ray Train worker gets them, per epoch."""
    cfg = RunConfig.model_validate(
        {
            "stage": {"name": "base", "size": 16},
            "data": {
                "shards": str(shards),
                "batch_size": 4,
                "crop": "random",
                "shuffle_buffer": 8,
                "seed": seed,
                "preserve_order": True,
                "read_tasks": 1,
                "map_tasks": 1,
            },
        }
    )
    ds, _ = build_dataset(cfg, text=False)
    [split] = ds.streaming_split(1)  # what Ray Train hands the one worker
    out = []
    for epoch in range(epochs):
        seen = []
        for batch in iter_training_batches(split, cfg.data, epoch=epoch):
            pixels = (batch["image"][:, :, 0, 0] + 1) * 127.5  # (B, 3): the top-left pixel
            ids = ((pixels[:, 2] - 4) / 8).round().int().tolist()
            offsets = (pixels[:, 0] / STEP).round().int().tolist()
            seen += list(zip(ids, offsets, strict=True))
        out.append(seen)
    return out


def test_epoch_seed_mixes_seed_epoch_and_rank():
    seeds = {epoch_seed(s, e, r) for s in (0, 1) for e in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12 and epoch_seed(0, 1, 0) == epoch_seed(0, 1, 0)


@pytest.mark.slow
def test_epochs_differ_in_order_and_crops_and_the_seed_repeats_them(ray_cluster, tmp_path):
    write_shards(tmp_path)
    first, second = run_epochs(tmp_path, seed=3)
    everything = list(range(SHARDS * PER_SHARD))
    assert sorted(i for i, _ in first) == everything  # every sample once per epoch
    assert sorted(i for i, _ in second) == everything
    assert [i for i, _ in first] != [i for i, _ in second]  # a new order
    assert all(0 <= off <= WIDTH - 16 for _, off in first + second)
    crops0, crops1 = dict(first), dict(second)
    assert sum(crops0[i] != crops1[i] for i in everything) > len(everything) // 2  # new crops
    assert run_epochs(tmp_path, seed=3) == [first, second]  # the seed repeats both epochs
    assert run_epochs(tmp_path, seed=4, epochs=1)[0] != first


@pytest.mark.slow
def test_shard_order_is_new_each_epoch_and_fixed_by_the_seed(ray_cluster, tmp_path):
    from imagen_ray.data.epochs import EpochShardsDatasource

    write_shards(tmp_path)
    paths = sorted(str(p) for p in tmp_path.glob("*.tar"))

    def order(seed: int, epoch: int, shuffle: bool = True) -> list[str]:
        source = EpochShardsDatasource(paths, seed=seed, shuffle_files=shuffle)
        ctx = source._data_context.copy()
        ctx._execution_idx = epoch  # what Ray sets before the epoch-th execution
        tasks = source.get_read_tasks(len(paths), data_context=ctx)
        return [f for t in tasks for f in t.metadata.input_files]

    orders = [order(3, e) for e in range(4)]
    assert all(sorted(o) == paths for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # 4 epochs of 4 shards: not all the same
    assert order(3, 1) == orders[1]  # the seed and epoch fix it
    assert order(3, 1, shuffle=False) == paths
