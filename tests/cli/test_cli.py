"""The imagen-ray command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from imagen_ray.cli import main
from imagen_ray.config import load_run_config
from imagen_ray.text import build_tiny_t5

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny"


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("config", "params", "init", "sample", "cascade"):
        assert f"    {cmd}" in out
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    assert "--sampling" in capsys.readouterr().out


def test_python_dash_m_runs_the_same_cli() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "imagen_ray", "--version"], capture_output=True, text=True
    )
    assert r.returncode == 0 and r.stdout.startswith("imagen-ray ")


def test_config_prints_resolved_yaml_that_reloads(capsys, tmp_path: Path) -> None:
    assert main(["config", "-c", str(TINY / "base.yaml"), "--set", "stage.unet.channels=48"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert data["stage"]["unet"]["channels"] == 48
    assert data["stage"]["sampling"]["percentile"] == 0.995  # defaults are filled in
    (tmp_path / "resolved.yaml").write_text(text)
    assert load_run_config(tmp_path / "resolved.yaml").stage.unet.channels == 48


def test_bad_override_exits_2_naming_the_key(capsys) -> None:
    rc = main(["config", "-c", str(TINY / "base.yaml"), "--set", "stage.unet.chanels=48"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stage.unet.chanels" in err and "unknown key" in err and "channels" in err
    assert main(["config", "-c", str(TINY / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_params_counts_paper_configs_without_weights(capsys) -> None:
    assert main(["params", "-c", str(ROOT / "configs" / "paper" / "cascade.yaml")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_stage = {r["stage"]: r["params"] for r in rows if "stage" in r}
    assert set(by_stage) == {"base", "sr256", "sr1024"}
    for name, paper in {"base": 2.0e9, "sr256": 6.0e8, "sr1024": 4.0e8}.items():
        assert abs(by_stage[name] - paper) / paper < 0.10, (name, by_stage[name])
    assert rows[-1]["total_params"] == sum(by_stage.values())


def tiny_cascade_config(tmp_path: Path) -> Path:
    """The tiny cascade config with its text encoder pointed at the tiny T5 (fast to load)."""
    t5 = build_tiny_t5(tmp_path / "t5")
    cfg = yaml.safe_load((TINY / "cascade.yaml").read_text())
    cfg["text"]["name"] = str(t5)
    cfg["stages"] = []
    for stage_file in ("base.yaml", "sr64.yaml"):
        run = yaml.safe_load((TINY / stage_file).read_text())
        cfg["stages"].append(run["stage"])
    (tmp_path / "cascade.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "cascade.yaml"


def test_init_then_sample_writes_images_grid_and_settings(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cascade"
    assert main(["init", "-c", str(tiny_cascade_config(tmp_path)), "--out", str(out)]) == 0
    assert (out / "cascade.json").is_file() and (out / "sr64" / "model.safetensors").is_file()

    args = ["sample", "--cascade", str(out), "-p", "a red circle", "-p", "two blue squares"]
    args += ["--sampling", "base.steps=2", "--sampling", "sr64.steps=1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "s1"), "--seed", "7"]) == 0
    settings = json.loads((tmp_path / "s1" / "settings.json").read_text())
    assert settings["seeds"] == [7, 8]
    assert settings["sampling"]["base"]["steps"] == 2
    assert settings["files"] == ["0000.png", "0001.png"]
    img = Image.open(tmp_path / "s1" / "0000.png")
    assert img.size == (64, 64)
    grid = Image.open(tmp_path / "s1" / "grid.png")
    assert grid.width > 2 * 64 and grid.height > 2 * 64  # 2 prompts x 2 stages

    # same seed -> identical pixels; --until stops at the base stage
    assert main([*args, "--out", str(tmp_path / "s2"), "--seed", "7"]) == 0
    a = np.asarray(Image.open(tmp_path / "s1" / "0001.png"))
    b = np.asarray(Image.open(tmp_path / "s2" / "0001.png"))
    assert np.array_equal(a, b)
    assert main([*args, "--out", str(tmp_path / "s3"), "--until", "base"]) == 0
    assert Image.open(tmp_path / "s3" / "0000.png").size == (32, 32)

    # bad sampling override: exit 2 with the reason
    capsys.readouterr()
    bad = ["sample", "--cascade", str(out), "-p", "x", "--out", str(tmp_path / "s4")]
    assert main([*bad, "--sampling", "base.sampler=euler"]) == 2
    assert "dpmpp_2m" in capsys.readouterr().err
    assert main([*bad, "--sampling", "steps=3"]) == 2
    assert "STAGE.KEY=VALUE" in capsys.readouterr().err


def test_stage_directories_sample_and_assemble_into_a_cascade(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cascade"
    assert main(["init", "-c", str(tiny_cascade_config(tmp_path)), "--out", str(out)]) == 0
    # an exported stage directory is a one-stage cascade for --cascade
    args = ["sample", "-p", "a red circle", "--sampling", "base.steps=1", "--no-progress"]
    assert main([*args, "--cascade", str(out / "base"), "--out", str(tmp_path / "s")]) == 0
    settings = json.loads((tmp_path / "s" / "settings.json").read_text())
    assert settings["stages"] == ["base"] and settings["dtype"] == {"base": "float32"}
    assert Image.open(tmp_path / "s" / "0000.png").size == (32, 32)
    capsys.readouterr()

    cmd = ["cascade", "assemble", "--stage", str(out / "base"), "--stage", str(out / "sr64")]
    assert main([*cmd, "--out", str(tmp_path / "a")]) == 0
    assert "weights: base hardlink, sr64 hardlink" in capsys.readouterr().out
    assert (tmp_path / "a" / "README.md").is_file()
    sampled = [*args, "--sampling", "sr64.steps=1", "--dtype", "bfloat16"]
    assert main([*sampled, "--cascade", str(tmp_path / "a"), "--out", str(tmp_path / "s2")]) == 0
    settings = json.loads((tmp_path / "s2" / "settings.json").read_text())
    assert settings["dtype"] == {"base": "bfloat16", "sr64": "bfloat16"}
    assert Image.open(tmp_path / "s2" / "0000.png").size == (64, 64)

    backwards = ["cascade", "assemble", "--stage", str(out / "sr64"), "--stage", str(out / "base")]
    assert main([*backwards, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert (
        "imagen-ray cascade: error: stage 'sr64'" in err and "must start with a base stage" in err
    )
    assert not (tmp_path / "b").exists()


def test_sample_without_prompts_or_cascade_fails_clearly(tmp_path: Path, capsys) -> None:
    assert main(["sample", "--cascade", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no prompts" in capsys.readouterr().err
    rc = main(["sample", "--cascade", str(tmp_path), "-p", "x", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "cascade.json is missing" in capsys.readouterr().err
