"""The plan of a batch run: one record per image, with its seed and resolved settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_ray.batch.config import GenerateConfig
from imagen_ray.config import StageConfig, TextEncoderConfig, validate
from imagen_ray.images import SUFFIXES
from imagen_ray.prompts import Prompt

IMAGES = "images"


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of one image, mixed with numpy's SeedSequence so that it depends only on
    (base seed, prompt index, image index): resuming or changing the batch size or the
    number of images per prompt reproduces every image."""
    return int(np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(1)[0])


def stage_configs(cascade: Sequence[str | Path]) -> list[StageConfig]:
    """The stage configs of a saved cascade (or a stage directory, or stage directories in
    order), read without loading any weights."""
    from imagen_ray.cascade.io import check_chain, read_stage_meta, stage_dirs

    dirs = stage_dirs(cascade)
    metas = [read_stage_meta(d) for d in dirs]
    stages = [
        validate(StageConfig, m["stage"], f"{d}/config.json")
        for d, m in zip(dirs, metas, strict=True)
    ]
    text = validate(TextEncoderConfig, metas[0]["text"], f"{dirs[0]}/config.json:text")
    return list(check_chain(text, stages).stages)


def resolved_sampling(stages: list[StageConfig], cfg: GenerateConfig) -> dict[str, Any]:
    """Per stage that runs, the full sampling settings as JSON (the generation plan's, checked
    before any actor starts)."""
    from imagen_ray.cascade.plan import plan_sampling

    planned = plan_sampling(stages, until=cfg.until, sampling=cfg.sampling)
    return {name: s.model_dump(mode="json") for name, s in planned.items()}


def run_dtype(cfg: GenerateConfig) -> str:
    """The U-Nets' dtype in this run's replicas (``auto`` resolved: bfloat16 with GPUs)."""
    from imagen_ray.config.dtypes import resolve_dtype

    return resolve_dtype(cfg.dtype, "cuda" if cfg.num_gpus > 0 else "cpu")


# Prompt-file columns (CSV) / keys (JSONL) that make a row an edit (docs/editing.md).
EDIT_COLUMNS = ("image", "mask", "strength")


def _edit_path(value: str, base: Path, where: str, column: str) -> str:
    """A row's image or mask: a URI as given, a local path relative to the prompt file,
    checked to be a readable image now, before any actor starts."""
    from imagen_ray import storage

    if storage.is_uri(value):
        return value
    path = (base / value).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{where}: {column} {value!r}: no such file ({path})")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.verify()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{where}: {column} {value!r}: not a readable image ({e})") from e
    return str(path)


def edit_of(prompt: Prompt, index: int, base: Path) -> dict[str, Any] | None:
    """The edit a prompt row asks for (its ``image``, ``mask`` and ``strength`` columns), or
    None for text-to-image. Strength defaults as ``imagen-ray edit``'s: 1 with a mask, else
    0.6.

    Raises:
        FileNotFoundError / ValueError: naming the row (1-based) and the column.
    """
    from imagen_ray.cascade.plan import default_strength

    meta = prompt.meta
    given = {k: meta.get(k) for k in EDIT_COLUMNS if meta.get(k) not in (None, "")}
    where = f"prompt {index + 1} ({prompt.text[:40]!r})"
    if not given:
        return None
    if "image" not in given:
        raise ValueError(f"{where}: {', '.join(given)} without an image; add its image column")
    mask = None if "mask" not in given else _edit_path(str(given["mask"]), base, where, "mask")
    try:
        strength = float(given.get("strength") or default_strength(mask is not None))
    except (TypeError, ValueError):
        raise ValueError(f"{where}: strength {given['strength']!r} is not a number") from None
    if not 0 < strength <= 1:
        raise ValueError(f"{where}: strength {strength} is outside (0, 1]")
    image = _edit_path(str(given["image"]), base, where, "image")
    return {"image": image, "mask": mask, "strength": strength}


def plan_records(
    prompts: Sequence[Prompt],
    cfg: GenerateConfig,
    sampling: dict[str, Any],
    base: Path | None = None,
) -> list[dict[str, Any]]:
    """One record per image to exist when the run is done (``file`` relative to out).

    ``base``: where a prompt row's relative ``image`` / ``mask`` paths start (the prompt
    file's folder; default the working directory). A row with an image carries ``edit``.
    """
    suffix = SUFFIXES[cfg.format]
    rows = []
    edits = [edit_of(prompt, p, base or Path.cwd()) for p, prompt in enumerate(prompts)]
    for p, prompt in enumerate(prompts):
        for i in range(cfg.images_per_prompt):
            rows.append(
                {
                    "prompt_index": p,
                    "image_index": i,
                    "prompt": prompt.text,
                    "seed": image_seed(cfg.seed, p, i),
                    "file": f"{IMAGES}/{p:06d}-{i:03d}{suffix}",
                    "negative_prompt": cfg.negative_prompt,
                    "stages": list(sampling),
                    "sampling": sampling,
                    "dtype": run_dtype(cfg),
                    "meta": prompt.meta,
                }
            )
            if edits[p] is not None:
                rows[-1]["edit"] = edits[p]
    return rows
