"""Exported stage directories -> one servable cascade directory (``imagen-ray cascade
assemble``), checked without loading a weight.

The weights are hard-linked when the output is on the stages' filesystem and copied
otherwise. A link is safe because nothing rewrites a ``model.safetensors`` in place: every
save (``save_stage``, ``imagen-ray export``) builds a new directory and renames it over the
old one, so re-exporting a stage gives the source a new file and leaves the linked one
intact; and it makes assembling a multi-gigabyte cascade instant and free of disk space.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagen_ray.cascade.io import (
    CONFIG,
    WEIGHTS,
    CheckpointError,
    check_chain,
    read_stage_meta,
    save_cascade_manifest,
)
from imagen_ray.config import ConfigError, StageConfig, TextEncoderConfig, validate
from imagen_ray.fs import atomic_dir
from imagen_ray.publish.card import CARD, model_card


@dataclass
class Assembled:
    """What ``assemble_cascade`` wrote.

    Attributes:
        out: the cascade directory.
        stages: the stage names, base first.
        weights: per stage, ``"hardlink"`` or ``"copy"``.
    """

    out: Path
    stages: list[str]
    weights: dict[str, str]


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys if a.get(k) != b.get(k))


def check_stages(dirs: Sequence[Path]) -> tuple[TextEncoderConfig, list[StageConfig]]:
    """Check that stage directories form a cascade, in this order.

    Checks: each is a stage directory with weights; one text encoder (config and embedding
    width) for all; names unique; the first is a base stage and each super-resolution stage's
    input size is the previous stage's output size.

    Returns:
        (the text encoder config, the stage configs in order).

    Raises:
        CheckpointError: naming the stage directory and the mismatch.
    """
    if not dirs:
        raise CheckpointError("no stages: pass --stage DIR once per stage, base first")
    metas = [read_stage_meta(d) for d in dirs]
    cfgs: list[StageConfig] = []
    for d, m in zip(dirs, metas, strict=True):
        if not (d / WEIGHTS).is_file():
            raise CheckpointError(f"stage {d}: {WEIGHTS} is missing")
        try:
            cfgs.append(validate(StageConfig, m["stage"], f"{d}/{CONFIG}:stage"))
        except (ConfigError, KeyError) as e:
            raise CheckpointError(f"stage {d}: its config cannot be read: {e}") from e
    first, first_dir = metas[0], dirs[0]
    for d, m, cfg in zip(dirs, metas, cfgs, strict=True):
        name = f"stage {cfg.name!r} ({d})"
        if m.get("text") != first.get("text"):
            raise CheckpointError(
                f"{name} was trained with another text encoder than {cfgs[0].name!r} "
                f"({first_dir}): {_differences(m.get('text') or {}, first.get('text') or {})}; "
                "every stage of a cascade must share one text encoder"
            )
        if m.get("text_dim") != first.get("text_dim"):
            raise CheckpointError(
                f"{name} expects text embeddings of width {m.get('text_dim')}, "
                f"{cfgs[0].name!r} ({first_dir}) of width {first.get('text_dim')}"
            )
    if cfgs[0].is_sr:
        raise CheckpointError(
            f"stage {cfgs[0].name!r} ({dirs[0]}) is super-resolution "
            f"({cfgs[0].lowres_size} -> {cfgs[0].size} px); a cascade must start with a base "
            "stage (the first --stage)"
        )
    seen: dict[str, Path] = {}
    for prev, (d, cfg) in zip(cfgs, list(zip(dirs, cfgs, strict=True))[1:], strict=False):
        if not cfg.is_sr:
            raise CheckpointError(
                f"stage {cfg.name!r} ({d}) is a base stage; only the first --stage can be one "
                "(the others upsample the previous stage's images)"
            )
        if cfg.lowres_size != prev.size:
            raise CheckpointError(
                f"stage {cfg.name!r} ({d}) takes {cfg.lowres_size} px input but the stage "
                f"before it, {prev.name!r}, makes {prev.size} px images; sizes must chain"
            )
    for d, cfg in zip(dirs, cfgs, strict=True):
        if cfg.name in seen:
            raise CheckpointError(
                f"two stages are named {cfg.name!r} ({seen[cfg.name]} and {d}); stage names "
                "name the cascade's subdirectories and must be unique"
            )
        seen[cfg.name] = d
    text = validate(TextEncoderConfig, first["text"], f"{first_dir}/{CONFIG}:text")
    check_chain(text, cfgs)  # the cascade's own rules, as Cascade.load applies them
    return text, cfgs


def _place(src: Path, dst: Path, link: bool) -> str:
    """Hard-link ``src`` to ``dst`` when allowed and possible (same filesystem), else copy."""
    if link:
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:  # another filesystem (EXDEV), or links not supported there
            pass
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)
    return "copy"


def assemble_cascade(
    stages: Sequence[str | Path], out: str | Path, *, link: bool = True
) -> Assembled:
    """Write a cascade directory from exported stage directories (base first).

    The output is built in a temporary sibling and renamed into place (``imagen_ray.fs``):
    an interrupted run leaves ``out`` as it was. It holds ``cascade.json``, one subdirectory
    per stage (named after the stage) and a generated model card ``README.md``.

    Args:
        stages: stage directories (``config.json`` + ``model.safetensors``), base first.
        out: the cascade directory to write (replaced if it exists).
        link: hard-link the weights when on the same filesystem (default); False copies.

    Returns:
        What was written (see :class:`Assembled`).

    Raises:
        CheckpointError: the stages do not form a cascade (names the stage and why), or
            ``out`` is one of the stage directories.
    """
    dirs = [Path(s) for s in stages]
    final = Path(out)
    for d in dirs:
        if final.resolve() == d.resolve() or final.resolve() in d.resolve().parents:
            raise CheckpointError(f"--out {final} would replace the stage {d}; choose another")
    text, cfgs = check_stages(dirs)
    how: dict[str, str] = {}
    with atomic_dir(final) as tmp:
        for d, cfg in zip(dirs, cfgs, strict=True):
            target = tmp / cfg.name
            target.mkdir()
            shutil.copyfile(d / CONFIG, target / CONFIG)
            how[cfg.name] = _place(d / WEIGHTS, target / WEIGHTS, link)
        save_cascade_manifest(tmp, [c.name for c in cfgs], text)
        (tmp / CARD).write_text(model_card(tmp, title=final.resolve().name), encoding="utf-8")
    return Assembled(final, [c.name for c in cfgs], how)
