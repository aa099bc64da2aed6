"""Training checkpoints: DeepSpeed's per-rank files + EMA partitions + step/RNG + config.

Layout (each rank writes its own files into a local directory; Ray Train merges the ranks'
directories into one checkpoint when they all call ``ray.train.report``)::

    ds/                      engine.save_checkpoint(dir, tag="ds"): model + ZeRO shards
    ema/rank_00000.safetensors, ema/rank_00000.json     this rank's EMA partition + meta
    state/rank_00000.json, state/rank_00000.rng.safetensors   step, counters, RNG states
    config.json              (rank 0) resolved run config, text_dim, world size
    complete/rank_00000      written LAST by each rank

A checkpoint loads only when every rank's ``complete`` marker is present, so an upload cut
short never resumes half a model. EMA and run state are safetensors/JSON; DeepSpeed's own
files are torch pickles written by this run and read back only by DeepSpeed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from imagen_ray import storage

CONFIG = "config.json"
FORMAT = "imagen-ray/train-checkpoint"
DS_TAG = "ds"


class IncompleteCheckpoint(RuntimeError):
    """A checkpoint directory lacks some rank's files."""


def _rank(r: int) -> str:
    return f"rank_{r:05d}"


def save_rank_files(
    ckpt_dir: Path,
    *,
    rank: int,
    ema_state: dict[str, Any],
    state: dict[str, Any],
    rng: dict[str, torch.Tensor],
) -> None:
    """Write this rank's EMA, state and RNG files (DeepSpeed's files are written separately)."""
    for sub in ("ema", "state", "complete"):
        (ckpt_dir / sub).mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in ema_state["tensors"].items()}
    save_file(tensors, str(ckpt_dir / "ema" / f"{_rank(rank)}.safetensors"))
    (ckpt_dir / "ema" / f"{_rank(rank)}.json").write_text(json.dumps(ema_state["meta"]))
    (ckpt_dir / "state" / f"{_rank(rank)}.json").write_text(json.dumps(state, indent=1))
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in rng.items()},
        str(ckpt_dir / "state" / f"{_rank(rank)}.rng.safetensors"),
    )


def mark_complete(ckpt_dir: Path, rank: int) -> None:
    """The last file a rank writes into a checkpoint."""
    (ckpt_dir / "complete").mkdir(parents=True, exist_ok=True)
    (ckpt_dir / "complete" / _rank(rank)).write_text("ok\n")


def write_config(ckpt_dir: Path, run_config: dict[str, Any], **extra: Any) -> None:
    """Rank 0: the resolved run config and facts needed to rebuild and export the model."""
    meta = {"format": FORMAT, "version": 1, "run": run_config, **extra}
    (ckpt_dir / CONFIG).write_text(json.dumps(meta, indent=2))


def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` after checking that every rank completed it.

    ``ckpt_dir`` may be a URI (``s3://...``): only ``config.json`` and the markers are read.
    """
    d = ckpt_dir if storage.is_uri(ckpt_dir) else Path(ckpt_dir)
    path = storage.join(d, CONFIG)
    if not storage.is_file(path):
        raise IncompleteCheckpoint(
            f"{d} is not an imagen-ray training checkpoint ({CONFIG} missing); pass a "
            "checkpoint_* directory of a run (runs/<name>/checkpoint_...)"
        )
    meta: dict[str, Any] = json.loads(storage.read_text(path))
    world = int(meta["world_size"])
    done = set(storage.listdir(storage.join(d, "complete")))
    missing = [r for r in range(world) if _rank(r) not in done]
    if missing:
        raise IncompleteCheckpoint(
            f"{d} is incomplete: ranks {missing} of {world} did not finish writing it; use "
            "an earlier checkpoint"
        )
    return meta


def load_rank_state(ckpt_dir: Path, rank: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This rank's run state and RNG tensors."""
    state = json.loads((ckpt_dir / "state" / f"{_rank(rank)}.json").read_text())
    rng = load_file(str(ckpt_dir / "state" / f"{_rank(rank)}.rng.safetensors"))
    return state, rng


def load_ema_state(ckpt_dir: Path, rank: int) -> dict[str, Any]:
    """One rank's EMA state (``EMA.load_state_dict`` / ``consolidate_partitions`` input)."""
    return {
        "tensors": load_file(str(ckpt_dir / "ema" / f"{_rank(rank)}.safetensors")),
        "meta": json.loads((ckpt_dir / "ema" / f"{_rank(rank)}.json").read_text()),
    }


def latest_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the complete checkpoint with the highest
    step among the run directory's ``checkpoint_*`` subdirectories (local directories; for
    a URI see :func:`find_checkpoint`)."""
    return Path(find_checkpoint(Path(path)))


def find_checkpoint(path: str | Path) -> str:
    """:func:`latest_checkpoint` of a local directory or a URI (``s3://bucket/runs/base``),
    returned as a path or URI string.

    Raises:
        IncompleteCheckpoint: no complete checkpoint there.
    """
    p = path if storage.is_uri(path) else Path(path)
    if storage.is_file(storage.join(p, CONFIG)):
        return str(p)
    found = []
    for name in storage.listdir(p):
        if not name.startswith("checkpoint_"):
            continue
        d = storage.join(p, name)
        try:
            found.append((int(read_config(d)["step"]), d))
        except (IncompleteCheckpoint, KeyError, ValueError):
            continue
    if not found:
        raise IncompleteCheckpoint(
            f"no complete imagen-ray checkpoint in {p} (expected a checkpoint_* directory, or "
            "a run directory runs/<name> containing them)"
        )
    return max(found)[1]
