"""Reading scenes back: every object's colour, shape and position, matched to a prompt.

A deterministic pixel checker for images of several objects (:mod:`imagen_ray.data.scenes`),
built on the alignment probe's pieces (:mod:`imagen_ray.eval.probe`):

1. background and object pixels as the probe finds them (border median, ``min_contrast``);
2. objects: connected components (8-neighbourhood) of the object pixels, ignoring specks under
   ``min_component`` of the image; a component in which a second palette colour holds at
   least ``min_share`` of the pure pixels (two objects touching) is split by colour;
3. each object's colour: the majority of its pure pixels' nearest palette colours (those
   within ``PURE`` of one; of all its pixels when none is); its shape:
   :func:`~imagen_ray.eval.probe.fit_shape`; its position: the centroid of its pixels;
4. matching: the prompt's objects are assigned to distinct objects found, in any order, by
   brute force over the assignments (at most 3 objects asked for, 8 found), maximising
   colour and shape agreement, then whether the relation holds;
5. relation: object ``a`` is "left of" ``b`` when ``b``'s centroid lies farther right than
   it lies above or below (the offset along the relation's axis dominates), and so on.

:func:`check_scene` scores one image against what its prompt asks for: per object colour and
shape, as many objects as asked, the relation, and for single-object prompts the region.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from imagen_ray.data.synthetic_vocab import RELATIONS
from imagen_ray.eval.probe import (
    PALETTE,
    PALETTE_NAMES,
    as_float_image,
    background,
    fit_shape,
    nearest_position,
    palette_index,
)

MAX_FOUND = 8  # the largest objects found take part in matching
PURE = 60.0  # RGB distance to a palette colour within which a pixel is that colour's own


@dataclass(frozen=True)
class SceneObject:
    """One object read from an image."""

    colour: str
    shape: str | None
    x: float  # centroid, image fractions
    y: float
    area: float  # share of the image
    shape_iou: float  # soft IoU of the best shape template

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _parts(
    x: np.ndarray, obj: np.ndarray, min_px: float, min_share: float
) -> list[tuple[int, np.ndarray]]:
    """(palette index, mask) of each object: components of ``obj`` coloured by the majority
    of their pure pixels (within ``PURE`` of a palette colour; edge pixels blend into the
    background and never are; all pixels when none is pure), split by colour where a second
    colour holds ``min_share`` of the pure pixels."""
    from scipy import ndimage  # scipy: labelled components; a transitive dependency of ours

    cls = np.zeros(obj.shape, dtype=np.int64)
    cls[obj] = palette_index(x[obj])
    pure = obj & (np.linalg.norm(x - PALETTE[cls], axis=-1) < PURE)
    labels, _ = ndimage.label(obj, structure=np.ones((3, 3), dtype=bool))
    parts = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = np.zeros_like(obj)
        comp[sl] = labels[sl] == k
        if comp.sum() < min_px:
            continue
        votes = np.bincount(cls[comp], minlength=len(PALETTE_NAMES))
        clean = np.bincount(cls[comp & pure], minlength=len(PALETTE_NAMES))
        colours = [
            c for c in np.argsort(-clean) if clean[c] >= max(min_px, min_share * clean.sum())
        ]
        if len(colours) <= 1:  # the pure pixels' colour: edges blend towards other colours
            parts.append((int((clean if clean.any() else votes).argmax()), comp))
        else:
            parts += [(int(c), comp & (cls == c)) for c in colours]
    return parts


def read_scene(
    image: np.ndarray | Image.Image,
    *,
    min_contrast: float = 100.0,
    min_component: float = 0.004,
    min_share: float = 0.3,
    min_iou: float = 0.5,
) -> list[SceneObject]:
    """Find every object in an image and read its colour, shape and position.

    Args:
        image: RGB, ``(H, W, 3)`` uint8 array or a PIL image.
        min_contrast: RGB distance from the background above which a pixel is "object".
        min_component: objects smaller than this share of the image are ignored.
        min_share: a second colour holding this share of a component splits it.
        min_iou: a best shape template matching worse than this reads as no shape.

    Returns:
        The objects, largest first.
    """
    from scipy import ndimage

    x = as_float_image(image)
    h, w = x.shape[:2]
    bg = background(x)
    obj = np.linalg.norm(x - bg, axis=-1) > min_contrast
    parts = _parts(x, obj, min_component * h * w, min_share)
    taken = np.zeros_like(obj)
    for _, mask in parts:
        taken |= mask
    found = []
    for c, mask in parts:
        region = ndimage.binary_dilation(mask, iterations=2) & ~(taken & ~mask)
        shape, iou = fit_shape(x, bg, region, min_iou=min_iou)
        ys, xs = np.nonzero(mask)
        cx, cy = (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h
        found.append(
            SceneObject(PALETTE_NAMES[c], shape, float(cx), float(cy), float(mask.mean()), iou)
        )
    return sorted(found, key=lambda o: -o.area)


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """Whether ``a`` is ``relation`` of ``b``: the centroids' offset along the relation's axis
    has the relation's sign and exceeds the offset across it."""
    rel = RELATIONS[relation]
    d = (b.x - a.x, b.y - a.y)
    along, across = d[rel.axis], d[1 - rel.axis]
    return abs(along) > abs(across) and (along > 0) == rel.first_lower


def _chain_holds(objs: Sequence[SceneObject | None], relation: str) -> bool:
    """Every object is ``relation`` of the next (all present)."""
    return all(
        a is not None and b is not None and relation_holds(a, b, relation)
        for a, b in itertools.pairwise(objs)
    )


def _relation_holds(
    found: Sequence[SceneObject],
    expected: Sequence[Mapping[str, str]],
    matched: Sequence[SceneObject | None],
    relation: str,
) -> bool:
    """The relation, judged on the objects the prompt names by colour (the largest object of
    each asked colour; a scene's objects have distinct colours). Not on the matched objects:
    the matching prefers assignments where the relation holds, so blobs of the wrong colours
    would pass. Prompts that repeat a colour fall back to the matched objects."""
    colours = [e["colour"] for e in expected]
    if len(set(colours)) < len(colours):
        return _chain_holds(matched, relation)
    by_colour = [
        max((o for o in found if o.colour == c), key=lambda o: o.area, default=None)
        for c in colours
    ]
    return _chain_holds(by_colour, relation)


def match_objects(
    found: Sequence[SceneObject], expected: Sequence[Mapping[str, str]], relation: str | None
) -> tuple[int | None, ...]:
    """For each expected object (``colour``, ``shape``), the index of the found object it is
    read as (None: nothing left to match), by brute force over the assignments: most colour
    and shape agreements first, then the relation holding."""
    pool: list[int | None] = list(range(min(len(found), MAX_FOUND)))
    pool += [None] * max(0, len(expected) - len(pool))
    best: tuple[int | None, ...] = tuple(pool[: len(expected)])
    best_key = (-1, False)
    for assign in itertools.permutations(pool, len(expected)):
        objs = [None if i is None else found[i] for i in assign]
        agree = sum(
            (o.colour == e["colour"]) + (o.shape == e["shape"])
            for o, e in zip(objs, expected, strict=True)
            if o is not None
        )
        key = (agree, relation is not None and _chain_holds(objs, relation))
        if key > best_key:
            best, best_key = assign, key
    return best


@dataclass(frozen=True)
class SceneCheck:
    """One image checked against its prompt; ``None`` where the prompt asks nothing."""

    found: tuple[SceneObject, ...]
    matched: tuple[int | None, ...]  # per expected object: index into found
    colour: tuple[bool, ...]  # per expected object
    shape: tuple[bool, ...]
    count: bool  # as many objects found as asked for
    relation: bool | None
    position: bool | None  # the region of a single-object (or counting) prompt

    @property
    def binding(self) -> bool:
        """Every object's colour and shape right, and no object missing or extra."""
        return all(self.colour) and all(self.shape) and self.count

    @property
    def scene(self) -> bool:
        """Binding right, and the relation (and region) where asked."""
        return self.binding and self.relation is not False and self.position is not False

    def wrong(self) -> list[str]:
        """What failed: ``colour 1``, ``shape 2``, ``count``, ``relation``, ``position``."""
        out = [
            f"{a} {k + 1}"
            for a in ("colour", "shape")
            for k, ok in enumerate(getattr(self, a))
            if not ok
        ]
        return out + [a for a in ("count", "relation", "position") if getattr(self, a) is False]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with ``binding`` and ``scene``."""
        return {
            "found": [o.to_dict() for o in self.found],
            "matched": list(self.matched),
            "colour": list(self.colour),
            "shape": list(self.shape),
            "count": self.count,
            "relation": self.relation,
            "position": self.position,
            "binding": self.binding,
            "scene": self.scene,
        }


def check_scene(
    image: np.ndarray | Image.Image | Sequence[SceneObject], item: Mapping[str, Any]
) -> SceneCheck:
    """Check an image (or the objects read from it) against what its prompt asks for.

    Args:
        image: the image, or :func:`read_scene`'s objects.
        item: ``objects`` (``[{"colour", "shape"}, ...]``, one entry per object: "two red
            circles" is two entries), optionally ``relation`` (a name of
            :data:`~imagen_ray.data.synthetic_vocab.RELATIONS`: each object to the next) and
            ``position`` (a region name, for the objects' common centroid).

    Returns:
        The :class:`SceneCheck`.
    """
    found = read_scene(image) if isinstance(image, (np.ndarray, Image.Image)) else list(image)
    expected = list(item["objects"])
    relation = item.get("relation")
    matched = match_objects(found, expected, relation)
    objs = [None if i is None else found[i] for i in matched]
    position = item.get("position")
    got_position = None
    present = [o for o in objs if o is not None]
    if present:
        area = sum(o.area for o in present)
        cx = sum(o.x * o.area for o in present) / area
        cy = sum(o.y * o.area for o in present) / area
        got_position = nearest_position(cx, cy)
    return SceneCheck(
        found=tuple(found),
        matched=matched,
        colour=tuple(
            o is not None and o.colour == e["colour"] for o, e in zip(objs, expected, strict=True)
        ),
        shape=tuple(
            o is not None and o.shape == e["shape"] for o, e in zip(objs, expected, strict=True)
        ),
        count=len(found) == len(expected),
        relation=None if relation is None else _relation_holds(found, expected, objs, relation),
        position=None if position is None else got_position == position,
    )
