"""Copying a checkpoint into the run's storage (imagen_ray.train.persist) against moto's S3
server, stopped and started by the test: markers last, retries with backoff, giving up.
The whole training run through an outage: tests/test_checkpoint_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagen_ray import storage
from imagen_ray.train import persist
from tests.s3server import s3_service

BUCKET = "persist-bucket"


@pytest.fixture(scope="module")
def s3():
    with s3_service(BUCKET) as server:
        yield server


def checkpoint_dir(root: Path) -> Path:
    """A two-rank checkpoint's local files, as ``_save`` leaves them."""
    files = {
        "ds/mp_rank_00_model_states.pt": b"m" * 3000,
        "ds/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"o" * 5000,
        "ema/rank_00000.safetensors": b"e" * 1000,
        "state/rank_00000.json": b"{}",
        "config.json": b"{}",
        "complete/rank_00000": b"ok\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def s3_target(name: str) -> persist.Target:
    """A target on the test's server through an S3 client that tries each request once
    (pyarrow's default tries 3 times with waits: ~6 s per attempt against a stopped server)."""
    import os

    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"],
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ["AWS_DEFAULT_REGION"],
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1),
    )
    return persist.Target(fs, f"{BUCKET}/{name}", f"s3://{BUCKET}/{name}", remote=True)


def test_markers_go_last(tmp_path: Path) -> None:
    files = persist.ordered_files(checkpoint_dir(tmp_path))
    assert files[-1] == "complete/rank_00000"
    assert sorted(files[:-1]) == files[:-1] and len(files) == 6


def test_a_copy_cut_short_leaves_no_marker_and_the_next_attempt_sends_only_the_rest(
    s3, tmp_path: Path
) -> None:
    local = checkpoint_dir(tmp_path / "ckpt")
    dest = s3_target("cut")
    sent: list[int] = []

    def cut(done: int, total: int) -> None:
        sent.append(done)
        if done == 2:
            s3.stop()

    try:
        with pytest.raises(OSError):
            persist.copy_once(local, dest, on_file=cut)
    finally:
        s3.start()
    there = storage.list_files(dest.uri)
    assert len(there) == 2 and not any(r.startswith("complete/") for r in there), there
    resent: list[int] = []
    persist.copy_once(local, dest, on_file=lambda done, total: resent.append(done))
    assert resent == [3, 4, 5, 6]  # the two files already whole are not sent again
    assert storage.list_files(dest.uri) == {
        p.relative_to(local).as_posix(): p.stat().st_size for p in local.rglob("*") if p.is_file()
    }


def test_retries_with_backoff_until_the_storage_is_back(s3, tmp_path: Path) -> None:
    local = checkpoint_dir(tmp_path / "ckpt")
    dest = s3_target("retried")
    said: list[str] = []
    waits: list[float] = []

    def wait(s: float) -> None:  # the outage lasts through three waits
        waits.append(s)
        if len(waits) == 3:
            s3.start()

    s3.stop()
    try:
        error = persist.copy_with_retry(local, dest, retry_s=600, say=said.append, sleep=wait)
    finally:
        if len(waits) < 3:
            s3.start()
    assert error is None
    assert waits == [1.0, 2.0, 4.0]
    assert [s.split(" (attempt ")[1][:1] for s in said[:3]] == ["1", "2", "3"], said
    assert "retrying in 4 s" in said[2] and said[3].endswith("at attempt 4")
    assert "complete/rank_00000" in storage.list_files(dest.uri)


def test_gives_up_when_the_waits_would_pass_upload_retry_s(s3, tmp_path: Path) -> None:
    local = checkpoint_dir(tmp_path / "ckpt")
    dest = s3_target("given-up")
    waits: list[float] = []
    s3.stop()
    try:
        error = persist.copy_with_retry(local, dest, retry_s=10, say=lambda s: None,
                                        sleep=waits.append)  # fmt: skip
    finally:
        s3.start()
    assert error is not None and "connect" in error.lower(), error
    assert waits == [1.0, 2.0, 4.0]  # 1 + 2 + 4 = 7; one more wait (8 s) would pass 10 s
    assert persist.remove(dest)
    assert storage.list_files(dest.uri) == {}


def test_a_local_run_directory_gets_two_short_retries_and_says_why_it_failed(
    tmp_path: Path,
) -> None:
    import pyarrow.fs as pafs

    local = checkpoint_dir(tmp_path / "ckpt")
    blocked = tmp_path / "runs"
    blocked.write_text("a file where the run directory should be")
    dest = persist.Target(pafs.LocalFileSystem(), str(blocked / "checkpoint_x"), "x", remote=False)
    waits: list[float] = []
    said: list[str] = []
    error = persist.copy_with_retry(local, dest, retry_s=600, say=said.append,
                                    sleep=waits.append)  # fmt: skip
    assert error and waits == [1.0, 2.0]
    assert said[-1].endswith("given up") and "attempt 3" in said[-1] and error in said[-1]
    ok = persist.Target(pafs.LocalFileSystem(), str(tmp_path / "ok"), "ok", remote=False)
    assert persist.copy_with_retry(local, ok, retry_s=0, say=lambda s: None) is None
    assert (tmp_path / "ok/complete/rank_00000").read_text() == "ok\n"
