"""HTTP request and response bodies of the serving API (pydantic; checked before any work).

Static limits live here (the ranges of the stage sampling settings); the limits that come
from the serve config (``max_prompts``, ``max_prompt_chars``, ``max_steps``) and the stage
names of the loaded cascade are checked by the ingress, with the same kind of message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imagen_ray.config import ImageFormat, SamplerName, ThresholdMode

SEED_MAX = 2**32 - 1


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSettings(_Body):
    """Sampling settings of one stage for one request; unset fields take the stage defaults."""

    sampler: SamplerName | None = Field(None, description="ddpm, ddim or dpmpp_2m")
    steps: int | None = Field(None, ge=1, description="sampler steps (at most serve.max_steps)")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=50.0, description="classifier-free guidance weight (1 = off)"
    )
    threshold: ThresholdMode | None = Field(None, description="none, static or dynamic")
    percentile: float | None = Field(None, gt=0.0, le=1.0, description="dynamic thresholding p")
    eta: float | None = Field(None, ge=0.0, le=1.0, description="DDIM stochasticity")
    aug_level: float | None = Field(
        None, ge=0.0, le=1.0, description="SR stages: noise-conditioning augmentation level"
    )


class GenerateRequest(_Body):
    """``POST /v1/generate``: one image per prompt; prompt i uses seed ``seed + i``."""

    prompts: str | list[str] = Field(
        description="one prompt, or a list of prompts (at most serve.max_prompts)",
        examples=["a red circle on the left", ["a red circle", "a blue square"]],
    )
    negative_prompt: str | None = Field(
        None, description="replaces the null text in classifier-free guidance (all stages)"
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=SEED_MAX,
        description="seed of prompt 0 (prompt i: seed + i); random when omitted, and "
        "returned in the response so the images can be reproduced",
    )
    stages: dict[str, StageSettings] = Field(
        default_factory=dict,
        description="per stage name, sampling settings that replace its defaults",
        examples=[{"base": {"steps": 8, "guidance_scale": 3.0}}],
    )
    until: str | None = Field(None, description="last stage to run (default: every stage)")
    format: ImageFormat | None = Field(None, description="png, jpeg or webp (default: png)")

    def prompt_list(self) -> list[str]:
        return [self.prompts] if isinstance(self.prompts, str) else list(self.prompts)


class GeneratedImage(BaseModel):
    prompt: str
    seed: int
    width: int
    height: int
    format: ImageFormat
    truncated: bool = Field(description="the prompt had more tokens than the encoder reads")
    image: str = Field(description="the encoded image, base64")


class GenerateResponse(BaseModel):
    images: list[GeneratedImage]
    settings: dict[str, Any] = Field(
        description="everything needed to reproduce the images: seed, stages, per-stage "
        "sampling settings, negative prompt, format"
    )
    warnings: list[str] = Field(default_factory=list)
    seconds: float


class Problem(BaseModel):
    """Body of every 4xx answer."""

    detail: str | list[dict[str, Any]]


ImageMediaType = Literal["image/png", "image/jpeg", "image/webp"]
MEDIA_TYPES: dict[str, ImageFormat] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/webp": "webp",
}
