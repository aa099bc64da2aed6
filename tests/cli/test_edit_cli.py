"""``imagen-ray edit`` and ``upscale`` on a random tiny cascade: files written, kept pixels
kept, bad input named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_ray.cli import main
from tests.cli.test_cli import tiny_cascade_config

FAST = ["--sampling", "base.steps=2", "--sampling", "sr64.steps=2", "--no-progress"]


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("edit-cli")
    out = tmp / "cascade"
    assert main(["init", "-c", str(tiny_cascade_config(tmp)), "--out", str(out)]) == 0
    return out


def _picture(path: Path, size: int = 64) -> Path:
    g = np.random.default_rng(0)
    small = g.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def test_edit_inpaints_keeping_the_unmasked_pixels(cascade: Path, tmp_path: Path) -> None:
    image = _picture(tmp_path / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    args = ["edit", "--cascade", str(cascade), "--image", str(image), "--mask"]
    args += [str(tmp_path / "mask.png"), "-p", "a red circle", "-n", "2", "--out", str(out)]
    assert main([*args, *FAST]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert settings["files"] == ["0000.png", "0001.png"] and settings["seeds"] == [0, 1]
    assert settings["edit"]["strength"] == 1.0 and settings["edit"]["mask"].endswith("mask.png")
    got = np.asarray(Image.open(out / "0000.png"))
    want = np.asarray(Image.open(image))
    keep = mask == 0
    assert got.shape == (64, 64, 3) and np.array_equal(got[keep], want[keep])
    assert not np.array_equal(got[~keep], want[~keep])
    grid = Image.open(out / "grid.png")  # input, mask, base, sr64 per row
    assert grid.width >= 4 * 64 and grid.height >= 2 * 64


def test_edit_with_strength_and_upscale(cascade: Path, tmp_path: Path, capsys) -> None:
    image = _picture(tmp_path / "in.png")
    out = tmp_path / "img2img"
    base = ["--cascade", str(cascade), "--image", str(image), "-p", "a blue square"]
    assert main(["edit", *base, "--strength", "0.5", "--out", str(out), *FAST]) == 0
    assert json.loads((out / "settings.json").read_text())["edit"]["strength"] == 0.5
    small = _picture(tmp_path / "small.png", size=32)
    up = tmp_path / "up"
    args = ["upscale", "--cascade", str(cascade), "--image", str(small), "--out", str(up)]
    assert main([*args, *FAST]) == 0
    settings = json.loads((up / "settings.json").read_text())
    assert settings["stages"] == ["sr64"] and settings["edit"]["start"] == "sr64"
    assert Image.open(up / "0000.png").size == (64, 64)
    assert "wrote 1 images" in capsys.readouterr().out


def test_bad_edit_input_exits_2_naming_it(cascade: Path, tmp_path: Path, capsys) -> None:
    image = _picture(tmp_path / "in.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    base = ["edit", "--cascade", str(cascade), "--out", str(tmp_path / "o"), *FAST]
    cases = [
        (["--image", str(tmp_path / "nope.png")], "--image", "no such file"),
        (["--image", str(tmp_path / "bad.png")], "bad.png", "not a readable image"),
        (["--image", str(image), "--strength", "1.5"], "strength", "outside (0, 1]"),
        (["--image", str(image), "--resample-times", "3"], "--resample-times", "--mask"),
        (["--image", str(image), "-n", "0"], "-n 0", "at least 1"),
    ]
    for extra, name, reason in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert name in err and reason in err, err
    assert not (tmp_path / "o").exists()
