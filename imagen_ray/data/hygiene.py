"""Image hygiene: the one way encoded bytes from the wild become an RGB image, or a reason.

Used by the training pipeline (:mod:`imagen_ray.data.decode`) and by the shard writers
(:mod:`imagen_ray.data.shards`, :mod:`imagen_ray.data.hf`), so a file that one accepts the
other accepts too.

Two steps:

1. :func:`open_checked`: size cap on the encoded bytes (``member_too_large``), the decoder
   restricted to the formats of the allowed extensions (``wrong_format``: a TIFF or a
   BMP in a ``jpg`` entry is never handed to its parser), and ``width * height`` from the
   header against ``max_pixels`` (``too_many_pixels``). ``Image.open`` reads only the
   header, so a decompression bomb is refused before one pixel is decoded.
2. :func:`to_rgb` (in :mod:`imagen_ray.images`, which edits use too): EXIF orientation
   applied, then every mode to 8-bit RGB: 16/32-bit greyscale (``I;16*``, ``I``) scaled
   by 255/65535 (``convert("L")`` clips, which turned a 16-bit PNG almost entirely
   white), float (``F``) clipped to [0, 1] and scaled, CMYK and
   YCbCr through PIL's conversions, and anything with alpha (``RGBA``, ``LA``, ``PA``,
   palette or greyscale with a ``transparency`` entry) composited on a background colour,
   white by default, not on whatever colour the transparent pixels happen to hide.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

# The normalising rules live in imagen_ray.images (edits use them too); named here as well.
from imagen_ray.images import WHITE as WHITE
from imagen_ray.images import has_alpha as has_alpha
from imagen_ray.images import to_rgb as to_rgb

# Skip reasons (names shared by the pipeline's counters and the shard writers' summaries).
DECODE_ERROR = "decode_error"
WRONG_FORMAT = "wrong_format"
TOO_MANY_PIXELS = "too_many_pixels"
MEMBER_TOO_LARGE = "member_too_large"

# 64 MP (8192 x 8192, far above any stage's size); DataConfig.max_pixels has the same default.
DEFAULT_MAX_PIXELS = 64 * 1024 * 1024

# Magic numbers of formats PIL could parse: what tells wrong_format from decode_error.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"icns", "ICNS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (b"\xff\x4f\xff\x51", "JPEG2000"),
    (b"P1", "PPM"),
    (b"P2", "PPM"),
    (b"P3", "PPM"),
    (b"P4", "PPM"),
    (b"P5", "PPM"),
    (b"P6", "PPM"),
    (b"%!PS", "EPS"),
    (b"SIMPLE  =", "FITS"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
)


def sniff_format(raw: bytes) -> str | None:
    """The image format the leading bytes announce (``RIFF....WEBP`` too), or None."""
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _MAGIC:
        if raw.startswith(magic):
            return name
    return None


def open_checked(
    raw: bytes,
    *,
    formats: Sequence[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int | None = None,
) -> Image.Image | str:
    """Open encoded bytes (header only) if they pass the checks; else the skip reason.

    Args:
        raw: the encoded file content.
        formats: PIL format names the decoder may use (:func:`imagen_ray.images.formats_for`).
        max_pixels: most ``width * height`` (from the header) accepted.
        max_bytes: most encoded bytes accepted (None: no cap).

    Returns:
        A lazily loaded PIL image (no pixel decoded yet), or ``member_too_large``,
        ``wrong_format``, ``too_many_pixels`` or ``decode_error``.
    """
    if max_bytes is not None and len(raw) > max_bytes:
        return MEMBER_TOO_LARGE
    try:
        img = Image.open(io.BytesIO(raw), formats=list(formats))
    except Image.DecompressionBombError:  # PIL's own limit (2x MAX_IMAGE_PIXELS), from the header
        return TOO_MANY_PIXELS
    except Image.UnidentifiedImageError:
        found = sniff_format(raw)
        return WRONG_FORMAT if found is not None and found not in formats else DECODE_ERROR
    except Exception:  # PIL raises many types for bad headers
        return DECODE_ERROR
    w, h = img.size
    if w * h > max_pixels:
        return TOO_MANY_PIXELS
    return img


def oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied (tags 5-8 swap the sides)."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        return w, h
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
