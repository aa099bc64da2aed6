"""Consolidate a (sharded) training checkpoint into the cascade's stage format."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from imagen_ray import storage
from imagen_ray.cascade import Stage, save_stage
from imagen_ray.cascade.io import CONFIG as STAGE_CONFIG
from imagen_ray.config import RunConfig
from imagen_ray.train import checkpoint as ckpt_io
from imagen_ray.train.ema import consolidate_partitions
from imagen_ray.train.finite import require_finite
from imagen_ray.train.wandb_runs import checkpoint_run_id, run_info


def checkpoint_weights(ckpt_dir: Path, weights: str = "ema") -> dict[str, torch.Tensor]:
    """Full fp32 U-Net weights (``Stage.unet`` keys) of one complete checkpoint.

    Args:
        ckpt_dir: a ``checkpoint_*`` directory (complete: ``read_config`` checked it).
        weights: ``ema`` (the EMA weights, read from safetensors, no process group needed)
            or ``model`` (the raw weights, consolidated from DeepSpeed's ZeRO files with
            ``zero_to_fp32``; these are torch pickles written by the run itself).
    """
    meta = ckpt_io.read_config(ckpt_dir)
    if weights == "ema":
        world = int(meta["world_size"])
        state = consolidate_partitions([ckpt_io.load_ema_state(ckpt_dir, r) for r in range(world)])
    elif weights == "model":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=ckpt_io.DS_TAG)
    else:
        raise ValueError(f"weights={weights!r}: choose 'ema' or 'model'")
    return {k.removeprefix("unet."): v for k, v in state.items()}


def export_checkpoint(
    ckpt_dir: str | Path, out_dir: str | Path, *, weights: str = "ema"
) -> str | Path:
    """Write ``config.json`` + ``model.safetensors`` for the stage trained in ``ckpt_dir``.

    Args:
        ckpt_dir: a ``checkpoint_*`` directory, or a run directory (its latest complete
            checkpoint is used); local or a URI (``s3://...``: only that checkpoint is
            downloaded, to a temporary directory).
        out_dir: the stage directory to write (atomically; a URI: uploaded, its
            ``config.json`` last).
        weights: ``ema`` (default) or ``model``, see :func:`checkpoint_weights`.

    Returns:
        The stage directory (a URI when ``out_dir`` is one), loadable with
        ``imagen_ray.publish.load_cascade([...])`` (a local one also with ``Cascade.load`` /
        ``load_stage``).

    Raises:
        NonFiniteWeights: the weights hold NaN/inf (nothing is written).
    """
    found = ckpt_io.find_checkpoint(ckpt_dir)
    # a remote checkpoint: the EMA weights need neither DeepSpeed's model nor optimizer files
    # ("state" holds the W&B run id the stage records)
    parts = (ckpt_io.CONFIG, "complete", "ema", "state") if weights == "ema" else ()
    with storage.local_dir(found, what="checkpoint", parts=parts) as d:
        return _export(d, found, out_dir, weights)


def _export(d: Path, source: str, out_dir: str | Path, weights: str) -> str | Path:
    """:func:`export_checkpoint` of the local checkpoint ``d`` (``source``: where it is)."""
    meta = ckpt_io.read_config(d)
    cfg = RunConfig.model_validate(meta["run"])
    state = checkpoint_weights(d, weights)
    require_finite(
        state,
        what=f"{source} ({weights} weights, step {meta['step']})",
        fix="not exported. Export an earlier checkpoint_* directory of the run",
    )
    with torch.device("meta"):
        stage = Stage(cfg.stage, text_dim=int(meta["text_dim"]))
    extra = {
        "step": meta["step"],
        "weights": weights,
        "checkpoint": source,
        # for the model card (imagen_ray.publish.card): what it was trained on and how far
        "samples": meta.get("samples"),
        "metrics": meta.get("metrics") or {},
        "data": cfg.data.shards,
        # the training run, for `eval --log-to-run` and the model artifact
        "wandb": run_info(cfg, checkpoint_run_id(d)),
    }
    if not storage.is_uri(out_dir):
        return save_stage(stage, cfg.text, out_dir, state_dict=state, extra=extra)
    with tempfile.TemporaryDirectory(prefix="imagen-ray-export-") as tmp:
        local = save_stage(stage, cfg.text, Path(tmp) / "stage", state_dict=state, extra=extra)
        storage.upload_dir(local, out_dir, last=(STAGE_CONFIG,))
    return storage.resolve(out_dir)
