"""Editing inputs: the images and masks of image-to-image, inpainting and upscaling, made
ready for each stage, and the denoiser that holds an inpainting's kept region.

Conventions (the same in Python, the CLI, batch generation and Serve):

- **image**: any PIL image, or a (H, W, 3) uint8 array. It is resized to each stage's size
  (Lanczos, as training data is) and becomes that stage's starting point (image-to-image),
  its kept pixels (inpainting), or the low-res input of the first stage that runs
  (upscaling). EXIF orientation, 16-bit, CMYK and alpha are handled as training data is
  (:func:`imagen_ray.images.to_rgb`: transparency over white).
- **mask**: the region to *repaint*. A greyscale image or (H, W) array: white (>= 0.5 of
  full scale) repaints, black keeps, as in diffusers and DeepFloyd IF; values in between
  are rounded to one or the other at 0.5. A mask with fully transparent pixels is read as
  OpenAI's Images API reads it: those pixels repaint, every other pixel is kept (a mask
  whose alpha is opaque everywhere is read by its grey). The mask must have the image's
  aspect ratio; it is resized to each stage by area, and a
  stage pixel is repainted when any part of it is: kept pixels are exactly the input's
  (resized) pixels at every stage's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from imagen_ray.cascade.plan import PlanError

ImageLike = Any  # a PIL image or a numpy array (not typed more narrowly: PIL has no stubs here)
Denoiser = Callable[[Tensor, Tensor], Tensor]


def _as_pil(value: ImageLike, field: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        a = value
        if a.dtype != np.uint8:
            if a.dtype.kind == "f" and a.size and a.min() >= 0.0 and a.max() <= 1.0:
                a = np.rint(a * 255).astype(np.uint8)
            else:
                raise PlanError(field, f"an array must be uint8 or floats in [0, 1], got {a.dtype}")
        if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4)):
            return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
        raise PlanError(field, f"an array must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    raise PlanError(field, f"expected a PIL image or a numpy array, got {type(value).__name__}")


def image_rgb(value: ImageLike, field: str = "image") -> Image.Image:
    """An edit's image as upright 8-bit RGB (transparency composited over white)."""
    from imagen_ray.images import to_rgb

    return to_rgb(_as_pil(value, field))


def mask_array(value: ImageLike, field: str = "mask") -> np.ndarray:
    """A mask as a (H, W) bool array, True where the image is repainted (module docstring)."""
    from imagen_ray.images import has_alpha, to_rgb

    img = _as_pil(value, field)
    if has_alpha(img):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if (alpha == 0).any():  # OpenAI's convention
            return alpha == 0
        img = img.convert("RGB")  # opaque everywhere (an editor's RGBA export): its grey
    if img.mode.startswith("I") or img.mode == "F":
        img = to_rgb(img)
    return np.asarray(img.convert("L")) >= 128


def check_mask(image: Image.Image, mask: np.ndarray, field: str = "mask") -> None:
    """Refuse a mask whose aspect ratio differs from the image's (by more than a pixel)."""
    (w, h), (mh, mw) = image.size, mask.shape
    if abs(w * mh - h * mw) > max(w, h, mw, mh):
        raise PlanError(
            field,
            f"the mask is {mw}x{mh} but the image is {w}x{h}: give a mask of the image's "
            "aspect ratio (it is resized to the image)",
        )


def image_tensor(image: Image.Image, size: int) -> Tensor:
    """(3, size, size) in [-1, 1]; a square crop of the centre when not square (as training
    data is cropped), resized with Lanczos unless already that size."""
    from imagen_ray.images import resize_crop

    if image.size != (size, size):
        image = resize_crop(image, size)
    a = torch.from_numpy(np.asarray(image, np.uint8).copy()).permute(2, 0, 1)
    return a.float() / 127.5 - 1.0


def mask_tensor(mask: np.ndarray, size: int) -> Tensor:
    """(1, size, size) bool, True where repainted: the centre square, resized by area, a
    pixel repainted when any part of it is."""
    h, w = mask.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    m = torch.from_numpy(mask[top : top + side, left : left + side].astype(np.float32))[None, None]
    if side >= size:
        m = F.adaptive_avg_pool2d(m, size)
    else:
        m = F.interpolate(m, size=(size, size), mode="nearest")
    return (m[0] > 0).contiguous()


def _per_prompt(value: Any, n: int) -> list[Any]:
    """One value for every prompt, or the list given (its length is checked by the plan)."""
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] * n


@dataclass
class EditInputs:
    """The images and masks of one request, read once, resized per stage on demand.

    Attributes:
        images: per prompt, an RGB image or None (a text-to-image row).
        masks: per prompt, a (H, W) bool array (True: repaint) or None.
    """

    images: list[Image.Image | None]
    masks: list[np.ndarray | None]
    _cache: dict[tuple[str, int], Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, n: int, image: Any, mask: Any) -> EditInputs:
        """Read ``image`` and ``mask`` as :meth:`Cascade.generate` takes them (one for every
        prompt or one per prompt), naming the bad entry in a PlanError."""
        images = _per_prompt(image, n)
        masks = _per_prompt(mask, n)
        many = isinstance(image, (list, tuple))
        read = [
            None if x is None else image_rgb(x, f"image[{i}]" if many else "image")
            for i, x in enumerate(images)
        ]
        many = isinstance(mask, (list, tuple))
        read_masks = []
        for i, (m, img) in enumerate(zip(masks, read + [None] * len(masks), strict=False)):
            field_name = f"mask[{i}]" if many else "mask"
            arr = None if m is None else mask_array(m, field_name)
            if arr is not None and img is not None:
                check_mask(img, arr, field_name)
            read_masks.append(arr)
        return cls(read, read_masks)

    def plan_args(self, strength: Any, start: Any, resample_times: int) -> dict[str, Any]:
        """The keyword arguments of :func:`imagen_ray.cascade.plan.plan_edit` for these
        inputs and knobs."""
        return {
            "images": self.has_image,
            "masks": self.has_mask,
            "strength": strength,
            "start": start,
            "resample_times": resample_times,
        }

    @property
    def has_image(self) -> list[bool]:
        return [x is not None for x in self.images]

    @property
    def has_mask(self) -> list[bool]:
        return [m is not None for m in self.masks]

    def images_at(self, size: int) -> Tensor:
        """(B, 3, size, size) in [-1, 1]: each image at that size (zeros for rows without)."""
        key = ("image", size)
        if key not in self._cache:
            rows = [torch.zeros(3, size, size) if x is None else image_tensor(x, size)
                    for x in self.images]  # fmt: skip
            self._cache[key] = torch.stack(rows)
        return self._cache[key]

    def keep_at(self, size: int) -> Tensor | None:
        """(B, 1, size, size) bool, True where kept (nothing for rows without a mask); None
        when no row has a mask."""
        if not any(self.has_mask):
            return None
        key = ("keep", size)
        if key not in self._cache:
            rows = [torch.zeros(1, size, size, dtype=torch.bool) if m is None
                    else ~mask_tensor(m, size) for m in self.masks]  # fmt: skip
            self._cache[key] = torch.stack(rows)
        return self._cache[key]


def keep_known(denoise: Denoiser, known: Tensor, keep: Tensor) -> Denoiser:
    """A denoiser whose x0 prediction is ``known`` wherever ``keep`` is True.

    With every sampler here, an x0 of ``known`` makes the next state of those pixels the
    known image noised to the next step (exactly, for DDIM and DPM-Solver++ from a start
    noised the same way): the U-Net sees the kept region as it would see the real image,
    and the last step returns it unchanged.

    Args:
        denoise: ``(x_t, t) -> x0``.
        known: (B, 3, S, S) the known image in [-1, 1].
        keep: (B, 1, S, S) bool, True where kept.
    """

    def held(x_t: Tensor, t: Tensor) -> Tensor:
        x0 = denoise(x_t, t)
        return torch.where(keep, known.to(x0.dtype), x0)

    return held


__all__ = [
    "EditInputs",
    "ImageLike",
    "check_mask",
    "image_rgb",
    "image_tensor",
    "keep_known",
    "mask_array",
    "mask_tensor",
]
