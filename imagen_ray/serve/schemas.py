"""HTTP request and response bodies of the serving API (pydantic; checked before any work).

Static limits live here: the per-stage sampling settings take their fields, types, ranges and
descriptions from :class:`imagen_ray.config.SamplingConfig` (each made optional), so a field
added there is accepted here with the same checks. The limits that come from the serve config
(``max_prompts``, ``max_prompt_chars``, ``max_steps``) and the stage names of the loaded
cascade are checked by the ingress, with the same kind of message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from imagen_ray.cascade.plan import MAX_RESAMPLE_TIMES, SEED_MAX
from imagen_ray.config import SamplingConfig
from imagen_ray.images import ImageFormat


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What a request may not exceed beyond SamplingConfig's own ranges (checked by the ingress).
_NOTES = {"steps": "at most serve.max_steps"}


def optional_fields(model: type[BaseModel], name: str) -> type[BaseModel]:
    """A request body with every field of ``model`` optional (default None, meaning "the
    stage's default"), each with the same type, constraints and description; unknown fields
    are refused."""
    fields: dict[str, Any] = {}
    for key, f in model.model_fields.items():
        typ: Any = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        note = f" ({_NOTES[key]})" if key in _NOTES else ""
        fields[key] = (typ | None, Field(None, description=f"{f.description or key}{note}"))
    return create_model(name, __base__=_Body, __module__=__name__, **fields)


class StageSettings(optional_fields(SamplingConfig, "_StageSettings")):  # type: ignore[misc]
    """Sampling settings of one stage for one request; unset fields take the stage defaults.

    Fields: those of :class:`imagen_ray.config.SamplingConfig`, each optional.
    """


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


class EditRequest(GenerateRequest):
    """``POST /v1/edit``: edit one image for every prompt (an empty prompt: a variation).

    Every knob of :meth:`imagen_ray.cascade.Cascade.generate`'s editing; the image and mask
    come base64-encoded and are bounded by ``serve.max_upload_bytes``,
    ``serve.max_upload_pixels`` and ``serve.upload_formats``.
    """

    image: str = Field(description="the image to edit, base64 (PNG, JPEG or WebP)")
    mask: str | None = Field(
        None,
        description="the region to repaint, base64: white pixels, or an alpha channel's "
        "fully transparent ones (OpenAI's convention); kept pixels are returned exactly",
    )
    strength: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="how far every stage departs from the image (default: 1 with a mask, "
        "else 0.6); 1 without a mask is text-to-image",
    )
    start: str | None = Field(
        None, description="the stage to start at: a super-resolution stage upscales the image"
    )
    resample_times: int = Field(
        1, ge=1, le=MAX_RESAMPLE_TIMES, description="with a mask: RePaint's resampling"
    )


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
