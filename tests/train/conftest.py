"""Shared fixtures and helpers of the training tests (real Ray Train + DeepSpeed on CPU).

Helpers are plain functions imported by the test modules (``tests.train.conftest``); the
Ray cluster is a module-scoped fixture, so each test module starts and stops its own.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from imagen_ray.config import RunConfig, load_run_config

ROOT = Path(__file__).resolve().parents[2]
TEXT_DIM = 384  # MiniLM's width: the in-memory data needs no encoder to know it


# DeepSpeed's JIT-built ops are cached across test runs.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))


def tiny_cfg(tmp: Path, name: str, *extra: str) -> RunConfig:
    """The tiny base stage shrunk further (16 channels, 8 tokens): 10 steps, 2 workers."""
    return load_run_config(
        ROOT / "configs/tiny/base.yaml",
        [
            "stage.unet.channels=16",
            "stage.unet.head_dim=16",
            "text.max_length=8",
            "data.batch_size=4",
            "train.steps=10",
            "train.lr=1e-3",
            "train.log_every=5",
            "train.checkpoint_every=5",
            "train.ema_decay=0.9",
            "train.max_failures=0",
            f"train.storage_path={tmp}",
            f"train.name={name}",
            *extra,
        ],
    )


def fit(cfg: RunConfig, **kw: Any) -> Any:
    """Build the run's ``TorchTrainer`` and ``fit()`` it; the data are seeded in-memory
    batches unless ``batches`` says otherwise (None: the Ray Data pipeline)."""
    from imagen_ray.train.batches import random_batches
    from imagen_ray.train.launcher import build_trainer

    kw.setdefault("batches", random_batches)
    return build_trainer(cfg, text_dim=TEXT_DIM, **kw).fit()


def exported(run_dir: Path, out: Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """Export a run's latest checkpoint and load its U-Net weights back."""
    from imagen_ray.cascade import load_stage
    from imagen_ray.train.export import export_checkpoint

    stage, _ = load_stage(export_checkpoint(run_dir, out, weights=weights))
    return {k: v.detach().clone() for k, v in stage.unet.state_dict().items()}


def wandb_run_files(run_dir: Path) -> list[Path]:
    """The offline ``run-<id>.wandb`` files under a run directory."""
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def read_wandb_records(path: str | Path) -> list[Any]:
    """Every record (``wandb_internal_pb2.Record``) of an offline ``run-*.wandb`` file (W&B's
    LevelDB-style record log: a 7-byte file header, 32 KiB blocks of records with a 7-byte
    crc/length/type header)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if (kind == 0 and length == 0) or pos + 7 + length > len(data):
            break  # the end, or a record still being written
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record is in buf
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(buf)
            buf = b""
            records.append(rec)
    return records


def _items(items: Any) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_wandb_history(path: str | Path) -> list[dict[str, Any]]:
    """History rows of an offline ``run-*.wandb`` file (nested keys joined with ``/``)."""
    return [
        _items(r.history.item)
        for r in read_wandb_records(path)
        if r.WhichOneof("record_type") == "history"
    ]


def read_wandb_summary(path: str | Path) -> dict[str, Any]:
    """The run's summary as the offline file leaves it (later updates win)."""
    out: dict[str, Any] = {}
    for r in read_wandb_records(path):
        if r.WhichOneof("record_type") == "summary":
            out.update(_items(r.summary.update))
    return out


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every metrics row in the run's single offline W&B file."""
    files = wandb_run_files(run_dir)
    assert len(files) == 1, f"expected one W&B run under {run_dir}, found {files}"
    return [(r["step"], r["loss"]) for r in read_wandb_history(files[0]) if "loss" in r]
