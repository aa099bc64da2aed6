"""Stage directories as cascades, ``assemble_cascade`` (checks, atomic write, hard links) and
the generated model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from imagen_ray.cascade import Cascade, CheckpointError
from imagen_ray.publish.assemble import assemble_cascade
from imagen_ray.publish.card import model_card
from tests.cascade.test_cascade import TEXT, FakeEncoder, cascade_config, perturb

PROMPTS = ["a red circle", "two blue squares"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved two-stage cascade (base 16 px -> sr 32 px) with a training record on base."""
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=1)
    perturb(c)
    c.stage_list[0].extra = {
        "step": 1200,
        "samples": 76800,
        "weights": "ema",
        "data": ["data/synthetic/train-{000000..000015}.tar"],
        "metrics": {"loss": 0.0123456, "step": 1200},
        "wandb": {"run_id": "abc123", "project": "imagen-ray", "entity": None, "mode": "offline"},
    }
    return c.save(tmp_path_factory.mktemp("saved") / "c")


def images(c: Cascade) -> np.ndarray:
    return c.generate(PROMPTS, seed=5).uint8()


def test_a_stage_directory_is_a_one_stage_cascade(saved: Path) -> None:
    from imagen_ray.batch.plan import stage_configs
    from imagen_ray.config import ServeConfig
    from imagen_ray.serve.app import check_cascade_dir

    one = Cascade.load(saved / "base", encoder=FakeEncoder())
    assert [s.cfg.name for s in one.stage_list] == ["base"]
    assert one.stage_list[0].extra["step"] == 1200  # the record survives a load
    assert [s.name for s in stage_configs([str(saved / "base")])] == ["base"]
    assert check_cascade_dir(ServeConfig(cascade=str(saved / "base"))) == [saved / "base"]
    with pytest.raises(CheckpointError, match=r"stage 'sr' .* is super-resolution"):
        check_cascade_dir(ServeConfig(cascade=str(saved / "sr")))  # no base stage to serve
    with pytest.raises(CheckpointError, match=r"not a stage directory either"):
        Cascade.load(saved.parent)
    full = Cascade.load(saved, encoder=FakeEncoder())
    np.testing.assert_array_equal(images(one), full.generate(PROMPTS, seed=5).uint8(0))


def test_assemble_links_weights_and_loads_as_the_same_cascade(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "assembled"
    done = assemble_cascade([saved / "base", saved / "sr"], out)
    assert done.stages == ["base", "sr"] and done.weights == {"base": "hardlink", "sr": "hardlink"}
    assert (out / "sr" / "model.safetensors").samefile(saved / "sr" / "model.safetensors")
    assert json.loads((out / "cascade.json").read_text())["stages"] == ["base", "sr"]
    assert not [p for p in tmp_path.iterdir() if p.name != "assembled"]  # no temp left over
    a = Cascade.load(out, encoder=FakeEncoder())
    np.testing.assert_array_equal(images(a), images(Cascade.load(saved, encoder=FakeEncoder())))

    copied = assemble_cascade([saved / "base", saved / "sr"], tmp_path / "copied", link=False)
    assert copied.weights == {"base": "copy", "sr": "copy"}
    w = tmp_path / "copied" / "base" / "model.safetensors"
    assert not w.samefile(saved / "base" / "model.safetensors")
    assert w.read_bytes() == (saved / "base" / "model.safetensors").read_bytes()


def test_model_card_has_architecture_encoder_and_training(saved: Path, tmp_path: Path) -> None:
    assemble_cascade([saved / "base", saved / "sr"], tmp_path / "a")
    card = (tmp_path / "a" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: imagen-ray\npipeline_tag: text-to-image")
    assert "| `base` | base | 16 px |" in card and "| `sr` | 16→32 SR | 32 px |" in card
    assert f"`{TEXT.name}`, {TEXT.max_length} tokens" in card
    assert "1200 steps; 76800 examples seen; ema weights" in card
    assert "data/synthetic/train-{000000..000015}.tar" in card and "loss=0.01235" in card
    assert "W&B run `imagen-ray/abc123`" in card  # the run `eval --wandb-run` takes
    assert "- `sr`: no training record" in card
    assert card == model_card(tmp_path / "a", title="a")
    # the card's Python example imports what exists
    example = card.split("```python\n")[1].split("```")[0]
    imports = [line for line in example.splitlines() if line.startswith("from ")]
    assert imports == ["from imagen_ray.publish import from_pretrained"]
    exec(imports[0], {})


def _edit_stage(src: Path, dst: Path, **changes: object) -> Path:
    """A copy of a stage directory with its config.json edited (top-level or stage keys)."""
    dst.mkdir(parents=True)
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    meta = json.loads((src / "config.json").read_text())
    for k, v in changes.items():
        if k in meta:
            meta[k] = v
        else:
            meta["stage"][k] = v
    (dst / "config.json").write_text(json.dumps(meta))
    return dst


def test_assemble_errors_name_the_stage_and_the_mismatch(saved: Path, tmp_path: Path) -> None:
    base, sr = saved / "base", saved / "sr"
    with pytest.raises(CheckpointError, match=r"stage 'sr' .* is super-resolution .* first"):
        assemble_cascade([sr, base], tmp_path / "o")
    other_text = _edit_stage(sr, tmp_path / "t5", text={**TEXT.model_dump(), "name": "t5-small"})
    with pytest.raises(
        CheckpointError, match=r"stage 'sr' .*another text encoder.*name: 't5-small'"
    ):
        assemble_cascade([base, other_text], tmp_path / "o")
    wrong = _edit_stage(sr, tmp_path / "sr8", lowres_size=8)
    with pytest.raises(CheckpointError, match=r"takes 8 px input .* 'base', makes 16 px"):
        assemble_cascade([base, wrong], tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"'base' .* is a base stage; only the first"):
        assemble_cascade([base, base], tmp_path / "o")
    twice = _edit_stage(sr, tmp_path / "sr64", size=64, lowres_size=32)
    with pytest.raises(CheckpointError, match=r"two stages are named 'sr'"):
        assemble_cascade([base, sr, twice], tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"is not a saved stage: config.json is missing"):
        assemble_cascade([base, tmp_path / "nothing"], tmp_path / "o")
    with pytest.raises(CheckpointError, match=r"would replace the stage"):
        assemble_cascade([base, sr], saved)
    assert not (tmp_path / "o").exists()
