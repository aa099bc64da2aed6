"""Images: the one tensor -> uint8 conversion, the one encoder (PNG/JPEG/WebP), grids.

Everything that turns model output into pixels or files goes through here, so an image
from ``imagen-ray sample``, the Serve endpoint, batch generation and the training sample
grids is the same pixels and, for the same format, the same bytes. The image formats an
input entry extension may hold (:func:`formats_for`: ``data.image_keys`` is validated against
it, the data pipeline's decoder is restricted to it) are named here too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
from PIL import Image, ImageOps

from imagen_ray.fs import atomic_write_bytes

if TYPE_CHECKING:
    from torch import Tensor

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
# Names accepted for a format besides its own (``--format jpg``, a ``.jpg`` file).
FORMAT_ALIASES = {"jpg": "jpeg"}
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
JPEG_QUALITY = 95  # visually lossless for generated images; ~4x smaller than PNG

# Extensions -> PIL format names (the decoders allowed for that entry).
_EXT_FORMATS: dict[str, tuple[str, ...]] = {
    "jpg": ("JPEG",),  # MPO (camera multi-picture) files open through the JPEG decoder
    "jpeg": ("JPEG",),
    "png": ("PNG",),
    "webp": ("WEBP",),
    "gif": ("GIF",),
    "bmp": ("BMP",),
    "tif": ("TIFF",),
    "tiff": ("TIFF",),
}


def image_format(name: str) -> ImageFormat:
    """The canonical format for a name or suffix (``"jpg"``, ``".JPG"`` -> ``"jpeg"``).

    Raises:
        ValueError: naming the value and the formats there are.
    """
    key = name.lower().lstrip(".")
    key = FORMAT_ALIASES.get(key, key)
    if key not in IMAGE_FORMATS:
        raise ValueError(
            f"unknown image format {name!r}; use one of {', '.join(IMAGE_FORMATS)} (or jpg)"
        )
    return key  # type: ignore[return-value]  # checked against the Literal's values above


def formats_for(extensions: Sequence[str]) -> tuple[str, ...]:
    """PIL format names allowed for entry extensions (``("jpg", "png")`` -> JPEG, PNG).

    Raises:
        ValueError: an extension with no known image format (names the known ones).
    """
    out: list[str] = []
    for ext in extensions:
        fmts = _EXT_FORMATS.get(ext.lower().lstrip("."))
        if fmts is None:
            raise ValueError(
                f"image extension {ext!r} names no known image format; use some of "
                f"{sorted(_EXT_FORMATS)}"
            )
        out += [f for f in fmts if f not in out]
    return tuple(out)


def unit_range(x: Tensor) -> Tensor:
    """Model output in [-1, 1] -> float32 in [0, 1] on the CPU, clamped (shape kept)."""
    return ((x.float() + 1) / 2).clamp(0, 1).cpu()


def to_uint8(x01: Tensor) -> np.ndarray:
    """Images in [0, 1], (B, 3, H, W) or (3, H, W) -> (B, H, W, 3) or (H, W, 3) uint8.

    Rounds to the nearest level; values outside [0, 1] are clamped.
    """
    import torch

    u8 = x01.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()
    return u8.movedim(-3, -1).numpy()


def model_to_uint8(x: Tensor) -> np.ndarray:
    """Model output in [-1, 1] -> uint8 HWC: ``to_uint8(unit_range(x))``."""
    return to_uint8(unit_range(x))


def encode_image(image: np.ndarray | Image.Image, fmt: str) -> bytes:
    """(H, W, 3) uint8 array or PIL image -> PNG / JPEG (quality 95) / WebP (lossless) bytes."""
    kind = image_format(fmt)
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    buf = io.BytesIO()
    if kind == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    elif kind == "webp":
        img.save(buf, format="WEBP", lossless=True)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def save_image(image: np.ndarray | Image.Image, path: str | Path) -> Path:
    """Write atomically; the format comes from the suffix (.png, .jpg/.jpeg, .webp)."""
    p = Path(path)
    try:
        fmt = image_format(p.suffix) if p.suffix else "png"
    except ValueError:
        fmt = "png"
    return atomic_write_bytes(p, encode_image(image, fmt))


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """(B, H, W, 3) uint8 -> PIL images."""
    return [Image.fromarray(np.ascontiguousarray(img)) for img in images]


def grid(
    rows: Sequence[Sequence[Image.Image]], *, cell: int | None = None, pad: int = 2
) -> Image.Image:
    """Contact sheet: rows of images, each resized (nearest) to a common square ``cell``."""
    cell = cell or max(im.width for row in rows for im in row)
    cols = max(len(row) for row in rows)
    sheet = Image.new(
        "RGB", (cols * (cell + pad) + pad, len(rows) * (cell + pad) + pad), (255, 255, 255)
    )
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            tile = im if im.width == cell else im.resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (pad + c * (cell + pad), pad + r * (cell + pad)))
    return sheet


def square_grid(images: Sequence[Image.Image], *, cell: int | None = None) -> Image.Image:
    """Images laid out in a near-square grid."""
    cols = max(1, math.ceil(math.sqrt(len(images))))
    rows = [list(images[i : i + cols]) for i in range(0, len(images), cols)]
    return grid(rows, cell=cell)


# ---------------------------------------------------------------------------- normalising
# How any picture becomes the 8-bit RGB square the model sees: training data
# (imagen_ray.data.hygiene, imagen_ray.data.decode) and edit inputs (imagen_ray.cascade.edit,
# imagen_ray.serve.uploads) go through the same functions.

WHITE = (255, 255, 255)


def _high_bit_grey_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit ``L``, scaled, never clipped to white."""
    a = np.asarray(img)
    if img.mode == "F":
        scaled = np.clip(a, 0.0, 1.0) * 255.0
    else:  # I;16, I;16B, I;16L, I (16-bit PNG/TIFF samples arrive in 0..65535)
        scaled = np.clip(a.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def has_alpha(img: Image.Image) -> bool:
    """An alpha channel or a transparency entry (palette or single-colour key)."""
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


ORIENTATION = 0x0112  # the EXIF tag exif_transpose reads


def to_rgb(
    img: Image.Image, background: tuple[int, int, int] = WHITE, *, keep_alpha: bool = False
) -> Image.Image:
    """Any PIL image -> 8-bit RGB, upright (see the module docstring for each mode).

    Args:
        img: an opened image (loaded here if it is not yet).
        background: RGB colour that transparent pixels are composited on.
        keep_alpha: return ``RGBA`` for images with transparency instead of compositing
            (the shard writers re-encode such images and leave the choice to training).

    Returns:
        An ``RGB`` (or with ``keep_alpha``, possibly ``RGBA``) image, EXIF orientation applied:
        ``img`` itself when it already is plain upright RGB (``exif_transpose`` and
        ``convert`` would each copy it: 1024 px JPEGs decode 1.3x faster per core without
        them, ``python bench/data.py --sizes 1024``).
    """
    img.load()
    if img.mode == "RGB" and not has_alpha(img) and img.getexif().get(ORIENTATION, 1) == 1:
        return img
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        img = _high_bit_grey_to_l(img)
    if has_alpha(img) and keep_alpha:
        return img.convert("RGBA")
    if has_alpha(img):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def resize_crop(
    img: Image.Image, size: int, *, crop: str = "center", rng: np.random.Generator | None = None
) -> Image.Image:
    """Resize the short side to ``size`` (Lanczos, antialiased) and crop a square.

    Done in one ``resize`` with a source box: the square crop of side ``min(w, h)`` is taken
    in source coordinates, which equals resize-then-crop but filters fewer pixels.

    Args:
        img: any PIL image (already RGB).
        size: output side in pixels.
        crop: ``center`` or ``random`` (offset drawn from ``rng``).
        rng: required for random crops.

    Returns:
        A ``size x size`` RGB image.
    """
    w, h = img.size
    side = min(w, h)
    if crop == "random":
        if rng is None:
            raise ValueError("crop='random' needs an rng")
        left, top = float(rng.integers(0, w - side + 1)), float(rng.integers(0, h - side + 1))
    else:
        left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.LANCZOS, box=box)
