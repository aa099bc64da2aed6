"""Warm starts (``train.init_from``): a new run whose weights come from a trained stage.

The source is an exported stage directory (``config.json`` + ``model.safetensors``, what
``imagen-ray export`` writes) or a training checkpoint (a ``checkpoint_*`` directory, or a
run directory: its latest complete checkpoint), whose consolidated EMA weights are used, as
``imagen-ray export`` reads them. Only the weights carry over: the run starts at step 0 with a
fresh optimizer, LR schedule, RNG and data position, and its EMA starts from the loaded
weights. The launcher checks compatibility on the driver (:func:`model_mismatches`) before
any worker starts; every worker then loads the weights (:func:`load_init_weights`) into its
stage before DeepSpeed wraps it, so the path must be readable from every worker: a shared
filesystem or a URI (``s3://...``, see :mod:`imagen_ray.storage`) on a multi-node cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagen_ray import storage
from imagen_ray.config import RunConfig

# Keys of stage.unet that change no weight: they may differ between the source and the run.
_UNET_FREE_KEYS = frozenset({"dropout", "grad_checkpointing"})


@dataclass(frozen=True)
class InitSource:
    """What ``train.init_from`` points at, read from its ``config.json`` alone."""

    kind: str  # "stage" (an exported stage) or "checkpoint" (a training checkpoint)
    path: str | Path  # the stage or checkpoint directory itself (a URI stays a URI)
    stage: dict[str, Any]  # the source's stage config (JSON data)
    text_dim: int


def read_init_source(path: str | Path) -> InitSource:
    """Identify ``path`` as an exported stage or a (run directory's latest) checkpoint.

    ``path`` may be a URI (``s3://...``): only its ``config.json`` files are read.

    Raises:
        ValueError: neither; the message says what ``train.init_from`` accepts.
    """
    from imagen_ray.cascade.io import CheckpointError, read_stage_meta
    from imagen_ray.train import checkpoint as ckpt_io

    p = path if storage.is_uri(path) else Path(path).expanduser()
    if not storage.is_dir(p):
        raise ValueError(f"train.init_from={path}: no such directory")
    if storage.is_file(storage.join(p, "model.safetensors")):
        try:
            meta = read_stage_meta(p)
        except CheckpointError as e:
            raise ValueError(f"train.init_from={path}: {e}") from e
        return InitSource("stage", p, meta["stage"], int(meta["text_dim"]))
    try:
        found = ckpt_io.find_checkpoint(p)
        meta = ckpt_io.read_config(found)
    except ckpt_io.IncompleteCheckpoint as e:
        raise ValueError(
            f"train.init_from={path} is neither an exported stage (config.json + "
            f"model.safetensors) nor a training checkpoint: {e}"
        ) from e
    ckpt = found if storage.is_uri(found) else Path(found)
    return InitSource("checkpoint", ckpt, meta["run"]["stage"], int(meta["text_dim"]))


def model_mismatches(cfg: RunConfig, text_dim: int, source: InitSource) -> list[str]:
    """The model-defining keys on which the run and the source differ, one line each.

    Compared: ``stage.size``, ``stage.lowres_size``, every ``stage.unet`` key except those
    that change no weight (dropout, grad_checkpointing), and the text encoder's width.
    Diffusion, sampling and noise-augmentation settings may change in a fine-tune.
    """
    from imagen_ray.config import StageConfig

    theirs = StageConfig.model_validate(source.stage).model_dump(mode="json")
    ours = cfg.stage.model_dump(mode="json")
    out = []
    for key in ("size", "lowres_size"):
        if ours[key] != theirs[key]:
            out.append(f"stage.{key}: {ours[key]!r} in this run, {theirs[key]!r} in the source")
    for key in sorted(ours["unet"].keys() | theirs["unet"].keys()):
        a, b = ours["unet"].get(key), theirs["unet"].get(key)
        if key not in _UNET_FREE_KEYS and a != b:
            out.append(f"stage.unet.{key}: {a!r} in this run, {b!r} in the source")
    if text_dim != source.text_dim:
        out.append(
            f"text dim (text.dim / the encoder's width): {text_dim} in this run, "
            f"{source.text_dim} in the source"
        )
    return out


def load_init_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The U-Net weights (``Stage.unet`` keys, fp32, CPU) of a checked init source."""
    from safetensors.torch import load_file

    from imagen_ray.train.export import checkpoint_weights

    source = read_init_source(path)
    # a remote checkpoint: only what the EMA weights need, not DeepSpeed's optimizer files
    parts = () if source.kind == "stage" else ("config.json", "complete", "ema")
    with storage.local_dir(source.path, what=source.kind, parts=parts) as d:
        if source.kind == "stage":
            state = load_file(str(d / "model.safetensors"), device="cpu")
            return {k: v.float() for k, v in state.items()}
        return checkpoint_weights(d, "ema")
