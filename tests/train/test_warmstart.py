"""train.init_from (fast): sources are recognised, mismatched models refused before any
worker starts with each key named, and the weights a worker loads are the source's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from imagen_ray.cascade import Stage, save_stage
from imagen_ray.config import RunConfig
from imagen_ray.train import checkpoint as ckpt_io
from imagen_ray.train.launcher import LaunchError, resolve_init
from imagen_ray.train.warmstart import load_init_weights
from tests.train.conftest import TEXT_DIM, tiny_cfg


def tiny_stage(cfg: RunConfig, seed: int = 0) -> Stage:
    torch.manual_seed(seed)
    return Stage(cfg.stage, text_dim=TEXT_DIM)


def fake_checkpoint(run: Path, cfg: RunConfig, ema: dict[str, torch.Tensor], step: int) -> Path:
    """A one-rank training checkpoint holding ``ema`` as its EMA (no DeepSpeed files: the
    EMA path never reads them)."""
    d = run / f"checkpoint_{step:06d}"
    ema_state = {
        "tensors": {f"unet.{k}": v for k, v in ema.items()},
        "meta": {
            "num_updates": step,
            "decay": 0.9,
            "shapes": {f"unet.{k}": list(v.shape) for k, v in ema.items()},
            "partitioned": False,
        },
    }
    ckpt_io.save_rank_files(
        d, rank=0, ema_state=ema_state, state={"step": step}, rng={"g": torch.zeros(1)}
    )
    ckpt_io.write_config(
        d, cfg.model_dump(mode="json"), text_dim=TEXT_DIM, world_size=1, zero_stage=0, step=step
    )
    ckpt_io.mark_complete(d, 0)
    return d


def test_an_exported_stage_is_accepted_and_loads_its_exact_weights(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "a")
    stage = tiny_stage(cfg, seed=3)
    src = save_stage(stage, cfg.text, tmp_path / "exported")
    # dropout and activation checkpointing change no weight: a fine-tune may set them
    run = tiny_cfg(tmp_path, "b", "stage.unet.dropout=0.1", f"train.init_from={src}")
    assert resolve_init(run, str(src), TEXT_DIM) == str(src)
    got = load_init_weights(src)
    want = stage.unet.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_run_directory_resolves_to_its_latest_checkpoints_ema(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "a")
    old = {k: torch.zeros_like(v) for k, v in tiny_stage(cfg).unet.state_dict().items()}
    new = tiny_stage(cfg, seed=1).unet.state_dict()
    fake_checkpoint(tmp_path / "runA", cfg, old, step=5)
    latest = fake_checkpoint(tmp_path / "runA", cfg, new, step=10)
    assert resolve_init(cfg, str(tmp_path / "runA"), TEXT_DIM) == str(latest)
    got = load_init_weights(tmp_path / "runA")
    assert all(torch.equal(got[k], new[k]) for k in new)


def test_an_incompatible_stage_is_refused_naming_each_key(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "a")
    src = save_stage(tiny_stage(cfg), cfg.text, tmp_path / "exported")
    other = tiny_cfg(tmp_path, "b", "stage.unet.channels=32", "stage.size=64")
    with pytest.raises(LaunchError) as e:
        resolve_init(other, str(src), TEXT_DIM)
    msg = str(e.value)
    assert "stage.unet.channels: 32 in this run, 16 in the source" in msg
    assert "stage.size: 64 in this run, 32 in the source" in msg
    assert "stage.unet.head_dim" not in msg  # only the keys that differ
    with pytest.raises(LaunchError, match=r"text dim .*: 512 in this run, 384 in the source"):
        resolve_init(cfg, str(src), 512)


def test_what_is_not_a_stage_or_checkpoint_is_refused(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "a")
    with pytest.raises(LaunchError, match="no such directory"):
        resolve_init(cfg, str(tmp_path / "missing"), TEXT_DIM)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LaunchError, match="neither an exported stage"):
        resolve_init(cfg, str(tmp_path / "empty"), TEXT_DIM)
