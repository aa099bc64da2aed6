"""bench/compositional_reference.py: the budget and U-Net layout it gives the reference, the
set it loads (as our pipeline decodes it), and the files it hands the scene checker."""

from __future__ import annotations

import io
import json
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import compositional
from bench import compositional_reference as ref
from bench.unet import import_reference
from imagen_ray.cli import main
from imagen_ray.config import load_run_config
from imagen_ray.data.reader import iter_tar_samples
from imagen_ray.eval.compositional_prompts import CATEGORIES, write_prompts
from imagen_ray.images import save_image
from imagen_ray.text.encoder import FrozenTextEncoder
from tests.eval.test_compositional import draw


def test_arguments_default_to_the_baselines_budget_and_quick_is_small(tmp_path: Path) -> None:
    args = ref.parse_args([])
    cfg = ref.run_config("x", args.sample_steps)
    samples, batch, steps = ref.budget(cfg, args.samples)
    assert batch == cfg.data.batch_size * cfg.train.num_workers == 16
    assert (samples, steps) == (cfg.train.steps * batch, cfg.train.steps)
    assert ref.budget(cfg, 100) == (100, 16, 7)  # --samples rounds up to whole steps
    assert cfg.stage.sampling.steps == 16 and args.images_per_prompt == 2
    assert args.out.name == "imagen-pytorch" and args.lr == ref.LR
    quick = ref.parse_args(["--quick"])
    assert (quick.limit, quick.samples, quick.images_per_prompt) == (300, 64, 1)
    assert ref.run_config("x", quick.sample_steps).stage.sampling.steps == 4
    assert quick.out.name == "imagen-pytorch-quick"  # never mixed with a full run's work
    assert ref.parse_args(["--quick", "--out", str(tmp_path)]).out == tmp_path
    for bad in (["--samples", "0"], ["-n", "0"], ["--sample-steps", "0"]):
        with pytest.raises(SystemExit):
            ref.parse_args(bad)


def test_reference_unet_has_our_unets_layout() -> None:
    unet = ref.run_config("x").stage.unet
    kwargs = ref.reference_unet_kwargs(unet, 384)
    assert kwargs["dim"] == unet.channels and kwargs["text_embed_dim"] == 384
    assert kwargs["dim_mults"] == tuple(lv.mult for lv in unet.levels)
    assert kwargs["num_resnet_blocks"] == tuple(lv.res_blocks for lv in unet.levels)
    assert kwargs["layer_attns"] == tuple(lv.self_attn for lv in unet.levels)
    assert kwargs["layer_cross_attns"] == tuple(lv.cross_attn for lv in unet.levels)
    assert True in kwargs["layer_cross_attns"]  # the text is read through cross-attention
    deepest = unet.channels * unet.levels[-1].mult
    assert kwargs["attn_heads"] * kwargs["attn_dim_head"] == deepest  # our heads there


def test_suite_files_are_the_layout_the_checker_scores(tmp_path: Path) -> None:
    assert main(["eval", "compositional", "--prompts-only", "--out", str(tmp_path / "s")]) == 0
    lines = (tmp_path / "s" / "prompts.jsonl").read_text().splitlines()
    prompts = [json.loads(line) for line in lines]
    picked = [next(p for p in prompts if p["category"] == c) for c in CATEGORIES]
    items = ref.suite_files(picked, 2)
    assert [it["file"] for it in items] == [f"{k:05d}.png" for k in range(8)]
    assert [{k: v for k, v in it.items() if k != "file"} for it in items[::2]] == picked
    assert [it["prompt"] for it in items[1::2]] == [p["prompt"] for p in picked]
    # the first image of each prompt shows it, the second is empty: a file read for the
    # wrong prompt would fail where it should pass
    folder = tmp_path / "out" / ref.SAMPLES_DIR
    for k, it in enumerate(items):
        save_image(draw(it, seed=k) if k % 2 == 0 else np.zeros((32, 32, 3), np.uint8),
                   folder / it["file"])  # fmt: skip
    write_prompts(items, folder / "prompts.jsonl")
    metrics = ref.scored(Namespace(out=tmp_path / "out"))
    readings = (tmp_path / "out" / ref.EVAL_DIR / "readings.jsonl").read_text().splitlines()
    scenes = [json.loads(line)["read"]["scene"] for line in readings]
    assert scenes == [True, False] * 4 and metrics["n"] == 8
    row = compositional.summarise(metrics)
    assert row["heldout"]["all"] == 0.5
    assert all(v == {"heldout": 0.5} for v in row["categories"].values())


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """24 samples of the lever study's set, rendered and encoded as bench/compositional.py
    does it (``imagen-ray data synthetic --scene-probs`` and ``imagen-ray data encode``)."""
    root = tmp_path_factory.mktemp("compositional")
    return compositional.dataset(root, 24, ref.SCENE_PROBS, [])


@pytest.mark.slow
def test_load_set_reads_the_encoded_shards_as_our_pipeline_does(tiny_set) -> None:
    raw, enc = tiny_set
    cfg = ref.run_config(enc)
    data = ref.load_set(cfg)
    length, dim = cfg.text.max_length, data["dim"]
    assert data["image"].shape == (24, 32, 32, 3) and data["image"].dtype == np.uint8
    assert data["emb"].shape == (24, length, dim) and data["emb"].dtype == np.float16
    assert data["mask"].shape == (24, length) and data["mask"].dtype == np.bool_
    # the raw shards, read on their own: same samples, in order, 64 px -> 32 px (Lanczos)
    rows = []
    for path in sorted(raw.glob("*.tar")):
        with path.open("rb") as f:
            rows += list(iter_tar_samples(f, str(path)))
    assert list(data["caption"]) == [r["txt"].decode().strip() for r in rows]
    full = [Image.open(io.BytesIO(r["png"])).convert("RGB") for r in rows]
    assert {im.size for im in full} == {(64, 64)}
    small = [np.asarray(im.resize((32, 32), Image.Resampling.LANCZOS)) for im in full]
    np.testing.assert_array_equal(data["image"], np.stack(small))
    assert len({r["txt"] for r in rows}) > 1 and data["image"].std() > 0
    # the embeddings are what our encoder makes of the captions, as it encodes the prompts
    fresh = FrozenTextEncoder(cfg.text).encode(list(data["caption"][:6]))
    torch.testing.assert_close(torch.from_numpy(data["emb"][:6]).float(), fresh.emb,
                               atol=2e-3, rtol=2e-3)  # fmt: skip  # float16 on disk
    np.testing.assert_array_equal(data["mask"][:6], fresh.mask.numpy())
    first = ref.load_set(cfg, limit=5)
    assert list(first["caption"]) == list(data["caption"][:5]) and len(first["emb"]) == 5
    other = load_run_config(compositional.CONFIG, [f"data.shards={enc}", "text.max_length=16"])
    with pytest.raises(ValueError, match="different text encoder"):
        ref.load_set(other)


def test_reference_trains_and_samples_when_installed(tmp_path: Path) -> None:
    """With imagen-pytorch present: its U-Net is about our size, a training step and a
    sampling run go through the script's own functions."""
    mod, facts = import_reference()
    if mod is None:
        pytest.skip(facts["reference_missing"])
    cfg = ref.run_config("x", 2)
    imagen = ref.build_imagen(mod, cfg, ref.reference_unet_kwargs(cfg.stage.unet, 384))
    params = sum(p.numel() for p in imagen.unets[0].parameters())
    assert 0.9 < params / ref.ours_params(cfg, 384) < 1.15
    gen = torch.Generator().manual_seed(0)
    data = {
        "image": torch.randint(0, 256, (20, 32, 32, 3), dtype=torch.uint8, generator=gen).numpy(),
        "emb": torch.randn(20, 24, 384, generator=gen).half().numpy(),
        "mask": np.ones((20, 24), np.bool_),
    }
    before = [p.detach().clone() for p in imagen.unets[0].parameters()]
    done = ref.train(imagen, data, cfg, Namespace(samples=32, lr=1e-3, seed=0))
    assert (done["steps"], done["samples"]) == (2, 32) and np.isfinite(done["loss_last"])
    after = list(imagen.unets[0].parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    items = ref.suite_files([{"prompt": "a red circle to the left of a blue square"}], 2)
    ref.sample(imagen, items, cfg, tmp_path, seed=0)
    images = [np.asarray(Image.open(tmp_path / it["file"])) for it in items]
    assert [im.shape for im in images] == [(32, 32, 3)] * 2
