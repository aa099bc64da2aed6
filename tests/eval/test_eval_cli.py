"""``imagen-ray eval ...`` end to end on a tiny saved cascade and stand-in weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from imagen_ray.cascade import Cascade
from imagen_ray.cli import main
from imagen_ray.config import CascadeConfig, StageConfig, TextEncoderConfig
from imagen_ray.data.synthetic import heldout_json
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.text.tiny import build_tiny_t5
from tests.cascade.test_cascade import UNET, perturb

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompt_suite.csv"
FAST = ["--sampling", "base.steps=1", "--sampling", "sr.steps=1", "--no-progress"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalcli")
    t5 = build_tiny_t5(root / "t5")
    cfg = CascadeConfig(
        text=TextEncoderConfig(name=str(t5), max_length=8),
        stages=(
            StageConfig(name="base", size=16, unet=UNET),
            StageConfig(name="sr", size=32, lowres_size=16, unet=UNET),
        ),
    )
    cascade = Cascade.from_config(cfg, seed=0)
    perturb(cascade)
    return cascade.save(root / "cascade")


def test_eval_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("probe", "sr-fidelity", "prompts", "fid", "clip"):
        assert cmd in out


@pytest.mark.slow
def test_probe_sr_fidelity_and_prompts_commands(saved: Path, tmp_path: Path, capsys) -> None:
    spec = SyntheticSpec(heldout=(("blue", "cross"),))
    (tmp_path / "heldout.json").write_text(json.dumps(heldout_json(spec)))
    probe = tmp_path / "probe"
    args = ["eval", "probe", "--cascade", str(saved), "--out", str(probe), *FAST]
    args += ["--heldout", str(tmp_path / "heldout.json"), "--num-seen", "2", "-n", "2"]
    assert main([*args, "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "heldout" in out and "seen" in out and "colour" in out
    metrics = json.loads((probe / "metrics.json").read_text())
    assert metrics["splits"]["heldout"]["n"] == 5 * 2  # one pair at 5 positions, 2 images
    assert metrics["splits"]["seen"]["n"] == 2 * 2
    assert metrics["images_per_prompt"] == 2 and metrics["sampling"]["base"]["steps"] == 1
    lines = [json.loads(ln) for ln in (probe / "readings.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in lines] == list(range(3, 3 + 14))
    assert lines[0]["prompt"] == lines[1]["prompt"] == "a blue cross on the left"
    assert Image.open(probe / lines[0]["file"]).size == (32, 32)  # the last stage is read

    sr = tmp_path / "sr"
    assert (
        main(["eval", "sr-fidelity", "--cascade", str(saved), "--n", "2", "--out", str(sr), *FAST])
        == 0
    )
    out = capsys.readouterr().out
    assert "gap dB" in out and "columns: input, output, shrunk" in out
    (stage,) = json.loads((sr / "fidelity.json").read_text())["stages"]
    assert stage["stage"] == "sr" and stage["n"] == 2 and (sr / "sr_sr.png").is_file()

    gallery = tmp_path / "gallery"
    args = ["eval", "prompts", "--suite", str(EXAMPLE), "--cascade", str(saved)]
    args += ["--cascade", str(saved), "--out", str(gallery), *FAST]
    assert main(args) == 0
    assert "12 prompts in 4 categories" in capsys.readouterr().out
    page = (gallery / "index.html").read_text()
    assert "<th>cascade</th>" in page and "<th>cascade-2</th>" in page


def test_command_errors_exit_2_and_name_the_flag(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "suite.csv"
    bad.write_text("prompt\nx\n")
    args = ["eval", "prompts", "--suite", str(bad), "--cascade", str(tmp_path), "--out", "x"]
    assert main(args) == 2
    assert "missing column(s) Prompts, Category" in capsys.readouterr().err
    (tmp_path / "g").mkdir()
    args = ["eval", "fid", "--generated", str(tmp_path / "g"), "--reference", str(tmp_path / "g")]
    assert main([*args, "--inception", str(tmp_path / "none.pt")]) == 2
    assert "--inception" in capsys.readouterr().err
    assert main(["eval", "clip", "--prompts", str(bad), "--clip", str(tmp_path)]) == 2
    assert "--prompts" in capsys.readouterr().err
    args = ["eval", "probe", "--cascade", str(tmp_path), "--out", "x", "-n", "0"]
    assert main(args) == 2
    assert "--images-per-prompt must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow  # imports torchmetrics and transformers: seconds on a busy machine
def test_fid_and_clip_commands_with_stand_in_weights(tmp_path: Path, capsys) -> None:
    from imagen_ray.eval.tiny import build_standin_inception, build_tiny_clip

    for name, colour in (("gen", (255, 0, 0)), ("ref", (0, 0, 255))):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), tuple(c // (i + 1) for c in colour)).save(
                tmp_path / name / f"{i}.png"
            )
    weights = build_standin_inception(tmp_path / "inception.pt")
    args = ["eval", "fid", "--generated", str(tmp_path / "gen"), "--reference"]
    args += [str(tmp_path / "ref"), "--inception", str(weights), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "fid.json")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["fid"] > 0 and printed["n_generated"] == 3
    assert json.loads((tmp_path / "fid.json").read_text()) == printed

    clip = build_tiny_clip(tmp_path / "clip")
    manifest = tmp_path / "gen" / "manifest.jsonl"
    manifest.write_text(
        "".join(json.dumps({"file": f"{i}.png", "prompt": "red"}) + "\n" for i in range(3))
    )
    args = ["eval", "clip", "--prompts", str(manifest), "--clip", str(clip), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "clip.json")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["n"] == 3 and "per_image" not in printed
    assert len(json.loads((tmp_path / "clip.json").read_text())["per_image"]) == 3
