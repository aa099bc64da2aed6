"""Offline batch generation (``imagen-ray generate``): settings, seeds, resume, Ray pool (its
prompt files are read by :mod:`imagen_ray.prompts`, tested in tests/test_prompts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_ray.batch.config import GenerateConfig, load_generate_config
from imagen_ray.batch.plan import image_seed, plan_records
from imagen_ray.cli import main
from imagen_ray.prompts import Prompt

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--sampling", "base.steps=2", "--sampling", "sr64.steps=1"]


# ------------------------------------------------------------------ settings and plan (no Ray)


def test_missing_prompt_file_and_bad_settings(tmp_path: Path, capsys) -> None:
    args = ["generate", "--cascade", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main([*args, "--prompts", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt' does not exist" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("x\n")
    assert main([*args, "--prompts", str(tmp_path / "p.txt"), "--set", "replica=2"]) == 2
    err = capsys.readouterr().err
    assert "replica: unknown key" in err
    assert main([*args, "--prompts", str(tmp_path / "p.txt"), "--images-per-prompt", "0"]) == 2
    assert "images_per_prompt" in capsys.readouterr().err
    assert main([*args, "--prompts", str(tmp_path / "p.txt")]) == 2  # no cascade there
    assert "cascade.json is missing" in capsys.readouterr().err


def test_settings_file_then_flags_then_set(tmp_path: Path) -> None:
    (tmp_path / "g.yaml").write_text("seed: 3\nreplicas: 4\nsampling: {base: {steps: 5}}\n")
    flags = {"replicas": 2, "seed": None, "sampling": {"base": {"guidance_scale": 2.0}}}
    cfg = load_generate_config(tmp_path / "g.yaml", flags, ["num_gpus=0.5"])
    assert (cfg.seed, cfg.replicas, cfg.num_gpus) == (3, 2, 0.5)
    assert cfg.sampling == {"base": {"steps": 5, "guidance_scale": 2.0}}


def test_image_seeds_depend_only_on_seed_prompt_and_image() -> None:
    seeds = {image_seed(0, p, i) for p in range(20) for i in range(5)}
    assert len(seeds) == 100
    assert image_seed(0, 3, 1) == image_seed(0, 3, 1) != image_seed(1, 3, 1)
    # more images per prompt keeps the seeds of the images that already exist
    prompts = [Prompt("a", {}), Prompt("b", {})]
    two = plan_records(prompts, GenerateConfig(images_per_prompt=2), {})
    four = plan_records(prompts, GenerateConfig(images_per_prompt=4), {})
    by_file = {r["file"]: r["seed"] for r in four}
    assert all(by_file[r["file"]] == r["seed"] for r in two)


def test_records_carry_the_resolved_dtype_and_resume_checks_it(tmp_path: Path) -> None:
    from imagen_ray.batch.resume import sidecar, split_done

    cpu = plan_records([Prompt("a")], GenerateConfig(), {})
    assert cpu[0]["dtype"] == "float32"  # auto on CPU replicas
    gpu = plan_records([Prompt("a")], GenerateConfig(num_gpus=1), {})
    assert gpu[0]["dtype"] == "bfloat16"  # auto with GPUs
    r = cpu[0]
    (tmp_path / r["file"]).parent.mkdir(parents=True)
    (tmp_path / r["file"]).write_bytes(b"png")
    old = {k: v for k, v in r.items() if k != "dtype"}  # a record from before dtype existed
    Path(sidecar(tmp_path, r)).write_text(json.dumps(old))
    assert split_done(tmp_path, cpu) == ([old], [])  # it ran in float32: still done
    with pytest.raises(ValueError, match="dtype: 'float32' there, 'bfloat16' now"):
        split_done(tmp_path, gpu)


def test_jpg_is_accepted_and_names_jpg_files() -> None:
    cfg = load_generate_config(None, {"format": "jpg"}, [])
    assert cfg.format == "jpeg"
    assert plan_records([Prompt("a")], cfg, {})[0]["file"] == "images/000000-000.jpg"
    assert load_generate_config(None, {}, ["format=webp"]).format == "webp"
    with pytest.raises(ValueError, match="format"):
        load_generate_config(None, {"format": "gif"}, [])


# ------------------------------------------------------------------ the Ray actor pool


RAY_NUM_CPUS = 2  # the ray_cluster fixture's size for this module


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory) -> Path:
    """The tiny cascade (base 32 px -> sr64), randomly initialised and shrunk."""
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    overrides = [f"stages.{i}.unet.{k}=16" for i in (0, 1) for k in ("channels", "head_dim")]
    cfg = load_cascade_config(ROOT / "configs/tiny/cascade.yaml", overrides)
    return Cascade.from_config(cfg, seed=1).save(tmp_path_factory.mktemp("cascade") / "c")


def _files(out: Path) -> dict[str, int]:
    """Every file under out with its modification time (ns)."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_generate_writes_every_image_and_resumes(
    ray_cluster, cascade_dir: Path, tmp_path: Path, capsys
) -> None:
    prompts = tmp_path / "prompts.csv"
    prompts.write_text(
        "Prompts,Category\na red circle,Colors\ntwo blue squares,Counting\na cat,Animals\n"
    )
    out = tmp_path / "out"
    base = ["generate", "--cascade", str(cascade_dir), "--prompts", str(prompts)]
    base += ["--out", str(out), "-n", "2", "--seed", "5", *FAST, "--no-progress"]
    pool = ["--batch-size", "2", "--num-cpus", "0.5"]

    # 1. the whole plan: 3 prompts x 2 images on a pool of 2 replicas
    assert main([*base, *pool, "--replicas", "2"]) == 0
    assert "6 to generate" in capsys.readouterr().out
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["prompt_index"], r["image_index"]) for r in manifest] == [
        (p, i) for p in range(3) for i in range(2)
    ]
    for r in manifest:
        assert r["prompt"] == ["a red circle", "two blue squares", "a cat"][r["prompt_index"]]
        assert r["seed"] == image_seed(5, r["prompt_index"], r["image_index"])
        assert r["meta"]["Category"] in {"Colors", "Counting", "Animals"}
        assert r["stages"] == ["base", "sr64"]
        assert r["sampling"]["base"]["steps"] == 2 and r["sampling"]["sr64"]["steps"] == 1
        assert Image.open(out / r["file"]).size == (64, 64) == (r["width"], r["height"])
        assert json.loads((out / r["file"]).with_suffix(".json").read_text()) == r
    assert len(list((out / "images").glob("*.png"))) == 6
    first = {r["file"]: np.asarray(Image.open(out / r["file"])) for r in manifest}
    assert len({a.tobytes() for a in first.values()}) == 6  # every seed its own image

    # the manifest's seed reproduces an image outside the pool, in this process
    from imagen_ray.cascade import Cascade

    r = manifest[3]
    alone = Cascade.load(cascade_dir).generate(
        [r["prompt"]], seed=[r["seed"]], sampling=r["sampling"]
    )
    assert np.array_equal(alone.uint8()[0], first[r["file"]])

    # 2. the same command again: everything skipped, nothing written
    before = _files(out)
    assert main([*base, *pool]) == 0
    assert "6 already done and skipped; 0 to generate" in capsys.readouterr().out
    assert _files(out) == before

    # 3. an interrupted run: two images gone, one record torn, the manifest cut short
    lost = [manifest[1]["file"], manifest[4]["file"]]
    for f in lost:
        (out / f).unlink()
    torn = (out / manifest[2]["file"]).with_suffix(".json")
    torn.write_text('{"prompt_index": 1, "ima')
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:2]) + "\n")
    kept = {k: v for k, v in _files(out).items() if k.endswith(".png")}

    assert main([*base, *pool, "--replicas", "1"]) == 0
    log = capsys.readouterr().out
    assert "3 already done and skipped; 3 to generate" in log
    after = _files(out)
    remade = {lost[0], lost[1], manifest[2]["file"]}
    for f, mtime in kept.items():
        if f not in remade:
            assert after[f] == mtime, f"{f} was rewritten"
    for f, pixels in first.items():
        assert np.array_equal(np.asarray(Image.open(out / f)), pixels), f
    resumed = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    strip = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in resumed] == [
        {k: v for k, v in r.items() if k not in strip} for r in manifest
    ]

    # 4. other settings into the same directory: refused, naming the difference
    assert main([*base, "--seed", "6"]) == 2
    err = capsys.readouterr().err
    assert "seed: " in err and "--overwrite" in err
    assert _files(out) == after  # nothing was touched
