"""Edits in batch generation: prompt rows with image / mask / strength columns, planned
(paths checked, strength defaulted) and made by the pool's worker (no Ray needed here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_ray.batch.config import GenerateConfig
from imagen_ray.batch.plan import plan_records
from imagen_ray.batch.worker import CascadeWorker
from imagen_ray.prompts import read_prompt_file

SAMPLING = {"base": {"steps": 2}, "sr64": {"steps": 2}}


def _picture(path: Path, size: int = 64) -> Path:
    small = np.random.default_rng(1).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def _mask(path: Path) -> Path:
    m = np.zeros((64, 64), np.uint8)
    m[:, 32:] = 255
    Image.fromarray(m).save(path)
    return path


def test_prompt_rows_with_an_image_become_edits(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _picture(tmp_path / "in" / "a.png")
    _mask(tmp_path / "in" / "m.png")
    rows = [
        {"prompt": "a red circle"},
        {"prompt": "a blue square", "image": "in/a.png", "mask": "in/m.png"},
        {"prompt": "a green star", "image": "in/a.png", "strength": 0.3},
        {"prompt": "a cat", "image": "in/a.png"},
    ]
    f = tmp_path / "p.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = plan_records(read_prompt_file(f), GenerateConfig(), SAMPLING, tmp_path)
    assert "edit" not in records[0]
    a, m = str(tmp_path / "in" / "a.png"), str(tmp_path / "in" / "m.png")
    assert records[1]["edit"] == {"image": a, "mask": m, "strength": 1.0}
    assert records[2]["edit"]["strength"] == 0.3 and records[2]["edit"]["mask"] is None
    assert records[3]["edit"]["strength"] == 0.6  # edit's default without a mask
    # CSV columns, empty cells meaning none
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,image,mask,strength\na red circle,,,\na cat,in/a.png,,0.5\n")
    records = plan_records(read_prompt_file(csv), GenerateConfig(), SAMPLING, tmp_path)
    assert "edit" not in records[0] and records[1]["edit"]["strength"] == 0.5


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"image": "nope.png"}, "prompt 1 \\('x'\\): image 'nope.png': no such file"),
        ({"image": "bad.png"}, "prompt 1 \\('x'\\): image 'bad.png': not a readable image"),
        ({"mask": "a.png"}, "mask without an image"),
        ({"image": "a.png", "strength": 2}, "strength 2.0 is outside \\(0, 1\\]"),
        ({"image": "a.png", "strength": "lots"}, "strength 'lots' is not a number"),
    ],
)
def test_bad_edit_rows_are_refused_naming_the_row(tmp_path: Path, row: dict, match: str) -> None:
    _picture(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "x", **row}) + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        plan_records(read_prompt_file(f), GenerateConfig(), SAMPLING, tmp_path)


def test_the_worker_makes_a_mixed_batch_of_edits(tmp_path: Path) -> None:
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_cascade_config(root / "configs" / "tiny" / "cascade.yaml")
    cascade = Cascade.from_config(cfg, seed=0).save(tmp_path / "tiny")
    image, mask = _picture(tmp_path / "a.png"), _mask(tmp_path / "m.png")
    f = tmp_path / "p.jsonl"
    rows = [{"prompt": "a red circle"}, {"prompt": "a cat", "image": "a.png", "mask": "m.png"}]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = plan_records(read_prompt_file(f), GenerateConfig(), SAMPLING, tmp_path)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    worker = CascadeWorker([str(cascade)], str(out), None, use_gpu=False, dtype="float32")
    worker({"record": np.array([json.dumps(r) for r in records], dtype=object)})
    edited = np.asarray(Image.open(out / records[1]["file"]))
    keep = np.asarray(Image.open(mask)) == 0
    assert np.array_equal(edited[keep], np.asarray(Image.open(image))[keep])
    plain = Cascade.load(cascade).generate(["a red circle"], seed=[records[0]["seed"]],
                                           sampling=SAMPLING)  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(out / records[0]["file"])), plain.uint8()[0])
    sidecar = json.loads((out / records[1]["file"]).with_suffix(".json").read_text())
    assert sidecar["edit"]["mask"] == str(mask)
