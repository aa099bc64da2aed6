"""Ray Train + DeepSpeed on 2 CPU workers (gloo): ZeRO-2/3, checkpoints, export, faults.

These run the real distributed path. Data comes from the loop's seeded in-memory batches so
that two runs see identical data; the Ray Data pipeline is tested in tests/data.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
import torch

from imagen_ray.config import RunConfig, load_run_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
    ray.init(num_cpus=4, object_store_memory=500 * 1024**2, include_dashboard=False)
    yield
    ray.shutdown()


def tiny_cfg(tmp: Path, name: str, *extra: str) -> RunConfig:
    return load_run_config(
        ROOT / "configs/tiny/base.yaml",
        [
            "stage.unet.channels=16",
            "stage.unet.head_dim=16",
            "text.max_length=8",
            "data.batch_size=4",
            "train.steps=10",
            "train.lr=1e-3",
            "train.log_every=5",
            "train.checkpoint_every=5",
            "train.ema_decay=0.9",
            "train.max_failures=0",
            f"train.storage_path={tmp}",
            f"train.name={name}",
            *extra,
        ],
    )


def fit(cfg: RunConfig, **kw):
    from imagen_ray.train.launcher import build_trainer

    return build_trainer(cfg, data="memory", text_dim=384, **kw).fit()


def exported(run_dir: Path, out: Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    from imagen_ray.cascade import load_stage
    from imagen_ray.train.export import export_checkpoint

    stage, _ = load_stage(export_checkpoint(run_dir, out, weights=weights))
    return {k: v.detach().clone() for k, v in stage.unet.state_dict().items()}


@pytest.fixture(scope="module")
def runs(ray_cluster, tmp_path_factory):
    """A ZeRO-2 and a ZeRO-3 run of the same config and data (shared by several tests)."""
    tmp = tmp_path_factory.mktemp("runs")
    results = {}
    for z in (2, 3):
        cfg = tiny_cfg(tmp, f"zero{z}", f"train.zero_stage={z}", "train.sample_every=10")
        results[z] = fit(cfg)
    return tmp, results


def test_zero2_and_zero3_train_report_and_checkpoint(runs) -> None:
    tmp, results = runs
    for z, res in results.items():
        assert res.error is None
        assert res.metrics["step"] == 10 and res.metrics["nonfinite_skipped"] == 0
        ckpts = sorted(p for p in (tmp / f"zero{z}").glob("checkpoint_*") if p.is_dir())
        assert len(ckpts) == 2  # keep_checkpoints=2, written at steps 5 and 10
        for c in ckpts:
            assert sorted(os.listdir(c / "complete")) == ["rank_00000", "rank_00001"]
            assert len(list((c / "ema").glob("*.safetensors"))) == 2
    # same seed and data: ZeRO-3's sharded engine follows ZeRO-2's replicated one
    assert results[2].metrics["loss"] == pytest.approx(results[3].metrics["loss"], rel=1e-4)


def test_sharded_ema_consolidates_to_the_replicated_ema(runs, tmp_path: Path) -> None:
    tmp, _ = runs
    ema2 = exported(tmp / "zero2", tmp_path / "e2")
    ema3 = exported(tmp / "zero3", tmp_path / "e3")
    assert ema2.keys() == ema3.keys()
    for k in ema2:
        torch.testing.assert_close(ema3[k], ema2[k], atol=1e-4, rtol=1e-3, msg=k)
    raw = exported(tmp / "zero3", tmp_path / "m3", weights="model")
    # EMA (decay 0.9 over 10 steps) differs from the raw weights, but not wildly
    diffs = [(raw[k] - ema3[k]).abs().max().item() for k in raw]
    assert max(diffs) > 1e-6


def test_export_loads_into_a_cascade_that_generates(runs, tmp_path: Path) -> None:
    from imagen_ray.cascade import Cascade
    from imagen_ray.train.export import export_checkpoint

    tmp, _ = runs
    out = export_checkpoint(tmp / "zero3", tmp_path / "base")
    meta = json.loads((out / "config.json").read_text())
    assert meta["extra"]["step"] == 10 and meta["extra"]["weights"] == "ema"
    cascade = Cascade.load([out])
    images = cascade.generate(["a red circle"], sampling={"base": {"steps": 2}}).images
    assert images[0].shape == (1, 3, 32, 32) and torch.isfinite(images[0]).all()


def read_wandb_history(path: str) -> list[dict]:
    """History rows of an offline ``run-*.wandb`` file (W&B's LevelDB-style record log:
    a 7-byte file header, 32 KiB blocks of records with a 7-byte crc/length/type header)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record is in buf
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in rec.history.item
                    }
                )
    return rows


def test_offline_wandb_run_has_metrics_and_images(runs) -> None:
    tmp, _ = runs
    files = glob.glob(str(tmp / "zero2" / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, "exactly one W&B run (rank 0 only) under the run directory"
    rows = read_wandb_history(files[0])
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == [5, 10]
    assert all(
        r["samples_per_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 for r in rows if "loss" in r
    )
    assert any(k.startswith("sample_grid/") for r in rows for k in r), "no image logged"
    media = tmp / "zero2" / "wandb"
    assert list(media.glob("offline-run-*/files/media/images/*.png"))
    assert (tmp / "zero2" / "samples" / "step_0000010.png").is_file()


def test_killed_worker_recovers_from_the_last_checkpoint_exactly(runs, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed at step 7; Ray restarts the group from step 5's checkpoint and the
    result equals the uninterrupted run (same weights: data position, RNG, optimizer, LR and
    EMA all resume)."""
    tmp, _ = runs
    marker = tmp_path / "kill.marker"
    cfg = tiny_cfg(tmp_path, "killed", "train.zero_stage=2", "train.max_failures=1")
    res = fit(cfg, faults={"kill": {"rank": 1, "step": 7, "marker": str(marker)}})
    assert marker.is_file(), "the worker was never killed"
    assert res.error is None and res.metrics["step"] == 10
    straight = exported(tmp / "zero2", tmp_path / "straight")
    resumed = exported(tmp_path / "killed", tmp_path / "resumed")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-5, rtol=1e-4, msg=k)


def test_nonfinite_losses_stop_the_run_with_a_clear_error(ray_cluster, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tmp_path, "nan", "train.max_failures=0", "train.nan_patience=3", "train.steps=20"
    )
    import ray.train

    with pytest.raises(ray.train.TrainingFailedError, match="non-finite for 3 micro batches"):
        fit(cfg, faults={"nan_at_steps": [7, 8, 9, 10, 11, 12]})
    # the checkpoint from step 5 is kept and complete
    from imagen_ray.train.checkpoint import latest_checkpoint, read_config

    assert read_config(latest_checkpoint(tmp_path / "nan"))["step"] == 5


def test_invalid_configs_fail_before_any_worker_starts(ray_cluster, tmp_path: Path) -> None:
    from imagen_ray.config import ConfigError
    from imagen_ray.train.launcher import LaunchError

    with pytest.raises(ConfigError, match="zero_stage"):
        tiny_cfg(tmp_path, "bad", "train.zero_stage=4")
    with pytest.raises(ConfigError, match="batch_size"):
        tiny_cfg(tmp_path, "bad", "data.batch_size=0")
    with pytest.raises(LaunchError, match="GPUs, but the Ray cluster has 0"):
        fit(tiny_cfg(tmp_path, "bad", "train.use_gpu=true"))
    with pytest.raises(LaunchError, match="CPUs"):
        fit(tiny_cfg(tmp_path, "bad", "train.num_workers=8"))


def test_cli_trains_two_stages_at_once_exports_and_samples(
    ray_cluster, tmp_path: Path, capsys
) -> None:
    """`imagen-ray train` with two --config files runs both stages concurrently (each its
    own Ray Train run), then `export` + `sample` chain the two exported stages."""
    from imagen_ray.cli import main

    common = [
        "--set", "stage.unet.channels=16", "--set", "stage.unet.head_dim=16",
        "--set", "text.max_length=8", "--set", "data.batch_size=2",
        "--set", "train.steps=4", "--set", "train.log_every=2",
        "--set", "train.checkpoint_every=4", "--set", "train.max_failures=0",
        "--set", "train.num_workers=1", "--set", f"train.storage_path={tmp_path}",
    ]  # fmt: skip
    args = ["train", "-c", str(ROOT / "configs/tiny/base.yaml")]
    args += ["-c", str(ROOT / "configs/tiny/sr64.yaml"), "--data", "memory", *common]
    assert main(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["stage"] for r in lines] == ["base", "sr64"]
    assert all(r["metrics"]["step"] == 4 for r in lines)
    for stage in ("base", "sr64"):
        out = [
            "export",
            "--checkpoint",
            str(tmp_path / stage),
            "--out",
            str(tmp_path / "x" / stage),
        ]
        assert main(out) == 0
    sample = ["sample", "--cascade", str(tmp_path / "x/base"), str(tmp_path / "x/sr64")]
    sample += ["-p", "a red circle", "--sampling", "base.steps=2", "--sampling", "sr64.steps=1"]
    assert main([*sample, "--out", str(tmp_path / "img"), "--no-progress"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "img" / "0000.png").size == (64, 64)
