"""Shards on S3 that fail to read, through the training data pipeline: moto's S3 server
behind a proxy that breaks chosen requests (tests/faultproxy.py).

Of four shards: one is throttled (503) for its first requests, one fails mid-read twice,
one stays unreadable (403), one is fine. The read retries the first two and reads every
sample of them; the third is skipped, counted once as ``data/skipped_shards`` and named
in a warning; nothing fails the dataset.
"""

from __future__ import annotations

import os

import pytest

from imagen_ray import storage
from tests.faultproxy import FaultProxy
from tests.s3server import s3_service

BUCKET = "shard-bucket"
PER_SHARD = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Four encoded shards on S3, then a proxy in front of the server, then a Ray cluster
    whose processes reach S3 through the proxy."""
    import ray

    from imagen_ray.config import TextEncoderConfig
    from imagen_ray.data.precompute import encode_shards
    from imagen_ray.data.synthetic import write_synthetic
    from imagen_ray.data.synthetic_spec import SyntheticSpec

    tmp = tmp_path_factory.mktemp("shards")
    spec = SyntheticSpec(num_samples=4 * PER_SHARD, size=16, samples_per_shard=PER_SHARD)
    write_synthetic(spec, tmp / "raw", progress=False)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:  # encoded locally; this cluster's processes never see the proxy
        encode_shards(tmp / "raw", tmp / "enc", TextEncoderConfig(max_length=8), writers=1)
    finally:
        ray.shutdown()
    with s3_service(BUCKET) as server:
        storage.upload_dir(tmp / "enc", f"s3://{BUCKET}/enc")
        rules = {
            "shard-000001.tar": ("503", 4),
            "shard-000002.tar": ("403", -1),
            "shard-000003.tar": ("cut", 2),
        }
        with FaultProxy(server.endpoint, rules) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint  # s3_service restores it
            ray.init(address="local", num_cpus=2, include_dashboard=False)
            try:
                yield f"s3://{BUCKET}/enc", proxy
            finally:
                ray.shutdown()


@pytest.mark.slow
def test_shards_that_fail_are_retried_and_those_that_stay_unreadable_are_skipped(
    shards, capfd
) -> None:
    from imagen_ray.config import RunConfig
    from imagen_ray.data.pipeline import build_dataset, read_stats

    uri, proxy = shards
    cfg = RunConfig.model_validate(
        {
            "text": {"max_length": 8},
            "stage": {"name": "base", "size": 16},
            "data": {"shards": uri, "batch_size": 4, "precomputed": True},
        }
    )
    ds, stats = build_dataset(cfg, keep=("__key__",))
    keys = [k for b in ds.iter_batches(batch_size=4, batch_format="numpy") for k in b["__key__"]]
    counts = read_stats(stats, min_ok=len(keys))
    # every sample of the three readable shards, each once; the unreadable one skipped
    assert len(keys) == len(set(keys)) == 3 * PER_SHARD, sorted(keys)
    assert counts["ok"] == 3 * PER_SHARD and counts["skipped_shards"] == 1, counts
    assert proxy.hits["shard-000001.tar"] > 4  # throttled 4 times, then read
    assert proxy.hits["shard-000003.tar"] > 2  # cut twice, then read
    assert proxy.left["shard-000001.tar"] == 0 and proxy.left["shard-000003.tar"] == 0
    # the user sees which shard was skipped (Ray forwards the read task's stderr)
    seen = ""
    for _ in range(40):
        out, err = capfd.readouterr()
        seen += out + err
        if "shard-000002.tar could not be read" in seen:
            break
        import time

        time.sleep(0.25)
    assert f"{BUCKET}/enc/shard-000002.tar could not be read" in seen, seen[-3000:]
    assert "AccessDenied" in seen or "Access Denied" in seen or "ACCESS_DENIED" in seen
