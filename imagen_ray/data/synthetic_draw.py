"""Drawing the synthetic set's shapes: the one routine behind its images and the checkers'
templates.

Objects are drawn with PIL ImageDraw on a canvas 4x the output side (2x at 1024 px) and
downsampled with LANCZOS (:func:`render_objects`); :func:`draw_shape` draws one shape at a
sub-pixel position, so a checker can render the template a reading is compared with exactly
as the training images were made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageDraw

from imagen_ray.data.synthetic_vocab import ATTRIBUTES, CROSS_ARM


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, half: float, fill: Any
) -> None:
    """Draw ``shape`` with its bounding box centred at ``(cx, cy)``, side ``2 * half`` (canvas
    pixels): circle, square, triangle (pointing up) or cross (arms ``CROSS_ARM`` of the side)."""
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "cross":
        arm = CROSS_ARM * half
        draw.rectangle((cx - arm, y0, cx + arm, y1), fill=fill)
        draw.rectangle((x0, cy - arm, x1, cy + arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {ATTRIBUTES.shapes}")


def supersample(size: int) -> int:
    """4x for sizes up to 512, 2x at 1024 (a 2048 px canvas at most)."""
    return max(2, min(4, 2048 // size))


def render_objects(
    objects: Sequence[Mapping[str, Any]], background_rgb: Sequence[int], size: int
) -> Image.Image:
    """Draw objects on a plain background.

    Args:
        objects: each needs ``shape``, ``rgb``, ``object_size`` (bounding-box side / image
            side) and ``centers`` (``[[x, y], ...]`` bounding-box centres as image fractions;
            one copy of the object at each).
        background_rgb: the background colour.
        size: output side in pixels (8 ... 1024).

    Returns:
        An RGB image of ``size x size``: drawn at :func:`supersample` x, LANCZOS-downsampled.
    """
    ss = supersample(size)
    big = size * ss
    canvas = Image.new("RGB", (big, big), tuple(background_rgb))
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        half = obj["object_size"] * big / 2
        for cx, cy in obj["centers"]:
            draw_shape(draw, obj["shape"], cx * big, cy * big, half, tuple(obj["rgb"]))
    return canvas.resize((size, size), Image.Resampling.LANCZOS)
