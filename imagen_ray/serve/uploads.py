"""Uploaded images and masks (edits and variations): bounded, checked, decoded once.

Every refusal is a :class:`RequestProblem` naming the field: 413 for more bytes than
``serve.max_upload_bytes``; 422 for bad base64, a format outside ``serve.upload_formats``,
more pixels than ``serve.max_upload_pixels`` (read from the header before anything is
decoded, as training's ``data.max_pixels`` is), a file that does not decode, or a mask
whose aspect ratio is not the image's. Decoded images are upright 8-bit RGB as training
data is (:func:`imagen_ray.images.to_rgb`: EXIF orientation, 16-bit, CMYK, palette;
transparency over white); masks follow :mod:`imagen_ray.cascade.edit` (white repaints, or
an alpha channel's fully transparent pixels).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from imagen_ray.serve.problems import RequestProblem


@dataclass(frozen=True)
class UploadLimits:
    """``serve.max_upload_bytes``, ``max_upload_pixels`` and ``upload_formats``."""

    max_bytes: int
    max_pixels: int
    formats: tuple[str, ...]

    @classmethod
    def of(cls, cfg: Any) -> UploadLimits:
        return cls(cfg.max_upload_bytes, cfg.max_upload_pixels, tuple(cfg.upload_formats))


def from_base64(text: str, field: str) -> bytes:
    """The bytes of a base64 field (a ``data:`` URL prefix allowed)."""
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise RequestProblem(
            f"{field}: not valid base64; send the file's bytes base64-encoded"
        ) from None


def _open(raw: bytes, field: str, limits: UploadLimits) -> Any:
    """The opened (not yet decoded) image, or a RequestProblem naming why not."""
    from imagen_ray.data import hygiene
    from imagen_ray.images import formats_for

    if not raw:
        raise RequestProblem(f"{field}: the file is empty")
    if len(raw) > limits.max_bytes:
        raise RequestProblem(
            f"{field}: {len(raw)} bytes, over serve.max_upload_bytes={limits.max_bytes}; "
            "send a smaller file",
            413,
        )
    opened = hygiene.open_checked(
        raw, formats=formats_for(limits.formats), max_pixels=limits.max_pixels
    )
    if opened == hygiene.WRONG_FORMAT:
        found = hygiene.sniff_format(raw)
        raise RequestProblem(
            f"{field}: {found} images are not accepted; send one of {list(limits.formats)} "
            "(serve.upload_formats)"
        )
    if opened == hygiene.TOO_MANY_PIXELS:
        raise RequestProblem(
            f"{field}: more than serve.max_upload_pixels={limits.max_pixels} pixels; send a "
            "smaller image"
        )
    if isinstance(opened, str):
        raise RequestProblem(
            f"{field}: not a readable image (send PNG, JPEG or WebP bytes: one of "
            f"{list(limits.formats)})"
        )
    return opened


def read_image(raw: bytes, field: str, limits: UploadLimits) -> np.ndarray:
    """An uploaded image as (H, W, 3) uint8, upright."""
    from imagen_ray.images import to_rgb

    img = _open(raw, field, limits)
    try:
        return np.asarray(to_rgb(img), dtype=np.uint8).copy()
    except Exception:  # a header that passed and pixels that do not decode
        raise RequestProblem(f"{field}: the image does not decode (a truncated file?)") from None


def read_mask(raw: bytes, field: str, limits: UploadLimits, image: np.ndarray) -> np.ndarray:
    """An uploaded mask as (H, W) bool, True where repainted; checked against ``image``."""
    from PIL import ImageOps

    from imagen_ray.cascade.edit import check_mask, mask_array
    from imagen_ray.cascade.plan import PlanError

    img = _open(raw, field, limits)
    try:
        mask = mask_array(ImageOps.exif_transpose(img), field)
    except PlanError as e:
        raise RequestProblem(f"{field}: {e.message}") from None
    except Exception:
        raise RequestProblem(f"{field}: the mask does not decode (a truncated file?)") from None
    try:
        from PIL import Image

        check_mask(Image.fromarray(image), mask, field)
    except PlanError as e:
        raise RequestProblem(str(e)) from None
    return mask


def alpha_mask(raw: bytes, field: str, limits: UploadLimits) -> np.ndarray | None:
    """OpenAI's edits without a mask: the image's own fully transparent pixels, or None when
    it has none."""
    from PIL import ImageOps

    from imagen_ray.images import has_alpha

    img = _open(raw, field, limits)
    if not has_alpha(img):
        return None
    repaint = np.asarray(ImageOps.exif_transpose(img).convert("RGBA"))[..., 3] == 0
    return repaint if repaint.any() else None  # opaque everywhere: nothing marked
