"""The plan of a batch run: one record per image, with its seed and resolved settings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_ray.batch.config import GenerateConfig
from imagen_ray.config import SamplingConfig, StageConfig, TextEncoderConfig, validate
from imagen_ray.images import SUFFIXES
from imagen_ray.prompts import Prompt

IMAGES = "images"


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of one image, mixed with numpy's SeedSequence so that it depends only on
    (base seed, prompt index, image index): resuming or changing the batch size or the
    number of images per prompt reproduces every image."""
    return int(np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(1)[0])


def stage_configs(cascade: Sequence[str | Path]) -> list[StageConfig]:
    """The stage configs of a saved cascade, read without loading any weights."""
    from imagen_ray.cascade.io import check_chain, read_cascade_manifest, read_stage_meta

    dirs = read_cascade_manifest(cascade[0]) if len(cascade) == 1 else [Path(c) for c in cascade]
    metas = [read_stage_meta(d) for d in dirs]
    stages = [
        validate(StageConfig, m["stage"], f"{d}/config.json")
        for d, m in zip(dirs, metas, strict=True)
    ]
    text = validate(TextEncoderConfig, metas[0]["text"], f"{dirs[0]}/config.json:text")
    return list(check_chain(text, stages).stages)


def resolved_sampling(stages: list[StageConfig], cfg: GenerateConfig) -> dict[str, Any]:
    """Per stage that runs, the full sampling settings (checked before any actor starts)."""
    from imagen_ray.cascade import resolve_sampling

    names = [s.name for s in stages]
    if cfg.until is not None and cfg.until not in names:
        raise ValueError(f"until={cfg.until!r} is not a stage; stages are {names}")
    unknown = sorted(set(cfg.sampling) - set(names))
    if unknown:
        raise ValueError(f"sampling overrides for unknown stages {unknown}; stages are {names}")
    last = names.index(cfg.until) if cfg.until else len(names) - 1
    out: dict[str, Any] = {}
    for s in stages[: last + 1]:
        sc: SamplingConfig = resolve_sampling(s.sampling, cfg.sampling.get(s.name))
        out[s.name] = sc.model_dump(mode="json")
    return out


def plan_records(
    prompts: Sequence[Prompt], cfg: GenerateConfig, sampling: dict[str, Any]
) -> list[dict[str, Any]]:
    """One record per image to exist when the run is done (``file`` relative to out)."""
    suffix = SUFFIXES[cfg.format]
    rows = []
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
                    "meta": prompt.meta,
                }
            )
    return rows
