"""FID and CLIP score through the real weight-loading paths, with small stand-in weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagen_ray.data.synthetic import render_sample
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.eval.clip import clip_score, load_clip, read_manifest
from imagen_ray.eval.fid import fid, load_inception
from imagen_ray.eval.tiny import build_standin_inception, build_tiny_clip


def write_synthetic(folder: Path, n: int, seed: int) -> None:
    spec = SyntheticSpec(num_samples=n, size=32, seed=seed)
    for i in range(n):
        render_sample(spec, i)[0].save(folder / f"{i:03d}.png")


def write_noise(folder: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fid")
    out = {}
    for name, write, seed in (
        ("a", write_synthetic, 0),
        ("a2", write_synthetic, 1),
        ("noise", write_noise, 0),
    ):
        (root / name).mkdir()
        write(root / name, 24, seed)
        out[name] = root / name
    out["weights"] = build_standin_inception(root / "inception.pt", features=8)
    return out


def test_fid_is_zero_for_a_set_against_itself_and_grows_with_the_difference(
    folders: dict[str, Path],
) -> None:
    net = load_inception(folders["weights"])
    assert net.num_features == 8
    same = fid(folders["a"], folders["a"], net, batch_size=10, progress=False)
    other = fid(folders["a"], folders["a2"], net, batch_size=10, progress=False)
    noise = fid(folders["a"], folders["noise"], net, batch_size=10, progress=False)
    assert same["n_generated"] == same["n_reference"] == 24
    assert abs(same["fid"]) < 1e-4
    assert other["fid"] > 1e-4  # another sample of the same set: small but not zero
    assert noise["fid"] > 5 * other["fid"]


def test_fid_weight_errors_name_the_flag(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--inception .*no such file"):
        load_inception(tmp_path / "missing.pt")
    state_dict = tmp_path / "state_dict.pth"
    torch.save({"w": torch.zeros(2)}, state_dict)
    with pytest.raises(ValueError, match=r"--inception .*not a TorchScript"):
        load_inception(state_dict)
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "one" / "x.png")
    net = load_inception(folders["weights"])
    with pytest.raises(ValueError, match=r"--reference .*found 1 image"):
        fid(folders["a"], tmp_path / "one", net, progress=False)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", seed=3)


def test_clip_score_equals_a_direct_computation(
    clip_dir: Path, folders: dict[str, Path], tmp_path: Path
) -> None:
    files = sorted(folders["a"].glob("*.png"))[:5]
    prompts = ["a red circle", "two blue squares", "a green cross", "a white square", "x"]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"file": f.name, "prompt": p}) + "\n"
            for f, p in zip(files, prompts, strict=True)
        )
    )
    pairs = read_manifest(manifest, folders["a"])
    assert [p for _, p in pairs] == prompts
    model, processor = load_clip(clip_dir)
    res = clip_score(pairs, model, processor, batch_size=2, progress=False)

    # direct: CLIPModel.forward's normalised projections, one pair at a time
    direct = []
    for f, p in zip(files, prompts, strict=True):
        inputs = processor(text=[p], images=[Image.open(f).convert("RGB")], return_tensors="pt")
        with torch.no_grad():
            out = model(**inputs)
        direct.append(100 * float((out.image_embeds * out.text_embeds).sum()))
    assert res["n"] == 5
    assert res["per_image"] == pytest.approx(direct, abs=1e-3)
    assert res["clip_score"] == pytest.approx(max(sum(direct) / 5, 0.0), abs=1e-3)
    assert len(set(np.round(direct, 3))) == 5  # the pairs really score differently


def test_clip_errors_name_the_flag(clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--clip .*config.json missing"):
        load_clip(tmp_path)
    bad = tmp_path / "m.csv"
    bad.write_text("file,text\na.png,x\n")
    with pytest.raises(ValueError, match="record 1 lacks prompt"):
        read_manifest(bad)
    bad.write_text("file,prompt\na.png,x\n")
    with pytest.raises(FileNotFoundError, match=r"image .*a.png not found"):
        read_manifest(bad)
