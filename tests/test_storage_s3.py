"""Remote storage end to end against a real S3 API (moto's server on 127.0.0.1).

What a user does with ``train.storage_path=s3://...``: train (a worker is SIGKILLed and Ray
Train restarts the group from the checkpoint on S3), find the checkpoints, the W&B files
and the sample grids in the bucket, ``imagen-ray export --checkpoint s3://... --out
s3://...``, load the exported stage from S3 and sample, ``--resume-from s3://...`` in a new
run; and shards read from S3 through the data pipeline (encoded to S3 first).

Credentials and the endpoint reach the driver, the Ray workers and pyarrow through the
standard AWS environment variables only (tests/s3server.py). Unit tests of the storage
layer are in tests/test_storage.py.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from imagen_ray import storage
from tests.s3server import s3_server
from tests.train.conftest import ROOT, fit, read_wandb_history, tiny_cfg
from tests.train.faults import KillWorker

BUCKET = "runs-bucket"


@pytest.fixture(scope="module")
def cluster():
    """The S3 server first, so the local Ray cluster's processes inherit its environment."""
    import ray

    with s3_server(BUCKET):
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
        ray.init(
            address="local", num_cpus=4, object_store_memory=500 * 1024**2, include_dashboard=False
        )
        try:
            yield f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """The tiny base stage trained with its storage on S3; rank 1 is killed at step 7, 5 s
    after step 5's checkpoint was reported (the controller registers it asynchronously; 1 s
    was not always enough on a busy 2-core machine, and the group restarted from scratch)."""
    root = cluster
    marker = tmp_path_factory.mktemp("kill") / "kill.marker"
    cfg = tiny_cfg(
        Path("unused"),
        "base",
        f"train.storage_path={root}/runs",
        "train.zero_stage=2",
        "train.max_failures=1",
        "train.keep_checkpoints=3",
        "train.sample_every=10",
    )
    res = fit(cfg, hooks=[KillWorker(rank=1, step=7, marker=str(marker), delay_s=5.0)])
    run = f"{root}/runs/base"
    yield res, run, marker
    local = storage.local_run_dir(run)  # rank 0's W&B/sample folder on this (only) node
    if local:
        shutil.rmtree(local, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.cluster
def test_training_on_s3_resumes_after_a_killed_worker_and_keeps_its_files(trained) -> None:
    from imagen_ray.train.checkpoint import find_checkpoint, read_config

    res, run, marker = trained
    assert marker.is_file(), "the worker was never killed"
    assert res.error is None and res.metrics["step"] == 10
    assert str(res.checkpoint.path).startswith(run.removeprefix("s3://"))
    ckpts = [storage.join(run, n) for n in storage.listdir(run) if n.startswith("checkpoint_")]
    ckpts = [c for c in ckpts if storage.is_dir(c)]  # not checkpoint_manager_snapshot.json
    # restarted from step 5's checkpoint on S3: 5, 10 (from scratch it would be 5, 5, 10)
    assert sorted(read_config(c)["step"] for c in ckpts) == [5, 10]
    assert read_config(find_checkpoint(run))["step"] == 10
    files = storage.list_files(run)
    wandb_files = [f for f in files if f.startswith("wandb/") and f.endswith(".wandb")]
    assert len({Path(f).name for f in wandb_files}) == 1, wandb_files  # one W&B run, resumed
    assert all(files[f] > 0 for f in wandb_files)
    # what `wandb sync` reads after the job: the copy in the bucket holds the whole history
    with storage.local_dir(f"{run}/wandb") as d:
        [copy] = sorted(d.glob("offline-run-*/run-*.wandb"))[-1:]
        steps = {r["step"] for r in read_wandb_history(copy) if "loss" in r}
    assert 10 in steps
    assert "samples/step_0000010.png" in files
    assert not any(Path("s3:").glob("**/*")), "files went to a local folder named s3:"


@pytest.mark.slow
@pytest.mark.cluster
def test_export_from_s3_to_s3_then_load_and_sample(trained, capsys) -> None:
    from imagen_ray.cli import main
    from imagen_ray.publish import load_cascade

    _, run, _ = trained
    out = run.replace("/runs/base", "/export/base")
    assert main(["export", "--checkpoint", run, "--out", out]) == 0
    assert f"to {out}" in capsys.readouterr().out
    assert set(storage.listdir(out)) == {"config.json", "model.safetensors"}
    meta = json.loads(storage.read_text(f"{out}/config.json"))
    assert meta["extra"]["step"] == 10 and meta["extra"]["checkpoint"].startswith(run)
    cascade = load_cascade(out)
    image = cascade.generate(["a red circle"], seed=0).uint8()
    side = meta["stage"]["size"]
    assert image.shape == (1, side, side, 3) and image.std() > 0


@pytest.mark.slow
@pytest.mark.cluster
def test_generate_writes_to_s3_and_resumes_there(trained, tmp_path: Path, capsys) -> None:
    """`imagen-ray generate --out s3://...`: the replicas write images and records to S3; a
    rerun lists the prefix and generates nothing."""
    from imagen_ray.cli import main
    from imagen_ray.train.export import export_checkpoint

    _, run, _ = trained
    stage = export_checkpoint(run, tmp_path / "base")  # from S3 to a local directory
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    out = run.replace("/runs/base", "/generated")
    args = ["generate", "--cascade", str(stage), "--prompts", str(prompts), "--out", out]
    args += ["--sampling", "base.steps=2", "--batch-size", "2", "--num-cpus", "0.5"]
    args += ["--no-progress"]
    assert main(args) == 0
    assert "2 to generate" in capsys.readouterr().out
    files = storage.list_files(out)
    manifest = [json.loads(x) for x in storage.read_text(f"{out}/manifest.jsonl").splitlines()]
    assert len(manifest) == 2 and all(r["file"] in files for r in manifest)
    assert main(args) == 0
    assert "2 already done and skipped; 0 to generate" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.cluster
def test_resume_from_an_s3_run_continues_it(trained, capsys) -> None:
    """`imagen-ray train --resume-from s3://.../runs/base`: a new run on S3 continues from
    step 10 (its W&B run is the original's), to step 12."""
    from imagen_ray.cli import main
    from imagen_ray.train.checkpoint import find_checkpoint

    _, run, _ = trained
    root = run.removesuffix("/runs/base")
    sets = [
        "stage.unet.channels=16", "stage.unet.head_dim=16", "text.max_length=8",
        "data.batch_size=4", "train.steps=12", "train.lr=1e-3", "train.log_every=2",
        "train.checkpoint_every=2", "train.ema_decay=0.9", "train.max_failures=0",
        "train.zero_stage=2", f"train.storage_path={root}/runs", "train.name=resumed",
    ]  # fmt: skip
    args = ["train", "-c", str(ROOT / "configs/tiny/base.yaml"), "--data", "memory"]
    args += [x for kv in sets for x in ("--set", kv)] + ["--resume-from", run]
    try:
        assert main(args) == 0
        [summary] = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x[:1] == "{"]
        assert summary["metrics"]["step"] == 12
        resumed = f"{root}/runs/resumed"
        state = storage.read_text(f"{find_checkpoint(run)}/state/rank_00000.json")
        wandb_id = json.loads(state)["wandb_run_id"]
        again = {Path(f).name for f in storage.list_files(resumed) if f.endswith(".wandb")}
        assert again == {f"run-{wandb_id}.wandb"}, "the resumed run started another W&B run"
    finally:
        local = storage.local_run_dir(f"{root}/runs/resumed")
        if local:
            shutil.rmtree(local, ignore_errors=True)


@pytest.mark.slow
def test_shards_encoded_to_s3_and_read_through_the_pipeline(cluster, tmp_path: Path) -> None:
    """Shards uploaded to S3 -> `data encode` writes precomputed shards to S3 -> the
    training pipeline reads them from S3 (data.shards=s3://...)."""
    from imagen_ray.config import RunConfig, TextEncoderConfig
    from imagen_ray.data.pipeline import build_dataset
    from imagen_ray.data.precompute import encode_shards
    from imagen_ray.data.synthetic import write_synthetic
    from imagen_ray.data.synthetic_spec import SyntheticSpec

    text = TextEncoderConfig(max_length=8)
    write_synthetic(
        SyntheticSpec(num_samples=12, size=16, samples_per_shard=6), tmp_path, progress=False
    )
    raw, enc = f"{cluster}/shards/raw", f"{cluster}/shards/encoded"
    storage.upload_dir(tmp_path, raw)
    encode_shards(raw, enc, text, writers=1)
    assert [n for n in storage.listdir(enc) if n.endswith(".tar")] == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    cfg = RunConfig.model_validate(
        {
            "text": text.model_dump(),
            "stage": {"name": "base", "size": 16},
            "data": {"shards": enc, "batch_size": 4, "precomputed": True},
        }
    )
    ds, _ = build_dataset(cfg)
    batches = list(ds.iter_batches(batch_size=4, batch_format="numpy"))
    assert sum(len(b["image"]) for b in batches) == 12
    assert batches[0]["emb"].shape[1:] == (8, 384)
