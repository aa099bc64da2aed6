"""Settings of one batch-generation run: a strict typed model, loaded YAML < flags < --set."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from imagen_ray.config import Strict, apply_overrides, read_yaml, validate
from imagen_ray.config.dtypes import InferenceDType
from imagen_ray.images import ImageFormat, image_format


def _image_format(value: Any) -> Any:
    """``jpg`` (and any case or leading dot) -> the canonical name; the rest pydantic checks."""
    return image_format(value) if isinstance(value, str) else value


class GenerateConfig(Strict):
    """Settings of one batch-generation run (``--config`` YAML, flags, ``--set``)."""

    seed: int = Field(0, ge=0, description="base seed; image seeds derive from it")
    images_per_prompt: int = Field(1, ge=1, le=1000, description="images per prompt")
    negative_prompt: str | None = Field(None, description="steer away from this text")
    until: str | None = Field(None, description="last stage to run (default: all)")
    sampling: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per stage, sampling overrides: {base: {steps: 8}}",
    )
    format: Annotated[ImageFormat, BeforeValidator(_image_format)] = Field(
        "png", description="image file format (png, jpeg (or jpg), webp)"
    )
    batch_size: int = Field(4, ge=1, description="images per cascade call (per replica)")
    replicas: int = Field(1, ge=1, description="actors in the pool, each holding the cascade")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per replica (fractions share one)")
    dtype: InferenceDType = Field(
        "auto", description="U-Net inference dtype (auto: bfloat16 on a GPU, float32 on CPU)"
    )


def load_generate_config(
    path: str | Path | None, flags: Mapping[str, Any], overrides: Sequence[str]
) -> GenerateConfig:
    """YAML file (optional) < flags that were given (not None) < ``--set`` overrides.

    ``sampling`` from flags is merged per stage into the file's, not replacing it.
    """
    data = read_yaml(path) if path else {}
    for key, value in flags.items():
        if value is None:
            continue
        if key == "sampling" and isinstance(data.get(key), dict):  # merge per stage
            merged = {s: dict(v) for s, v in data[key].items() if isinstance(v, dict)}
            for stage, kv in value.items():
                merged.setdefault(stage, {}).update(kv)
            value = {**data[key], **merged}
        data[key] = value
    return validate(GenerateConfig, apply_overrides(data, overrides), str(path or "flags"))
