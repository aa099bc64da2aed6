"""The alignment probe: read colour, shape, position and count back from a generated image.

A deterministic pixel checker for images of the synthetic set (:mod:`imagen_ray.data.synthetic`).
It makes no use of a learned model, so its verdicts do not drift and a wrong answer can be
reproduced by hand:

1. background: the per-channel median of the image's border ring (objects keep a margin);
2. object pixels: farther than ``min_contrast`` (RGB Euclidean) from the background;
3. colour: majority vote of the object pixels' nearest colour in the synthetic palette;
4. count: connected components (8-neighbourhood, ``scipy.ndimage.label``) of the pixels of
   that colour, ignoring specks smaller than ``min_component`` of the image area;
5. position: the centroid of those pixels, named by the nearest region anchor;
6. shape: the largest component against each shape drawn into its bounding box with the
   renderer that made the training images; the best intersection-over-union wins (below
   ``min_iou`` the blob is no shape at all).

:func:`fit_shape` reads a shape by drawing each template at the object's area and centroid
and comparing pixel coverage; it tells shapes apart down to 5 px objects, and the scene
checker (:mod:`imagen_ray.eval.scenes`) reads shapes with it.

On the training images themselves it reads every attribute back (``tests/eval``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from imagen_ray.data.synthetic_draw import draw_shape
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, CROSS_ARM

PROBED = ("colour", "shape", "position", "count")

PALETTE_NAMES = tuple(ATTRIBUTES.colours)
PALETTE = np.asarray([ATTRIBUTES.colours[c] for c in PALETTE_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Reading:
    """What the probe read from one image (``None`` where nothing could be read)."""

    colour: str | None
    shape: str | None
    position: str | None
    count: int
    object_fraction: float  # share of the image covered by object pixels
    shape_iou: float  # IoU of the best shape template (0 when no object)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shape_mask(shape: str, width: int, height: int, ss: int = 4) -> np.ndarray:
    """``shape`` filling a ``width x height`` box, drawn like the training set, as bool."""
    w, h = width * ss, height * ss
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = 0, 0, w - 1, h - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        draw.polygon([(w / 2, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "cross":
        ax, ay = CROSS_ARM * w / 2, CROSS_ARM * h / 2
        draw.rectangle((w / 2 - ax, y0, w / 2 + ax, y1), fill=255)
        draw.rectangle((x0, h / 2 - ay, x1, h / 2 + ay), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(ATTRIBUTES.shapes)}")
    small = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


FIT_SUPERSAMPLE = 8  # shape templates are drawn at 8x and box-filtered to pixel coverage


def fit_shape(
    x: np.ndarray, bg: np.ndarray, region: np.ndarray, *, min_iou: float = 0.5
) -> tuple[str | None, float]:
    """Read one object's shape by drawing each shape where the object is (analysis by
    synthesis); it tells shapes apart down to 5 px objects, where thresholded masks do not.

    The object's coverage ``alpha`` of each pixel of ``region`` is the pixel's projection on
    the line from the background to the object colour (the median of its pixels farthest
    from the background). Each shape is drawn by the renderer of the training images
    (:func:`~imagen_ray.data.synthetic_draw.draw_shape`) with the area and centroid of
    ``alpha``, box-filtered to coverage, and compared by soft IoU (sum of minima over sum of
    maxima).

    Args:
        x: ``(H, W, 3)`` float image.
        bg: ``(3,)`` background colour.
        region: ``(H, W)`` bool, the object's pixels and a rim of background around them (no
            other object's pixels).
        min_iou: a best soft IoU below this reads as no shape.

    Returns:
        ``(shape or None, best soft IoU)``.
    """
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return None, 0.0
    y0, x0 = ys.min(), xs.min()
    crop = x[y0 : ys.max() + 1, x0 : xs.max() + 1]
    inside = region[y0 : ys.max() + 1, x0 : xs.max() + 1]
    dist = np.linalg.norm(crop - bg, axis=-1) * inside
    rgb = np.median(crop[dist >= 0.8 * dist.max()], axis=0)
    v = rgb - bg
    alpha = np.clip((crop - bg) @ v / max(float(v @ v), 1e-6), 0.0, 1.0) * inside  # (h, w)
    area = float(alpha.sum())
    if area <= 0:
        return None, 0.0
    h, w = alpha.shape
    gy, gx = np.mgrid[0:h, 0:w]
    cx, cy = float((alpha * (gx + 0.5)).sum() / area), float((alpha * (gy + 0.5)).sum() / area)
    scores = {}
    for shape in ATTRIBUTES.shapes:
        side = (area / ATTRIBUTES.shape_fill[shape]) ** 0.5
        # a triangle's centroid lies a sixth of its side below its box centre
        top = cy - side / 6 if shape == "triangle" else cy
        ss = FIT_SUPERSAMPLE
        canvas = Image.new("L", (w * ss, h * ss), 0)
        draw_shape(ImageDraw.Draw(canvas), shape, cx * ss, top * ss, side * ss / 2, 255)
        t = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255
        scores[shape] = float(np.minimum(alpha, t).sum() / np.maximum(alpha, t).sum())
    best = max(scores, key=lambda k: scores[k])
    return (best if scores[best] >= min_iou else None), scores[best]


def background(x: np.ndarray) -> np.ndarray:
    """The background colour: the per-channel median of the border ring (objects keep a
    margin), ``(3,)`` float from an ``(H, W, 3)`` float image."""
    h, w = x.shape[:2]
    ring = max(1, min(h, w) // 32)
    border = np.concatenate(
        [
            x[:ring].reshape(-1, 3),
            x[-ring:].reshape(-1, 3),
            x[:, :ring].reshape(-1, 3),
            x[:, -ring:].reshape(-1, 3),
        ]
    )
    return np.median(border, axis=0)


def palette_index(pixels: np.ndarray) -> np.ndarray:
    """Index into :data:`PALETTE_NAMES` of the nearest palette colour of each ``(N, 3)``
    pixel (RGB Euclidean)."""
    return np.argmin(((pixels[:, None, :] - PALETTE[None]) ** 2).sum(-1), axis=1)


def nearest_position(cx: float, cy: float) -> str:
    """The region (``ATTRIBUTES.positions``) whose anchor is nearest to ``(cx, cy)``."""
    anchors = ATTRIBUTES.positions
    return min(anchors, key=lambda p: (anchors[p][0] - cx) ** 2 + (anchors[p][1] - cy) ** 2)


def read_image(
    image: np.ndarray | Image.Image,
    *,
    min_contrast: float = 100.0,
    min_component: float = 0.004,
    min_iou: float = 0.5,
) -> Reading:
    """Read the attributes of one synthetic-style image.

    Args:
        image: RGB, ``(H, W, 3)`` uint8 array or a PIL image (any square size >= 8).
        min_contrast: RGB distance from the background above which a pixel is "object".
        min_component: components smaller than this share of the image are ignored.
        min_iou: a best shape template matching worse than this reads as no shape.

    Returns:
        The :class:`Reading`.
    """
    x = as_float_image(image)
    from scipy import ndimage  # scipy: labelled components; a transitive dependency of ours

    h, w = x.shape[:2]
    bg = background(x)
    obj = np.linalg.norm(x - bg, axis=-1) > min_contrast
    if not obj.any():
        return Reading(None, None, None, 0, 0.0, 0.0)

    nearest = palette_index(x[obj])
    votes = np.bincount(nearest, minlength=len(PALETTE_NAMES))
    ci = int(votes.argmax())
    colour = PALETTE_NAMES[ci]
    mine = np.zeros_like(obj)
    mine[obj] = nearest == ci

    labels, n = ndimage.label(mine, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    keep = [i + 1 for i, s in enumerate(sizes) if s >= min_component * h * w]
    if not keep:
        return Reading(colour, None, None, 0, float(obj.mean()), 0.0)
    kept = np.isin(labels, keep)
    ys, xs = np.nonzero(kept)
    position = nearest_position((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)
    largest = max(keep, key=lambda i: sizes[i - 1])
    sl = ndimage.find_objects((labels == largest).astype(np.int32))[0]
    comp = labels[sl] == largest
    bh, bw = comp.shape
    scores = {s: _iou(comp, _shape_mask(s, bw, bh)) for s in ATTRIBUTES.shapes}
    best = max(scores, key=lambda s: scores[s])
    shape = best if scores[best] >= min_iou else None
    return Reading(colour, shape, position, len(keep), float(obj.mean()), scores[best])


def as_float_image(image: np.ndarray | Image.Image) -> np.ndarray:
    """An RGB image as an ``(H, W, 3)`` float32 array; anything else is a ValueError."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {img.shape}")
    return img.astype(np.float32)


def score(readings: Sequence[Reading], expected: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy of each probed attribute, and of all of colour+shape+position together.

    Args:
        readings: one per image.
        expected: the attributes each image was prompted with (``colour``, ``shape``,
            ``position``, ``count``; a missing or ``None`` key is not scored).

    Returns:
        ``{"n": int, "accuracy": {attr: float}, "all": float}``; ``all`` counts images where
        colour, shape and position are all right.
    """
    if len(readings) != len(expected):
        raise ValueError(f"{len(readings)} readings for {len(expected)} expected attribute sets")
    acc: dict[str, float] = {}
    for attr in PROBED:
        pairs = [(getattr(r, attr), e[attr]) for r, e in zip(readings, expected, strict=True)]
        pairs = [(got, want) for got, want in pairs if want is not None]
        if pairs:
            acc[attr] = sum(got == want for got, want in pairs) / len(pairs)
    all_right = [
        all(getattr(r, a) == e[a] for a in ("colour", "shape", "position"))
        for r, e in zip(readings, expected, strict=True)
    ]
    return {
        "n": len(readings),
        "accuracy": acc,
        "all": sum(all_right) / len(all_right) if all_right else 0.0,
    }
