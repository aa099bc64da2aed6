"""Ray Train + DeepSpeed on 2 CPU workers (gloo): ZeRO-2/3, checkpoints, export, faults.

These run the real distributed path. Data comes from seeded in-memory batches
(``imagen_ray.train.batches.random_batches``) so that two runs see identical data;
test_learning.py trains through the Ray Data pipeline. Faults come from tests/train/faults.py.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
import torch

from tests.train.conftest import (
    ROOT,
    exported,
    fit,
    read_wandb_history,
    tiny_cfg,
    wandb_run_files,
)
from tests.train.faults import KillWorker, NaNBatches, NaNGrads, SaveWeights

pytestmark = pytest.mark.slow


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
    # what the model card reports: examples seen, data, the last reported metrics
    assert meta["extra"]["samples"] > 0 and "data" in meta["extra"]  # "" for in-memory data
    assert meta["extra"]["metrics"]["step"] == 10 and meta["extra"]["metrics"]["loss"] > 0
    cascade = Cascade.load([out])
    images = cascade.generate(["a red circle"], sampling={"base": {"steps": 2}}).images
    assert images[0].shape == (1, 3, 32, 32) and torch.isfinite(images[0]).all()


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
    [shown] = [r for r in rows if "samples/captions" in r]  # step 10: one image per prompt
    assert shown["samples/captions"] == list(tiny_cfg(tmp, "x").train.sample_prompts)
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
    res = fit(cfg, hooks=[KillWorker(rank=1, step=7, marker=str(marker))])
    assert marker.is_file(), "the worker was never killed"
    assert res.error is None and res.metrics["step"] == 10
    straight = exported(tmp / "zero2", tmp_path / "straight")
    resumed = exported(tmp_path / "killed", tmp_path / "resumed")
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], atol=1e-5, rtol=1e-4, msg=k)


def checkpoint_at(run_dir: Path, step: int) -> Path:
    from imagen_ray.train.checkpoint import read_config

    found = [
        c for c in run_dir.glob("checkpoint_*") if c.is_dir() and read_config(c)["step"] == step
    ]
    assert len(found) == 1, f"no single checkpoint of step {step} in {run_dir}"
    return found[0]


def test_resume_from_a_mid_run_checkpoint_gives_the_same_weights_and_wandb_run(
    runs, tmp_path: Path, capsys
) -> None:
    """N steps straight (the ZeRO-2 run: 10) vs N/2 + N/2: a new run (new name, new worker
    processes) started by `imagen-ray train --resume-from <step-5 checkpoint>` trains steps
    6..10 and ends with exactly the straight run's weights (bitwise: same data position,
    RNG, Adam state, LR schedule and EMA; 2 gloo ranks reduce in a fixed order on CPU), and
    continues the straight run's W&B run (same id, history resumes at step 10)."""
    from imagen_ray.cli import main

    tmp, _ = runs
    half = checkpoint_at(tmp / "zero2", 5)
    [straight_file] = wandb_run_files(tmp / "zero2")
    run_id = straight_file.stem.removeprefix("run-")
    saved = json.loads((half / "state" / "rank_00000.json").read_text())
    assert saved["wandb_run_id"] == run_id and saved["step"] == 5

    sets = [
        "stage.unet.channels=16", "stage.unet.head_dim=16", "text.max_length=8",
        "data.batch_size=4", "train.steps=10", "train.lr=1e-3", "train.log_every=5",
        "train.checkpoint_every=5", "train.ema_decay=0.9", "train.max_failures=0",
        "train.zero_stage=2", f"train.storage_path={tmp_path}", "train.name=resumed",
    ]  # fmt: skip
    args = ["train", "-c", str(ROOT / "configs/tiny/base.yaml"), "--data", "memory"]
    args += [x for kv in sets for x in ("--set", kv)] + ["--resume-from", str(half)]
    assert main(args) == 0
    [summary] = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x[:1] == "{"]
    assert summary["metrics"]["step"] == 10 and summary["metrics"]["samples_seen"] == 80

    for weights in ("model", "ema"):
        straight = exported(tmp / "zero2", tmp_path / f"s-{weights}", weights)
        resumed = exported(tmp_path / "resumed", tmp_path / f"r-{weights}", weights)
        assert straight.keys() == resumed.keys()
        for k in straight:
            assert torch.equal(resumed[k], straight[k]), f"{weights} {k} differs after resume"
    # the untouched half-way weights differ from the end: the equality above is not vacuous
    halfway = exported(half, tmp_path / "half", "model")
    assert any(not torch.equal(halfway[k], straight[k]) for k in straight)

    [resumed_file] = wandb_run_files(tmp_path / "resumed")
    assert resumed_file.name == straight_file.name, "the resumed run started a new W&B run"
    steps = [r["step"] for r in read_wandb_history(resumed_file) if "loss" in r]
    assert steps == [10]
    end = checkpoint_at(tmp_path / "resumed", 10) / "state/rank_00000.json"
    assert json.loads(end.read_text())["wandb_run_id"] == run_id


def test_resume_from_checks_the_checkpoint_before_any_worker_starts(
    runs, tmp_path: Path, capsys
) -> None:
    from imagen_ray.cli import main
    from imagen_ray.train.launcher import LaunchError, resolve_resume

    tmp, _ = runs
    run2 = tmp / "zero2"
    cfg = tiny_cfg(tmp_path, "r", "train.zero_stage=2")
    # a run directory resolves to its latest complete checkpoint
    assert resolve_resume(cfg, str(run2)) == str(checkpoint_at(run2, 10))
    # another world size or ZeRO stage resumes (elastic: tests/train/test_elastic.py)
    one = tiny_cfg(tmp_path, "r", "train.num_workers=1", "train.zero_stage=3")
    assert resolve_resume(one, str(run2)) == str(checkpoint_at(run2, 10))
    with pytest.raises(LaunchError, match=r"stage \(model\) config differs"):
        resolve_resume(tiny_cfg(tmp_path, "r", "stage.unet.channels=32"), str(run2))
    with pytest.raises(LaunchError, match="no complete imagen-ray checkpoint"):
        resolve_resume(cfg, str(tmp_path))
    # one --resume-from cannot serve two stages
    args = ["train", "-c", str(ROOT / "configs/tiny/base.yaml")]
    args += ["-c", str(ROOT / "configs/tiny/sr64.yaml"), "--resume-from", str(run2)]
    assert main(args) == 2
    assert "1 --resume-from for 2 --config" in capsys.readouterr().err


def test_nonfinite_losses_stop_the_run_with_a_clear_error(ray_cluster, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        tmp_path, "nan", "train.max_failures=0", "train.nan_patience=3", "train.steps=20"
    )
    import ray.train

    with pytest.raises(ray.train.TrainingFailedError, match="non-finite for 3 micro batches"):
        fit(cfg, batches=NaNBatches(at=(7, 8, 9, 10, 11, 12)))
    # the checkpoint from step 5 is kept and complete
    from imagen_ray.train.checkpoint import latest_checkpoint, read_config

    assert read_config(latest_checkpoint(tmp_path / "nan"))["step"] == 5


def test_init_from_an_exported_stage_starts_a_new_run_bit_exactly(runs, tmp_path: Path) -> None:
    """Run A's exported EMA initialises run B: B's weights before its first step equal the
    export bit for bit, and B counts its own steps from 0."""
    tmp, _ = runs
    src = tmp_path / "exported"
    want = exported(tmp / "zero2", src)
    dump = tmp_path / "b0.pt"
    cfg = tiny_cfg(
        tmp_path,
        "b",
        f"train.init_from={src}",
        "train.num_workers=1",
        "train.steps=2",
        "train.checkpoint_every=2",
        "train.log_every=2",
    )
    res = fit(cfg, hooks=[SaveWeights(str(dump))])
    assert res.error is None and res.metrics["step"] == 2
    got = {k.removeprefix("unet."): v for k, v in torch.load(dump).items()}
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_nonfinite_gradients_with_a_finite_loss_skip_the_step(ray_cluster, tmp_path: Path) -> None:
    """NaN in rank 1's gradients (ZeRO 0: a plain torch optimizer, no DeepSpeed skip) skips
    the step on both ranks twice; the run still takes its 10 steps and exports finite."""
    cfg = tiny_cfg(tmp_path, "nangrad", "train.zero_stage=0")
    res = fit(cfg, hooks=[NaNGrads(rank=1, step=3, times=2)])
    assert res.error is None
    assert res.metrics["step"] == 10 and res.metrics["nonfinite_skipped"] == 2
    weights = exported(tmp_path / "nangrad", tmp_path / "out")  # EMA of the weights
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_invalid_configs_fail_before_any_worker_starts(ray_cluster, tmp_path: Path) -> None:
    from imagen_ray.config import ConfigError
    from imagen_ray.train.launcher import LaunchError

    with pytest.raises(ConfigError, match="zero_stage"):
        tiny_cfg(tmp_path, "bad", "train.zero_stage=4")
    with pytest.raises(ConfigError, match="batch_size"):
        tiny_cfg(tmp_path, "bad", "data.batch_size=0")
    with pytest.raises(LaunchError, match=r"needs a node with CPU 1, GPU 1, and no node"):
        fit(tiny_cfg(tmp_path, "bad", "train.use_gpu=true"))
    with pytest.raises(LaunchError, match=r"needs 8 CPU at once .* at most 4"):
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
