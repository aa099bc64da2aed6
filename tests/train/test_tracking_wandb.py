"""W&B as its users see it, read back from the offline run files (no network, no Ray): one
captioned image per prompt, the cascade's stages grouped, every metric charted against the
step, eval results logged to the stage's run, exported stages as model artifacts online."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from imagen_ray.cascade import Stage
from imagen_ray.cascade.io import read_stage_meta
from imagen_ray.config import RunConfig
from imagen_ray.train import checkpoint as ckpt_io
from imagen_ray.train.export import export_checkpoint
from imagen_ray.train.tracking import SampleGrids, log_metrics, start_wandb
from imagen_ray.train.wandb_runs import RunRef, log_eval, log_stage_artifact
from tests.cascade.test_cascade import FakeEncoder
from tests.eval.test_eval_cli import FAST
from tests.train.conftest import (
    read_wandb_history,
    read_wandb_records,
    read_wandb_summary,
    tiny_cfg,
    wandb_run_files,
)

PROMPTS = ("a red circle on the left", "a blue square at the top")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def run_file(run_dir: Path, timeout: float = 60.0) -> Path:
    """The single offline run file under ``run_dir``, once W&B's service has written it to
    the end (its exit record): ``run.finish()`` can return before the last records are on
    disk."""
    [path] = wandb_run_files(run_dir)
    deadline = time.monotonic() + timeout
    while not any(r.WhichOneof("record_type") == "exit" for r in read_wandb_records(path)):
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)
    return path


def _records(path: Path, kind: str) -> list[Any]:
    return [
        getattr(r, kind) for r in read_wandb_records(path) if r.WhichOneof("record_type") == kind
    ]


def _cfg(tmp_path: Path, name: str, *extra: str) -> RunConfig:
    return tiny_cfg(
        tmp_path / "runs",
        name,
        "text.dim=16",
        "stage.sampling.steps=2",
        f"train.sample_prompts=[{', '.join(repr(p) for p in PROMPTS)}]",
        *extra,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One offline run of a base stage as rank 0 makes it: metrics at steps 5 and 10 (GPU
    slice metrics included), the sample images at both steps from the same EMA weights."""
    tmp = tmp_path_factory.mktemp("wandb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        cfg = _cfg(tmp, "base")
        run_dir = str(tmp / "runs" / "base")
        run = start_wandb(cfg, run_dir, None)
        weights = Stage(cfg.stage, text_dim=16).state_dict()
        grids = SampleGrids(cfg, text_dim=16, run_dir=run_dir, count=4, encoder=FakeEncoder())
        for step, loss in ((5, 0.9), (10, 0.5)):
            metrics = {
                "loss": loss,
                "samples_per_s": 10.0 * step,
                "data_wait_frac": 0.1,
                "gpu_peak_mem_gb": 0.5 if step == 5 else 0.25,  # another slice's name
                "mfu": 0.3,
                "step": step,
                "resumed": False,  # not charted: a bool
                "stage": "base",  # not charted: a string
            }
            log_metrics(run, metrics, step)
            grids.log(weights, {}, step, run)
        run_id = run.id
        run.finish()
    return Path(run_dir), run_id


def test_samples_are_one_captioned_image_per_prompt_with_fixed_seeds(trained) -> None:
    run_dir, _ = trained
    path = run_file(run_dir)
    rows = [r for r in read_wandb_history(path) if "samples/_type" in r]
    assert [r["step"] for r in rows] == [5, 10]
    for r in rows:
        assert r["samples/count"] == len(PROMPTS)
        assert r["samples/captions"] == list(PROMPTS)
    # the same EMA weights at both steps give the same images: seeds are fixed per prompt
    assert rows[0]["samples/filenames"] != [] and len(set(rows[0]["samples/filenames"])) == 2
    digests = [[f.rsplit("_", 1)[1] for f in r["samples/filenames"]] for r in rows]
    assert digests[0] == digests[1]
    media = sorted(run_dir.glob("wandb/offline-run-*/files/media/images/samples_*.png"))
    assert len(media) >= len(PROMPTS)
    # the grid PNG is still written to the run directory
    assert (run_dir / "samples" / "step_0000010.png").is_file()


def test_the_stages_of_a_cascade_share_a_group_and_are_typed_by_stage(
    trained, tmp_path: Path
) -> None:
    run_dir, _ = trained
    path = run_file(run_dir)
    [run] = _records(path, "run")
    assert run.run_group == str(run_dir.parent)  # the storage path both stages train into
    assert run.job_type == "base" and run.display_name == "base"
    # an SR stage of the same cascade lands in the same group; wandb.group overrides it
    from imagen_ray.train.tracking import default_group

    sr = _cfg(run_dir.parent.parent, "sr64", "stage.name=sr64")
    assert default_group(str(run_dir.parent / "sr64"), sr) == run.run_group
    named = _cfg(tmp_path, "x", "wandb.group=cascade-7")
    assert default_group(str(tmp_path / "x"), named) == "cascade-7"


def test_every_numeric_metric_is_charted_against_the_step(trained) -> None:
    run_dir, _ = trained
    path = run_file(run_dir)
    metrics = {m.name: m for m in _records(path, "metric") if m.name}
    for name in ("loss", "samples_per_s", "data_wait_frac", "gpu_peak_mem_gb", "mfu", "samples"):
        assert metrics[name].step_metric == "step", name
    assert "resumed" not in metrics and "stage" not in metrics
    assert metrics["loss"].summary.min
    assert metrics["samples_per_s"].summary.mean and metrics["data_wait_frac"].summary.mean
    assert metrics["gpu_peak_mem_gb"].summary.max
    rows = [r for r in read_wandb_history(path) if "loss" in r]
    assert [(r["step"], r["samples_per_s"], r["gpu_peak_mem_gb"]) for r in rows] == [
        (5, 50.0, 0.5),
        (10, 100.0, 0.25),
    ]
    assert all("resumed" not in r and "stage" not in r for r in rows)


def _checkpoint(run: Path, cfg: RunConfig, run_id: str | None, step: int = 10) -> Path:
    """A one-rank training checkpoint of random EMA weights that stores ``run_id``."""
    ema = {f"unet.{k}": v for k, v in Stage(cfg.stage, text_dim=16).unet.state_dict().items()}
    d = run / f"checkpoint_{step:06d}"
    ckpt_io.save_rank_files(
        d,
        rank=0,
        ema_state={
            "tensors": ema,
            "meta": {
                "num_updates": step,
                "decay": 0.9,
                "shapes": {k: list(v.shape) for k, v in ema.items()},
                "partitioned": False,
            },
        },
        state={"step": step, "wandb_run_id": run_id},
        rng={"g": torch.zeros(1)},
    )
    ckpt_io.write_config(
        d, cfg.model_dump(mode="json"), text_dim=16, world_size=1, zero_stage=0, step=step
    )
    ckpt_io.mark_complete(d, 0)
    return d


def test_eval_results_go_to_the_stage_run_stored_in_the_export(trained, tmp_path: Path) -> None:
    run_dir, run_id = trained
    cfg = _cfg(tmp_path, "base")
    out = export_checkpoint(_checkpoint(run_dir, cfg, run_id), tmp_path / "export")
    assert read_stage_meta(out)["extra"]["wandb"]["run_id"] == run_id
    ref = RunRef.of_stage(out)
    results = {"splits": {"heldout": {"all": 0.25, "colour": 0.5}}, "n": 8, "files": ["x"]}
    line = log_eval(results, ref, kind="probe", trained_step=10, wandb_dir=tmp_path / "eval")
    assert "offline" in line and "wandb sync" in line
    path = run_file(tmp_path / "eval")
    [run] = _records(path, "run")
    assert run.run_id == run_id  # the training run resumed, not a new one
    summary = read_wandb_summary(path)
    assert summary["eval/probe/splits/heldout/all"] == 0.25
    assert summary["eval/probe/n"] == 8 and "eval/probe/files" not in summary
    [row] = read_wandb_history(path)
    assert row["eval/trained_step"] == 10
    metrics = {m.glob_name or m.name: m for m in _records(path, "metric")}
    assert metrics["eval/probe/*"].step_metric == "eval/trained_step"


def test_a_stage_without_a_run_id_names_the_fix(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "base")
    out = export_checkpoint(_checkpoint(tmp_path / "run", cfg, None), tmp_path / "export")
    with pytest.raises(ValueError, match="--wandb-run ENTITY/PROJECT/RUN_ID"):
        RunRef.of_stage(out)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("team/imagen/abc123", "team/imagen/abc123"),
        ("https://wandb.ai/team/imagen/runs/abc123", "team/imagen/abc123"),
        ("imagen/abc123", "imagen/abc123"),
        ("abc123", "imagen-ray/abc123"),
    ],
)
def test_wandb_run_paths(text: str, path: str) -> None:
    assert RunRef.parse(text).path == path


def test_wandb_run_path_errors_name_the_format() -> None:
    with pytest.raises(ValueError, match="entity/project/run_id"):
        RunRef.parse("team/im agen/abc")


class FakeRun:
    id, url = "run42", "https://wandb.ai/team/imagen/runs/run42"
    logged: ClassVar[list[tuple[Any, list[str]]]] = []

    def log_artifact(self, artifact: Any, aliases: list[str]) -> None:
        FakeRun.logged.append((artifact, aliases))

    def finish(self) -> None:
        pass


def test_an_exported_stage_is_a_model_artifact_online_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import wandb

    cfg = _cfg(tmp_path, "base")
    out = export_checkpoint(_checkpoint(tmp_path / "run", cfg, "run42"), tmp_path / "export")
    line = log_stage_artifact(out)  # offline (the fixture): skipped, with a line
    assert "skipped" in line and "offline" in line
    assert not list(tmp_path.rglob("offline-run-*"))

    inits: list[dict[str, Any]] = []
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", lambda **kw: inits.append(kw) or FakeRun())
    FakeRun.logged = []
    line = log_stage_artifact(out)
    [init] = inits
    assert init["id"] == "run42" and init["resume"] == "allow"  # the training run
    [(artifact, aliases)] = FakeRun.logged
    assert artifact.type == "model" and artifact.name == "base-run42"
    assert aliases == ["latest", "step-10"]
    assert {"config.json", "model.safetensors"} <= set(artifact.manifest.entries)
    assert artifact.metadata["step"] == 10
    assert "base-run42" in line and FakeRun.url in line
    json.dumps(artifact.metadata)  # plain JSON


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved two-stage cascade (base 16 px, sr 32 px) with a tiny T5: no downloads."""
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import CascadeConfig, StageConfig, TextEncoderConfig
    from imagen_ray.text.tiny import build_tiny_t5
    from tests.cascade.test_cascade import UNET

    root = tmp_path_factory.mktemp("evalcli")
    cfg = CascadeConfig(
        text=TextEncoderConfig(name=str(build_tiny_t5(root / "t5")), max_length=8),
        stages=(
            StageConfig(name="base", size=16, unet=UNET),
            StageConfig(name="sr", size=32, lowres_size=16, unet=UNET),
        ),
    )
    return Cascade.from_config(cfg, seed=0).save(root / "cascade")


def _with_runs(saved: Path, tmp_path: Path, ids: dict[str, str | None]) -> Path:
    """A copy of the saved cascade whose stages name these W&B runs (as an export does)."""
    from imagen_ray.cascade.io import stage_dirs

    cascade = Path(shutil.copytree(saved, tmp_path / "cascade"))
    for d in stage_dirs(cascade):
        meta = json.loads((d / "config.json").read_text())
        run_id = ids[meta["stage"]["name"]]
        meta["extra"]["wandb"] = {"run_id": run_id, "project": "p", "mode": "auto"}
        meta["extra"]["step"] = 30
        (d / "config.json").write_text(json.dumps(meta))
    return cascade


def test_eval_cli_logs_each_sr_stage_to_its_own_run(saved: Path, tmp_path: Path, capsys) -> None:
    from imagen_ray.cli import main

    cascade = _with_runs(saved, tmp_path, {"base": "runbase", "sr": "runsr"})
    out = tmp_path / "sr"
    args = ["eval", "sr-fidelity", "--cascade", str(cascade), "--n", "2", "--out", str(out)]
    assert main([*args, *FAST, "--log-to-run"]) == 0
    assert "logged offline to run p/runsr" in capsys.readouterr().out
    path = run_file(out)  # the SR stage's run only: the base has no SR result
    [run] = _records(path, "run")
    assert run.run_id == "runsr" and run.project == "p"
    fidelity = json.loads((out / "fidelity.json").read_text())["stages"][0]
    summary = read_wandb_summary(path)
    assert summary["eval/sr-fidelity/psnr"] == pytest.approx(fidelity["psnr"])
    assert read_wandb_history(path)[0]["eval/trained_step"] == 30


def test_eval_cli_refuses_log_to_run_without_a_run_id_before_sampling(
    saved: Path, tmp_path: Path, capsys
) -> None:
    from imagen_ray.cli import main

    cascade = _with_runs(saved, tmp_path, {"base": "runbase", "sr": None})
    out = tmp_path / "probe"
    args = ["eval", "probe", "--cascade", str(cascade), "--out", str(out), *FAST]
    assert main([*args, "--log-to-run"]) == 2
    assert "--wandb-run ENTITY/PROJECT/RUN_ID" in capsys.readouterr().err
    assert not out.exists()  # nothing generated


def test_eval_prompts_logs_the_gallery_as_a_table_to_the_cascades_run(
    saved: Path, tmp_path: Path, capsys
) -> None:
    from imagen_ray.cli import main

    cascade = _with_runs(saved, tmp_path, {"base": "runbase", "sr": "runsr"})
    suite = tmp_path / "suite.csv"
    suite.write_text("Prompts,Category\na red circle,Colors\na blue square,Shapes\n")
    out = tmp_path / "gallery"
    args = ["eval", "prompts", "--suite", str(suite), "--cascade", str(cascade)]
    assert main([*args, "--out", str(out), *FAST, "--log-to-run"]) == 0
    assert "1 prompts values and 2 images logged offline to run p/runsr" in capsys.readouterr().out
    path = run_file(out)
    [row] = read_wandb_history(path)
    assert row["eval/prompts/images/captions"] == ["Colors: a red circle", "Shapes: a blue square"]
    assert row["eval/trained_step"] == 30 and row["eval/prompts/seconds/cascade"] > 0
    assert len(list(path.parent.glob("files/media/images/eval/prompts/images_*.png"))) == 2
