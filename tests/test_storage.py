"""imagen_ray.storage and the URI-aware readers built on it, against a real S3 API (moto's
server on 127.0.0.1) and the local filesystem through the same calls.

The end-to-end runs (training, resume, export, sampling, shards on S3) are in
tests/test_storage_s3.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagen_ray import storage
from tests.s3server import s3_server

BUCKET = "unit-bucket"


@pytest.fixture(scope="module")
def s3():
    with s3_server(BUCKET) as endpoint:
        yield endpoint


_n = iter(range(10**6))


@pytest.fixture(params=["s3", "local"])
def root(request, tmp_path: Path) -> str:
    """A fresh directory: a prefix of the S3 bucket, or a local temp dir."""
    if request.param == "local":
        return str(tmp_path / "root")
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/t{next(_n)}"


def test_files_round_trip_and_listing(root: str) -> None:
    assert not storage.exists(root) and storage.listdir(root) == []
    storage.write_bytes(storage.join(root, "a.txt"), b"alpha")
    storage.write_bytes(storage.join(root, "sub", "b.bin"), b"\x00" * 7)
    assert storage.read_text(storage.join(root, "a.txt")) == "alpha"
    assert storage.is_file(storage.join(root, "a.txt"))
    assert storage.is_dir(root) and storage.is_dir(storage.join(root, "sub"))
    assert not storage.is_dir(storage.join(root, "a.txt"))
    assert storage.listdir(root) == ["a.txt", "sub"]
    assert storage.list_files(root) == {"a.txt": 5, "sub/b.bin": 7}
    with storage.open_input(storage.join(root, "sub", "b.bin")) as f:
        f.seek(5)
        assert f.read() == b"\x00\x00"
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(storage.join(root, "nope"))


def test_upload_download_and_parts(root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel, data in {"config.json": "{}", "ema/r0": "e", "ds/big": "x" * 100}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(data)
    storage.upload_dir(src, root, last=("config.json",))
    assert storage.list_files(root) == {"config.json": 2, "ds/big": 100, "ema/r0": 1}
    full = storage.download_dir(root, tmp_path / "full")
    assert (full / "ds" / "big").read_text() == "x" * 100
    with storage.local_dir(root, parts=("config.json", "ema", "missing")) as d:
        got = storage.list_files(d)
        assert got == ({"config.json": 2, "ema/r0": 1} if storage.is_uri(root) else got)
        kept = d
    assert storage.is_uri(root) != kept.exists()  # a download is removed, a local dir is not


def test_missing_remote_directory_is_named(s3) -> None:
    uri = f"s3://{BUCKET}/no-such-run"
    no_such = pytest.raises(FileNotFoundError, match=f"{uri}: no such checkpoint")
    with no_such, storage.local_dir(uri, what="checkpoint"):
        pass


def test_run_files_sync_uploads_new_and_changed_files_only(s3, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # the local folder lands here
    run = f"s3://{BUCKET}/runs/sync-{next(_n)}"
    local = Path(str(storage.local_run_dir(run)))
    assert local.is_relative_to(tmp_path)
    assert local == Path(str(storage.local_run_dir(run))), "the local folder is per run URI"
    assert storage.local_run_dir("/a/local/run") == "/a/local/run"
    (local / "wandb" / "offline-run-1").mkdir(parents=True)
    (local / "samples").mkdir()
    (local / "wandb" / "offline-run-1" / "run-x.wandb").write_bytes(b"12")
    (local / "samples" / "step_0000005.png").write_bytes(b"png")
    (local / "other.txt").write_text("not a run file")
    (local / "wandb" / "latest-run").symlink_to(local / "wandb" / "offline-run-1")
    assert storage.sync_run_files(run) == 2
    assert storage.sync_run_files(run) == 0
    (local / "wandb" / "offline-run-1" / "run-x.wandb").write_bytes(b"1234")  # W&B appended
    assert storage.sync_run_files(run) == 1
    assert storage.list_files(run) == {
        "wandb/offline-run-1/run-x.wandb": 4,
        "samples/step_0000005.png": 3,
    }
    assert storage.sync_run_files("/a/local/run") == 0


def _fake_checkpoint(d: Path, step: int, ranks_done: int, world: int = 2) -> None:
    (d / "complete").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"world_size": world, "step": step}))
    for r in range(ranks_done):
        (d / "complete" / f"rank_{r:05d}").write_text("ok\n")


def test_latest_checkpoint_and_config_read_in_place_on_s3(s3, tmp_path: Path) -> None:
    """A URI stays a URI (the bug was ``s3:/bucket/...``); an incomplete newer checkpoint is
    passed over; a run without one names the URI."""
    from imagen_ray.train.checkpoint import IncompleteCheckpoint, find_checkpoint, read_config

    run = tmp_path / "run"
    _fake_checkpoint(run / "checkpoint_000000", 5, 2)
    _fake_checkpoint(run / "checkpoint_000001", 10, 2)
    _fake_checkpoint(run / "checkpoint_000002", 15, 1)  # rank 1 never finished
    uri = f"s3://{BUCKET}/runs/ck-{next(_n)}"
    storage.upload_dir(run, uri)
    assert find_checkpoint(uri) == f"{uri}/checkpoint_000001"
    assert find_checkpoint(f"{uri}/checkpoint_000000") == f"{uri}/checkpoint_000000"
    assert read_config(f"{uri}/checkpoint_000001")["step"] == 10
    with pytest.raises(IncompleteCheckpoint, match=r"ranks \[1\] of 2"):
        read_config(f"{uri}/checkpoint_000002")
    empty = f"s3://{BUCKET}/runs/none"
    with pytest.raises(IncompleteCheckpoint, match=f"no complete imagen-ray checkpoint in {empty}"):
        find_checkpoint(empty)
    assert find_checkpoint(run) == str(run / "checkpoint_000001")  # local: same answer


def test_init_from_and_resume_from_read_s3_in_place(s3, tmp_path: Path) -> None:
    """train.init_from / --resume-from URIs are checked on the driver by reading their
    config.json files on S3 (they used to be refused or passed through unchecked)."""
    from imagen_ray.config import load_run_config
    from imagen_ray.train.launcher import LaunchError, resolve_init, resolve_resume

    cfg = load_run_config(Path("configs/tiny/base.yaml"), [f"train.storage_path={tmp_path}"])
    run = f"s3://{BUCKET}/runs/init-{next(_n)}"
    with pytest.raises(LaunchError, match=f"train.init_from={run}: no such directory"):
        resolve_init(cfg, run, 384)
    with pytest.raises(LaunchError, match=f"no complete imagen-ray checkpoint in {run}"):
        resolve_resume(cfg, run)
    ckpt = tmp_path / "checkpoint_000000"
    _fake_checkpoint(ckpt, 5, 2)
    meta = json.loads((ckpt / "config.json").read_text())
    meta.update(zero_stage=cfg.train.zero_stage, text_dim=384)
    meta["run"] = cfg.model_dump(mode="json")
    (ckpt / "config.json").write_text(json.dumps(meta))
    storage.upload_dir(ckpt, f"{run}/checkpoint_000000")
    # read on S3: a checkpoint of another optimizer is refused, naming both
    other = cfg.train.model_copy(update={"optimizer": "adafactor"})
    with pytest.raises(LaunchError, match=r"train.optimizer=adamw, this run has adafactor"):
        resolve_resume(cfg.model_copy(update={"train": other}), run)
    assert resolve_resume(cfg, run) == f"{run}/checkpoint_000000"
    assert resolve_init(cfg, run, 384) == f"{run}/checkpoint_000000"
    with pytest.raises(LaunchError, match="text dim"):
        resolve_init(cfg, run, 512)


def test_generate_resume_state_on_s3(s3) -> None:
    """`generate --out s3://...`: done images are found with one listing, the manifest is
    rebuilt from the records there."""
    from imagen_ray.batch.resume import MANIFEST, sidecar, split_done, write_manifest

    out = f"s3://{BUCKET}/gen-{next(_n)}"
    recs = [
        {"file": f"images/{i}.png", "prompt": "p", "seed": i, "negative_prompt": None,
         "stages": ["base"], "sampling": {}, "dtype": "float32"}
        for i in range(3)
    ]  # fmt: skip
    for r in recs[:2]:
        storage.write_bytes(storage.join(out, r["file"]), b"png")
    storage.write_bytes(sidecar(out, recs[0]), json.dumps(recs[0]).encode())
    done, todo = split_done(out, recs)
    assert [d["seed"] for d in done] == [0] and [t["seed"] for t in todo] == [1, 2]
    for r in recs[1:]:
        storage.write_bytes(storage.join(out, r["file"]), b"png")
        storage.write_bytes(sidecar(out, r), json.dumps(r).encode())
    manifest = write_manifest(out, recs)
    assert manifest == f"{out}/{MANIFEST}"
    lines = storage.read_text(manifest).splitlines()
    assert [json.loads(x)["seed"] for x in lines] == [0, 1, 2]


def test_remote_shard_directory_lists_its_tars(s3) -> None:
    from imagen_ray.data.reader import expand_shards

    uri = f"s3://{BUCKET}/shards-{next(_n)}"
    for n in ("shard-000001.tar", "shard-000000.tar", "summary.json"):
        storage.write_bytes(storage.join(uri, n), b"x")
    assert expand_shards(uri) == [f"{uri}/shard-000000.tar", f"{uri}/shard-000001.tar"]
    assert expand_shards(f"{uri}/shard-000001.tar") == [f"{uri}/shard-000001.tar"]
    storage.write_bytes(f"s3://{BUCKET}/notars/summary.json", b"{}")
    with pytest.raises(FileNotFoundError, match="holds no"):
        expand_shards(f"s3://{BUCKET}/notars")


def test_stage_on_s3_loads_as_cascade_and_as_init_weights(s3, tmp_path: Path) -> None:
    """An exported stage on S3: publish.load_cascade and train.init_from's loader read it (the
    weights equal the saved ones); Cascade.load refuses the URI and names load_cascade."""
    import torch

    from imagen_ray.cascade import Cascade, CheckpointError, Stage, save_stage
    from imagen_ray.config import load_run_config
    from imagen_ray.publish import load_cascade
    from imagen_ray.train.warmstart import load_init_weights

    cfg = load_run_config(
        Path("configs/tiny/base.yaml"), ["stage.unet.channels=16", "stage.unet.head_dim=16"]
    )
    torch.manual_seed(0)
    stage = Stage(cfg.stage, text_dim=384)
    local = save_stage(stage, cfg.text, tmp_path / "base")
    uri = f"s3://{BUCKET}/export-{next(_n)}/base"
    storage.upload_dir(local, uri)
    want = stage.unet.state_dict()
    got = load_init_weights(uri)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    loaded = load_cascade(uri).stages[0].unet.state_dict()
    assert all(torch.equal(loaded[k].float(), want[k]) for k in want)
    again = load_cascade([uri]).stages[0].unet.state_dict()  # a list of stage URIs
    assert all(torch.equal(again[k].float(), want[k]) for k in want)
    with pytest.raises(CheckpointError, match=rf"not URIs \({uri}\).*publish\.load_cascade"):
        Cascade.load(uri)


def test_run_files_sync_failure_warns_and_does_not_raise(s3, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    run = "s3://no-such-bucket/runs/base"
    local = Path(str(storage.local_run_dir(run)))
    (local / "samples").mkdir(parents=True)
    (local / "samples" / "step_0000001.png").write_bytes(b"png")
    assert storage.sync_run_files(run) == 0
    err = capsys.readouterr().err
    assert f"not copied to {run}" in err and str(local) in err


def test_a_storage_path_that_cannot_be_written_is_refused_before_the_run(
    s3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing bucket used to surface as a pyarrow traceback from inside Ray Train; now
    `imagen-ray train` stops before Ray starts, naming the key and the fix."""
    from imagen_ray.cli import main
    from imagen_ray.config import load_run_config
    from imagen_ray.train.launcher import LaunchError, check_storage

    def cfg(path: str):
        return load_run_config(Path("configs/tiny/base.yaml"), [f"train.storage_path={path}"])

    check_storage(cfg(f"s3://{BUCKET}/runs-{next(_n)}"))  # the bucket exists: fine
    check_storage(cfg(str(tmp_path / "runs")))
    assert (tmp_path / "runs").is_dir()
    with pytest.raises(LaunchError, match=r"train.storage_path=s3://no-such-bucket/runs: .*"):
        check_storage(cfg("s3://no-such-bucket/runs"))
    args = ["train", "-c", "configs/tiny/base.yaml", "--data", "memory"]
    assert main([*args, "--set", "train.storage_path=s3://no-such-bucket/runs"]) == 2
    err = capsys.readouterr().err
    assert "train.storage_path=s3://no-such-bucket/runs: cannot write there" in err
    assert "create the bucket" in err and "Traceback" not in err
