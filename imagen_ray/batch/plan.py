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
                    "dtype": run_dtype(cfg),
                    "meta": prompt.meta,
                }
            )
    return rows
