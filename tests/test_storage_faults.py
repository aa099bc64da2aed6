"""Checkpoints and generated images under storage faults, with the real components: moto's
S3 server (stopped and started again on the same port), Ray Train + DeepSpeed on 2 CPU
workers, Ray Data's actor pool, SIGKILL.

- The S3 server goes down for 20 s just as rank 0 starts copying step 5's checkpoint: the
  copy is retried with backoff and says so on the console, the checkpoint completes, training
  goes on to the end with the same weights as a run without the outage, and a new run
  ``--resume-from`` that checkpoint ends with them too.
- An outage longer than ``train.upload_retry_s``: step 5's checkpoint is given up (said on
  the console), training goes on, step 10's checkpoint is copied once the server is back.
- Rank 0 is killed while it writes a checkpoint (locally, before its marker) or while it
  copies it (half its files in the run's storage, local or S3): the group restarts from the
  last complete checkpoint and ends with the weights of a run without the fault; the partial
  copy is never taken for a checkpoint.
- The S3 server goes down for 10 s once ``generate --out s3://...`` has written its first
  image: the replicas retry their writes, every image is there once, and a rerun has nothing
  left to make.

The storage's own behaviour (retry timing, markers last) is unit-tested in
tests/train/test_persist.py.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from imagen_ray import storage
from tests.s3server import s3_service
from tests.train.conftest import ROOT, exported, fit, tiny_cfg
from tests.train.faults import KillDuringCheckpoint, StopStorageDuringCheckpoint

BUCKET = "fault-bucket"
pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def s3():
    """The S3 server first, so the local Ray cluster's processes inherit its environment."""
    import ray

    with s3_service(BUCKET) as server:
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
        ray.init(
            address="local", num_cpus=4, object_store_memory=500 * 1024**2, include_dashboard=False
        )
        try:
            yield server, f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}"
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def straight(s3, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The run without faults (local storage): its final weights."""
    tmp = tmp_path_factory.mktemp("straight")
    res = fit(tiny_cfg(tmp, "straight", "train.zero_stage=2"))
    assert res.error is None and res.metrics["step"] == 10
    return exported(tmp / "straight", tmp / "export")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4, msg=k)


def complete_steps(run: str) -> list[int]:
    from imagen_ray.train.checkpoint import IncompleteCheckpoint, read_config

    steps = []
    for n in storage.listdir(run):
        d = storage.join(run, n)
        if n.startswith("checkpoint_") and storage.is_dir(d):
            try:
                steps.append(int(read_config(d)["step"]))
            except IncompleteCheckpoint:
                continue
    return sorted(steps)


def incomplete(run: str) -> list[str]:
    from imagen_ray.train.checkpoint import IncompleteCheckpoint, read_config

    found = []
    for n in storage.listdir(run):
        d = storage.join(run, n)
        if n.startswith("checkpoint_") and storage.is_dir(d):
            try:
                read_config(d)
            except IncompleteCheckpoint:
                found.append(n)
    return found


def train_through_outage(
    s3: tuple, tmp_path: Path, name: str, *extra: str, seconds: float
) -> tuple[Any, str, Any]:
    """The tiny run ``name`` on S3, the server stopped for ``seconds`` just as rank 0 starts
    copying step 5's checkpoint: (the result, its console, the outage's record)."""
    from imagen_ray.runtime import Console

    server, root = s3
    ask, down = tmp_path / "ask", tmp_path / "down"
    outage = server.outage_on(ask, down, seconds=seconds)
    cfg = tiny_cfg(
        tmp_path, name, f"train.storage_path={root}/runs", "train.zero_stage=2",
        "train.keep_checkpoints=3", *extra,
    )  # fmt: skip
    hook = StopStorageDuringCheckpoint(rank=0, step=5, ask=str(ask), down=str(down))
    out = io.StringIO()
    console = Console(stream=out)
    try:
        [res] = console.run([lambda: fit(cfg, hooks=[hook], console=console.sink())])
    finally:
        outage.cancel()
        outage.join(60)
    return res, out.getvalue(), outage


def test_checkpoint_copy_retries_through_an_s3_outage(s3, straight, tmp_path: Path) -> None:
    from imagen_ray.train.checkpoint import find_checkpoint, read_config

    _, root = s3
    res, text, outage = train_through_outage(s3, tmp_path, "outage", seconds=20)
    assert outage.stopped_at is not None and outage.started_at is not None, "no outage"
    assert outage.started_at - outage.stopped_at >= 19.5
    assert res.error is None and res.metrics["step"] == 10
    assert "checkpoint/not_written" not in res.metrics
    assert "failed (attempt 1:" in text and "retrying in 1 s" in text, text
    assert "retrying in 8 s" in text, text  # the backoff doubled through the outage
    assert "at attempt" in text, text  # and the copy went through after it
    run = f"{root}/runs/outage"
    assert complete_steps(run) == [5, 10] and incomplete(run) == []
    same(exported(run, tmp_path / "outage-export"), straight)

    # a new run resumed from the checkpoint copied through the outage ends where the
    # run without an outage ended
    half = next(
        storage.join(run, n)
        for n in storage.listdir(run)
        if n.startswith("checkpoint_")
        and storage.is_dir(storage.join(run, n))
        and read_config(storage.join(run, n))["step"] == 5
    )
    res2 = fit(tiny_cfg(tmp_path, "resumed", "train.zero_stage=2"), resume_from=half)
    assert res2.error is None and res2.metrics["step"] == 10
    assert read_config(find_checkpoint(tmp_path / "resumed"))["step"] == 10
    same(exported(tmp_path / "resumed", tmp_path / "resumed-export"), straight)


def test_an_outage_past_upload_retry_s_skips_the_checkpoint_and_training_goes_on(
    s3, straight, tmp_path: Path
) -> None:
    _, root = s3
    res, text, outage = train_through_outage(
        s3, tmp_path, "given-up", "train.upload_retry_s=2", seconds=8
    )
    assert outage.stopped_at is not None, "no outage"
    assert res.error is None and res.metrics["step"] == 10
    assert "step 5: checkpoint not written: copy to s3://" in text, text
    assert "training goes on and tries again at step 10" in text, text
    run = f"{root}/runs/given-up"
    assert complete_steps(run) == [10]  # step 5's was given up, step 10's copied
    same(exported(run, tmp_path / "export"), straight)


@pytest.mark.parametrize(
    ("where", "phase"),
    [("local", "writing"), ("local", "half copied"), ("s3", "half copied")],
)
def test_rank0_killed_while_checkpointing_resumes_from_the_last_complete_one(
    s3, straight, tmp_path: Path, where: str, phase: str
) -> None:
    from imagen_ray.train.checkpoint import find_checkpoint, read_config

    _, root = s3
    base = f"{root}/kill-{phase.replace(' ', '-')}" if where == "s3" else str(tmp_path)
    marker = tmp_path / "kill.marker"
    cfg = tiny_cfg(
        tmp_path, "killed", f"train.storage_path={base}", "train.zero_stage=2",
        "train.max_failures=1", "train.keep_checkpoints=3",
    )  # fmt: skip
    hook = KillDuringCheckpoint(rank=0, step=10, phase=phase, marker=str(marker))
    res = fit(cfg, hooks=[hook])
    assert marker.is_file(), "rank 0 was never killed"
    assert res.error is None and res.metrics["step"] == 10
    run = storage.join(base, "killed")
    # restarted from step 5 (from scratch there would be a second step-5 checkpoint)
    assert complete_steps(run) == [5, 10]
    assert read_config(find_checkpoint(run))["step"] == 10
    left = incomplete(run)
    # killed mid-copy, rank 0's partial copy stays behind without its marker; killed before
    # copying, nothing reached the run's storage
    assert len(left) == (1 if phase == "half copied" else 0), left
    same(exported(run, tmp_path / "export"), straight)


def test_generate_to_s3_through_an_outage_loses_and_repeats_nothing(
    s3, tmp_path: Path, capfd
) -> None:
    import json

    import boto3

    from imagen_ray.cascade import Cascade
    from imagen_ray.cli import main
    from imagen_ray.config import load_cascade_config

    server, root = s3
    overrides = [f"stages.{i}.unet.{k}=16" for i in (0, 1) for k in ("channels", "head_dim")]
    cfg = load_cascade_config(ROOT / "configs/tiny/cascade.yaml", overrides)
    cascade = Cascade.from_config(cfg, seed=1).save(tmp_path / "c")
    n = 24
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red circle number {i}\n" for i in range(n)))
    out = f"{root}/generated"
    prefix = out.removeprefix(f"s3://{BUCKET}/") + "/images/"
    client = boto3.client("s3", endpoint_url=server.endpoint)

    def first_image_written() -> bool:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return any(o["Key"].endswith(".json") for o in listed.get("Contents", []))

    cmd = ["generate", "--cascade", str(cascade), "--prompts", str(prompts), "--out", out]
    cmd += ["--sampling", "base.steps=4", "--sampling", "sr64.steps=2", "--no-progress"]
    cmd += ["--batch-size", "2", "--num-cpus", "0.5"]
    outage = server.outage_on(first_image_written, None, seconds=10)
    try:
        assert main(cmd) == 0
    finally:
        outage.cancel()
        outage.join(60)
    assert outage.stopped_at is not None and outage.started_at is not None, "no outage"
    text = "".join(capfd.readouterr())
    assert "retrying in" in text, text[-3000:]
    files = storage.list_files(out)
    manifest = [json.loads(x) for x in storage.read_text(f"{out}/manifest.jsonl").splitlines()]
    assert len(manifest) == n and len({r["file"] for r in manifest}) == n
    assert all(r["file"] in files for r in manifest)
    assert len([f for f in files if f.endswith(".png")]) == n  # none twice, none lost
    assert main(cmd) == 0
    assert f"{n} already done and skipped; 0 to generate" in "".join(capfd.readouterr())
