"""Saving and loading stages and cascades: safetensors weights + JSON config, nothing pickled.

Layout of a saved cascade::

    out/
      cascade.json            {"format": "imagen-ray/cascade", "version": 1, "stages": [...]}
      base/config.json        {"format": "imagen-ray/stage", "version": 1, "text", "stage"}
      base/model.safetensors  U-Net weights (EMA weights when exported from training)
      sr64/...

A stage directory stands on its own (training exports one per run); a cascade directory
lists stage directories in order. Writes go to a temporary sibling and are renamed into
place, so an interrupted save never leaves a half-written stage that later loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from imagen_ray import storage
from imagen_ray.cascade.stage import Stage
from imagen_ray.config import (
    CascadeConfig,
    ConfigError,
    StageConfig,
    TextEncoderConfig,
    validate,
)
from imagen_ray.fs import atomic_dir, atomic_write_json, check_space, umask_mode

STAGE_FORMAT = "imagen-ray/stage"
CASCADE_FORMAT = "imagen-ray/cascade"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "cascade.json"


class CheckpointError(ValueError):
    """A saved stage or cascade cannot be loaded; the message says why and what to do."""


def save_stage(
    stage: Stage,
    text: TextEncoderConfig,
    out_dir: str | Path,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one stage as ``config.json`` + ``model.safetensors``.

    Args:
        stage: the stage (its config and, unless ``state_dict`` is given, its U-Net weights).
        text: the text encoder config the stage was trained with.
        out_dir: target directory (replaced atomically if it exists).
        state_dict: U-Net weights to write instead of the stage's own (e.g. EMA weights).
        extra: JSON-able metadata stored under ``"extra"`` (training step, source, ...).

    Returns:
        The directory written.
    """
    final = Path(out_dir)
    weights = state_dict if state_dict is not None else stage.unet.state_dict()
    weights = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    meta = {
        "format": STAGE_FORMAT,
        "version": FORMAT_VERSION,
        "text_dim": stage.text_dim,
        "text": text.model_dump(mode="json"),
        "stage": stage.cfg.model_dump(mode="json"),
        "extra": extra or {},
    }
    need = sum(t.numel() * t.element_size() for t in weights.values()) + 2**16
    final.parent.mkdir(parents=True, exist_ok=True)
    check_space(final.parent, need)  # refused before a byte is written when it cannot fit
    with atomic_dir(final) as tmp:
        atomic_write_json(tmp / CONFIG, meta)
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": STAGE_FORMAT})
        umask_mode(tmp / WEIGHTS)  # safetensors writes 0600: unreadable to a serving account
    return final


def _read_json(path: str | Path, missing: str) -> dict[str, Any]:
    """A JSON mapping (a local file or a URI), or a CheckpointError saying ``missing`` /
    what is wrong with it."""
    if not storage.is_file(path):
        raise CheckpointError(missing)
    try:
        meta = json.loads(storage.read_text(path))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def read_stage_meta(stage_dir: str | Path) -> dict[str, Any]:
    """Read and check a stage's ``config.json`` (format and version); a URI is read in place."""
    path = storage.join(stage_dir, CONFIG)
    meta = _read_json(
        path,
        f"{stage_dir} is not a saved stage: {CONFIG} is missing (export a training "
        "checkpoint with `imagen-ray export`, or save one with Cascade.save)",
    )
    if meta.get("format") != STAGE_FORMAT:
        raise CheckpointError(f"{path}: not an imagen-ray stage (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: stage format version {meta.get('version')!r} is not supported by this "
            f"imagen-ray (reads version {FORMAT_VERSION}); re-export it with a matching version"
        )
    return meta


def load_stage(
    stage_dir: str | Path, *, device: torch.device | str = "cpu"
) -> tuple[Stage, TextEncoderConfig]:
    """Rebuild a stage from its directory.

    Returns:
        (stage in eval mode on ``device``, the text encoder config it expects).

    Raises:
        CheckpointError: missing files, another format/version, or weights that do not match
            the config (names the missing, unexpected and mis-shaped tensors).
    """
    meta = read_stage_meta(stage_dir)
    try:
        text = validate(TextEncoderConfig, meta["text"], f"{stage_dir}/{CONFIG}:text")
        cfg = validate(StageConfig, meta["stage"], f"{stage_dir}/{CONFIG}:stage")
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{stage_dir}: its config cannot be read: {e}") from e
    weights_path = Path(stage_dir) / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"{stage_dir}: {WEIGHTS} is missing")
    with torch.device("meta"):
        stage = Stage(cfg, text_dim=int(meta["text_dim"]))
    state = load_file(str(weights_path), device="cpu")
    _check_weights(stage, state, str(stage_dir))
    stage.unet.load_state_dict(state, strict=True, assign=True)
    stage.extra = dict(meta.get("extra") or {})
    return stage.to(device).eval(), text


def _check_weights(stage: Stage, state: dict[str, torch.Tensor], where: str) -> None:
    expected = {k: tuple(v.shape) for k, v in stage.unet.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(expected.keys() - got.keys())
    unexpected = sorted(got.keys() - expected.keys())
    shapes = [
        f"{k}: config {expected[k]} vs file {got[k]}"
        for k in sorted(expected.keys() & got.keys())
        if expected[k] != got[k]
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. {shapes[:3]})")
        raise CheckpointError(
            f"{where}: the weights do not match the stage config: " + "; ".join(parts) + ". "
            "The config.json was edited or the weights come from another model."
        )


def save_cascade_manifest(out_dir: Path, names: list[str], text: TextEncoderConfig) -> None:
    """Write ``cascade.json`` listing the stage directories in order."""
    manifest = {
        "format": CASCADE_FORMAT,
        "version": FORMAT_VERSION,
        "text": text.model_dump(mode="json"),
        "stages": names,
    }
    atomic_write_json(out_dir / MANIFEST, manifest)


def read_cascade_manifest(path: str | Path) -> list[Path]:
    """Stage directories of a saved cascade, in order; checks format and version.

    A single stage directory (``config.json`` + weights, what ``imagen-ray export`` writes)
    is a one-stage cascade: ``[path]``.
    """
    p = Path(path) / MANIFEST
    if not p.is_file() and (Path(path) / CONFIG).is_file():
        read_stage_meta(path)  # a stage directory: check its format here, with its name
        return [Path(path)]
    meta = _read_json(
        p,
        f"{path} is not a saved cascade: {MANIFEST} is missing, and it is not a stage "
        f"directory either ({CONFIG} is missing too); pass a directory written by "
        "`imagen-ray init`, `imagen-ray export` or `imagen-ray cascade assemble`",
    )
    if meta.get("format") != CASCADE_FORMAT or meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: format {meta.get('format')!r} version {meta.get('version')!r} is not "
            f"{CASCADE_FORMAT!r} version {FORMAT_VERSION}"
        )
    return [Path(path) / name for name in meta["stages"]]


def stage_dirs(path: str | Path | Sequence[str | Path]) -> list[Path]:
    """The stage directories ``--cascade`` names, base first.

    Args:
        path: a saved cascade directory, a single stage directory, or stage directories in
            order (a list of one is read like the directory alone).

    Returns:
        The stage directories, in cascade order.
    """
    if isinstance(path, (str, Path)):
        return read_cascade_manifest(path)
    paths = [Path(p) for p in path]
    if len(paths) == 1:
        return read_cascade_manifest(paths[0])
    return paths


def check_chain(text: TextEncoderConfig, stages: list[StageConfig]) -> CascadeConfig:
    """Validate loaded stages as a cascade (sizes chain, names unique)."""
    try:
        return CascadeConfig(text=text, stages=tuple(stages))
    except ValueError as e:
        raise CheckpointError(f"these stages do not form a cascade: {e}") from e
