"""``data shards --from-hf``: a Hugging Face dataset saved on disk (or Parquet) -> shards."""

from __future__ import annotations

import argparse
import builtins
import io
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagen_ray.cli.data import add_data_commands
from imagen_ray.data.writer import read_summary

datasets = pytest.importorskip("datasets")


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    add_data_commands(p.add_subparsers())
    args = p.parse_args(argv)
    return int(args.func(args))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_dataset() -> Any:
    grey16 = Image.fromarray(np.full((12, 12), 257 * 100, np.uint16))
    rows = {
        "image": [
            Image.new("RGB", (16, 12), (200, 10, 10)),  # a PIL image: encoded by datasets
            {"bytes": png(grey16), "path": None},  # 16-bit PNG bytes
            {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None},
            Image.new("RGB", (16, 16), (0, 0, 255)),
            Image.new("RGB", (4, 4), (0, 0, 0)),  # too small with --min-size 8
        ],
        "text": ["a red thing", "grey sixteen", "broken bytes", "   ", "tiny"],
        "uid": ["r-1", "g/2", "b-3", "e-4", "t-5"],
        "score": [0.5, 6.0, 1.0, 2.0, 3.0],
    }
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "text": datasets.Value("string"),
            "uid": datasets.Value("string"),
            "score": datasets.Value("float32"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)


def read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar.getmembers():
            key, ext = m.name.split(".", 1)
            f = tar.extractfile(m)
            assert f is not None
            out.setdefault(key, {})[ext] = f.read()
    return out


def check_output(out: Path) -> None:
    summary = read_summary(out)
    assert summary["samples"] == 2
    assert summary["skipped"] == {"corrupt_image": 1, "empty_caption": 1, "too_small": 1}
    samples = read_tar(out / "shard-000000.tar")
    assert sorted(samples) == ["g_2", "r-1"]
    red = samples["r-1"]
    assert red["txt"] == b"a red thing"
    meta = json.loads(red["json"])
    assert meta == {"height": 12, "score": 0.5, "source": "r-1", "uid": "r-1", "width": 16}
    assert Image.open(io.BytesIO(red["png"])).convert("RGB").getpixel((3, 3)) == (200, 10, 10)
    grey = Image.open(io.BytesIO(samples["g_2"]["png"]))
    from imagen_ray.data.hygiene import to_rgb

    assert to_rgb(grey).getpixel((0, 0)) == (100, 100, 100)


def test_from_hf_save_to_disk(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    saved = tmp_path / "saved"
    make_dataset().save_to_disk(str(saved))
    out = tmp_path / "shards"
    argv = ["shards", "--from-hf", str(saved), "--out", str(out), "--no-progress"]
    argv += ["--image-column", "image", "--caption-column", "text", "--id-column", "uid"]
    assert run_cli([*argv, "--min-size", "8"]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out
    check_output(out)
    assert read_summary(out)["source"] == f"hf {saved.resolve()}"


def test_from_hf_parquet_and_dataset_dict(tmp_path: Path) -> None:
    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    make_dataset().to_parquet(str(pq_dir / "part-0.parquet"))
    out = tmp_path / "from-parquet"
    argv = ["--image-column", "image", "--caption-column", "text", "--id-column", "uid"]
    argv += ["--min-size", "8", "--no-progress"]
    assert run_cli(["shards", "--from-hf", str(pq_dir), "--out", str(out), *argv]) == 0
    check_output(out)

    dd = tmp_path / "dict"
    datasets.DatasetDict({"validation": make_dataset()}).save_to_disk(str(dd))
    out2 = tmp_path / "from-dict"
    with pytest.raises(ValueError, match=r"splits \['validation'\], not 'train'"):
        run_cli(["shards", "--from-hf", str(dd), "--out", str(out2), *argv])
    assert (
        run_cli(
            ["shards", "--from-hf", str(dd), "--split", "validation", "--out", str(out2), *argv]
        )
        == 0
    )
    check_output(out2)


def test_from_hf_errors_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = tmp_path / "saved"
    make_dataset().save_to_disk(str(saved))
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match=r"no caption column 'caption'.*--caption-column"):
        run_cli(["shards", "--from-hf", str(saved), "--out", out])
    with pytest.raises(FileNotFoundError, match="neither a dataset saved"):
        run_cli(["shards", "--from-hf", str(tmp_path), "--out", out])
    real_import = builtins.__import__

    def no_datasets(name: str, *args: Any, **kw: Any) -> Any:
        if name == "datasets":
            raise ImportError("No module named 'datasets'")
        return real_import(name, *args, **kw)

    monkeypatch.delitem(sys.modules, "datasets")
    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(ValueError, match=r"pip install 'imagen-ray\[hf\]'"):
        run_cli(["shards", "--from-hf", str(saved), "--out", out])
