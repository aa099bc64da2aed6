"""Fast resume through the real Ray Data pipeline: a resumed epoch reads none of the
samples taken before the checkpoint, so what a resume reads does not grow with the step.

The counts come from the pipeline's stats actor (``ok`` = samples decoded and kept,
``resume_skipped`` = samples passed over unread). With one read task, preserved order and
no shuffle buffer the order is exact, so the resumed stream must equal the uninterrupted
one from the position on, crops included.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from imagen_ray.config import RunConfig
from imagen_ray.data.epochs import RESUME_SKIPPED
from imagen_ray.data.pipeline import build_dataset, read_stats
from imagen_ray.train.batches import DataPosition, ShardStream, WorkerContext
from tests.data.test_shuffle import PER_SHARD, SHARDS, STEP, write_shards

ray = pytest.importorskip("ray")

EPOCH = SHARDS * PER_SHARD  # 24 samples, 6 batches of 4 per epoch
BATCH = 4


def stream(
    shards: Path, start: DataPosition, batches: int, announce: bool = True
) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """(sample id, crop offset) of ``batches`` batches from ``start``, and the stats counts."""
    cfg = RunConfig.model_validate(
        {
            "stage": {"name": "base", "size": 16},
            "data": {
                "shards": str(shards),
                "batch_size": BATCH,
                "crop": "random",
                "shuffle_buffer": 0,
                "seed": 3,
                "preserve_order": True,
                "read_tasks": 1,
                "map_tasks": 1,
            },
        }
    )
    ds, stats = build_dataset(cfg, text=False)
    [split] = ds.streaming_split(1)  # what Ray Train hands the one worker
    ctx = WorkerContext(cfg, rank=0, world_size=1, text_dim=16, start=start)
    seen = []
    for batch in itertools.islice(ShardStream(split, ctx, stats if announce else None), batches):
        pixels = (batch["image"][:, :, 0, 0] + 1) * 127.5  # (B, 3): the top-left pixel
        ids = ((pixels[:, 2] - 4) / 8).round().int().tolist()
        offsets = (pixels[:, 0] / STEP).round().int().tolist()
        seen += list(zip(ids, offsets, strict=True))
    return seen, read_stats(stats, min_ok=len(seen))


@pytest.mark.slow
def test_a_resume_reads_nothing_it_skips_at_any_step(ray_cluster, tmp_path: Path) -> None:
    write_shards(tmp_path)  # no summary.json: shard sizes come from the tar headers
    straight, _ = stream(tmp_path, DataPosition(), 2 * EPOCH // BATCH)  # two epochs
    reads = {}
    for epoch, taken in ((0, 8), (1, 20)):  # micro batch 2 and 11: mid-shard both times
        left = EPOCH - taken
        seen, counts = stream(tmp_path, DataPosition(epoch, taken), left // BATCH)
        at = epoch * EPOCH + taken
        assert seen == straight[at : at + left], f"resumed at {at}: not the same samples"
        assert counts[RESUME_SKIPPED] == taken  # passed over unread
        reads[at] = counts["ok"] - left  # decoded beyond what the resumed epoch trains on
    assert reads == {8: 0, 44: 0}, reads  # bounded (here: none) and not growing with the step
    # Drawing the batches again instead (the way without the stats actor) decodes them all.
    replayed, counts = stream(tmp_path, DataPosition(1, 20), 1, announce=False)
    assert replayed == straight[44:48]
    assert counts["ok"] >= 44 + BATCH and RESUME_SKIPPED not in counts
