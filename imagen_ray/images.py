"""Image files: PNG/JPEG/WebP writing and contact-sheet grids (PIL lives here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


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


def save_image(image: Image.Image, path: str | Path) -> Path:
    """Write atomically (temp file + rename); format from the suffix (png, jpg, webp)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(p.suffix.lower(), "PNG")
    image.save(tmp, format=fmt)
    tmp.replace(p)
    return p
