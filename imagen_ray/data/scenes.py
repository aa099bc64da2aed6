"""Scenes of the synthetic set: two or three objects placed by a relation, and their captions.

A scene sample holds two objects (three as an option) of distinct colours, each with its own
shape and size, in non-overlapping slots along the relation's axis: the left and right halves
for "left of"/"right of", the top and bottom halves for "above"/"below" (thirds for three
objects, each in the relation to the next). Within its slot an object's centre moves by at
most ``JITTER`` along the axis and ``ACROSS_JITTER`` across it, so the centroids always tell
the relation: the distance along the axis exceeds the distance across it. The background is
neither object's colour. Captions come from ``SceneSpec.relation_templates`` (two objects,
never the held-out phrasing) or ``row_templates`` (three).

Sample ``i`` is a scene with probability ``SceneSpec.probs``, drawn from
``default_rng([seed, i, 1])``; a scene's content comes from ``default_rng([seed, i, n])``
(``n`` objects), a single-object sample's exactly as in a set without scenes.
:func:`heldout_scene_prompts` lists the two-object prompts training never shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from imagen_ray.data.scene_spec import (
    ObjectName,
    SceneSpec,
    fits,
    scene_caption,
    scene_objects,
    swapped,
)
from imagen_ray.data.synthetic_draw import render_objects
from imagen_ray.data.synthetic_spec import SyntheticSpec
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, RELATIONS

JITTER = 0.04  # max shift of an object's centre along the relation's axis (image fractions)
ACROSS_JITTER = 0.1  # ... and across it: below the 0.23 the slot centres are apart at least
SIZE_JITTER = 0.08  # relative jitter of an object's size
GAP = 0.06  # space between slots
MARGIN = 0.03  # objects stay this far from the border
DRAW_TRIES = 100  # redraws of a scene's objects before the spec is called undrawable


def scene_kind(spec: SyntheticSpec, index: int) -> int:
    """How many objects sample ``index`` shows: 1 (a single-object sample, counts
    included), 2 or 3, drawn with ``spec.scenes.probs`` from ``default_rng([seed, index, 1])``."""
    if not spec.scenes.enabled:
        return 1
    rng = np.random.default_rng([spec.seed, index, 1])
    return int(rng.choice((1, 2, 3), p=np.asarray(spec.scenes.probs, dtype=float)))


def slot_sides(relation: str, n: int) -> tuple[str, ...]:
    """The region (``ATTRIBUTES.positions``) of each object of an ``n``-object scene."""
    first, last = RELATIONS[relation].sides
    return (first, last) if n == 2 else (first, "center", last)


def _draw_objects(
    spec: SyntheticSpec, rng: np.random.Generator, n: int
) -> tuple[list[ObjectName], str]:
    """``n`` objects that may be together in training, and a relation that puts none of them
    at a held-out (shape, position) region."""
    objects = scene_objects(spec.heldout)
    held = spec.scenes.held_pairs()
    banned = set(spec.heldout_shape_positions)
    for _ in range(DRAW_TRIES):
        chosen: list[ObjectName] = []
        for _ in range(n):
            options = [o for o in objects if fits(held, chosen, o)]
            if not options:
                break
            chosen.append(options[int(rng.integers(len(options)))])
        if len(chosen) < n:
            continue
        relations = [
            r
            for r in spec.scenes.relations
            if not any(
                (o[1], side) in banned for o, side in zip(chosen, slot_sides(r, n), strict=True)
            )
        ]
        if relations:
            return chosen, relations[int(rng.integers(len(relations)))]
    raise ValueError(
        f"no {n}-object scene found in {DRAW_TRIES} draws: the held-out choices leave too "
        "little to draw; hold out fewer pairs"
    )


def _layout(
    rng: np.random.Generator, sizes: Sequence[float], relation: str
) -> list[tuple[float, float, float]]:
    """(x, y, side) of each object: object ``k`` in slot ``k`` along the relation's axis
    (counted from its far end for "right of"/"below"), jittered within the slot."""
    rel = RELATIONS[relation]
    n = len(sizes)
    width = (1 - 2 * MARGIN) / n
    out = []
    for k, size in enumerate(sizes):
        slot = k if rel.first_lower else n - 1 - k
        s = min(size * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER)), width - GAP)
        lo = MARGIN + slot * width + (GAP + s) / 2
        hi = MARGIN + (slot + 1) * width - (GAP + s) / 2
        along = float(np.clip(MARGIN + (slot + 0.5) * width + rng.uniform(-JITTER, JITTER), lo, hi))
        across = float(
            np.clip(
                0.5 + rng.uniform(-ACROSS_JITTER, ACROSS_JITTER), MARGIN + s / 2, 1 - MARGIN - s / 2
            )
        )
        out.append((along, across, s) if rel.axis == 0 else (across, along, s))
    return out


def sample_scene(spec: SyntheticSpec, index: int, n: int) -> dict[str, Any]:
    """Draw the content and layout of scene sample ``index`` with ``n`` objects.

    Args:
        spec: the set's settings.
        index: sample number.
        n: 2 or 3 objects.

    Returns:
        A JSON-serialisable dict: ``objects`` (each ``colour``, ``rgb``, ``shape``, ``size``,
        ``object_size``, ``center`` ``[x, y]`` as image fractions), ``relation`` (of each
        object to the next), ``background``, ``background_rgb`` and ``template`` (index into
        ``relation_templates`` for two objects, ``row_templates`` for three). Floats are
        rounded to 4 decimals; :func:`render_scene` draws from exactly these values.
    """
    rng = np.random.default_rng([spec.seed, index, n])
    chosen, relation = _draw_objects(spec, rng, n)
    sizes = [str(rng.choice(list(spec.sizes))) for _ in chosen]
    colours = {ATTRIBUTES.colours[c] for c, _ in chosen}
    backgrounds = [b for b in spec.backgrounds if ATTRIBUTES.backgrounds[b] not in colours]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    scenes = spec.scenes
    if n == 2:
        usable = [
            i for i, t in enumerate(scenes.relation_templates) if t in scenes.seen_templates()
        ]
    else:
        usable = list(range(len(scenes.row_templates)))
    template = usable[int(rng.integers(len(usable)))]
    return {**scene_attributes(chosen, relation, sizes, background, rng), "template": template}


def scene_attributes(
    objects: Sequence[ObjectName],
    relation: str,
    sizes: Sequence[str],
    background: str,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Lay out a scene: ``objects[k]`` is ``relation`` of ``objects[k + 1]``, each of the
    named size (``ATTRIBUTES.sizes``), jittered within its slot by ``rng``.

    Returns:
        :func:`sample_scene`'s dict without ``template``.
    """
    layout = _layout(rng, [ATTRIBUTES.sizes[s] for s in sizes], relation)
    drawn = [
        {
            "colour": colour,
            "rgb": list(ATTRIBUTES.colours[colour]),
            "shape": shape,
            "size": size,
            "object_size": round(s, 4),
            "center": [round(x, 4), round(y, 4)],
        }
        for (colour, shape), size, (x, y, s) in zip(objects, sizes, layout, strict=True)
    ]
    return {
        "objects": drawn,
        "relation": relation,
        "background": background,
        "background_rgb": list(ATTRIBUTES.backgrounds[background]),
    }


def render_scene(attrs: Mapping[str, Any], size: int) -> Image.Image:
    """Draw a scene from its attributes (as :func:`sample_scene` returns them; objects need
    ``shape``, ``rgb``, ``object_size`` and ``center``)."""
    objects = [{**o, "centers": [o["center"]]} for o in attrs["objects"]]
    return render_objects(objects, attrs["background_rgb"], size)


def caption_scene(attrs: Mapping[str, Any], scenes: SceneSpec) -> str:
    """The caption of a scene with its template from ``scenes``."""
    objects = [(o["colour"], o["shape"]) for o in attrs["objects"]]
    pool = scenes.relation_templates if len(objects) == 2 else scenes.row_templates
    return scene_caption(objects, attrs["relation"], pool[attrs["template"]], attrs["background"])


# ---------------------------------------------------------------------------- prompts


def scene_item(
    objects: Sequence[ObjectName], relation: str, template: str, reason: str | None = None
) -> dict[str, Any]:
    """An evaluation prompt for a scene, with what it asks for: ``{"prompt", "objects":
    [{"colour", "shape"}, ...], "relation", "reason"}`` (``reason``: why it is held out)."""
    return {
        "prompt": scene_caption(objects, relation, template),
        "objects": [{"colour": c, "shape": s} for c, s in objects],
        "relation": relation,
        "reason": reason,
    }


def pair_prompts(
    pairs: Sequence[tuple[ObjectName, ObjectName]],
    relations: Sequence[str],
    template: str,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    """:func:`scene_item` for every pair in both orders and every relation."""
    return [
        scene_item(objects, rel, template, reason)
        for a, b in pairs
        for objects in ((a, b), (b, a))
        for rel in relations
    ]


def heldout_scene_prompts(spec: SyntheticSpec) -> list[dict[str, Any]]:
    """Two-object prompts whose content or phrasing never occurs in the training shards.

    Every held-out binding, then every held-out object pair, in every relation of the spec and
    both orders, phrased with the first training phrasing; then the held-out phrasing for the
    bindings' seen counterparts (or the first drawable pair) in every relation.

    Returns:
        :func:`scene_item` dicts with ``reason`` ``binding``, ``object pair`` or ``phrasing``.
    """
    scenes = spec.scenes
    plain = scenes.seen_templates()[0]
    out = pair_prompts(scenes.heldout_bindings, scenes.relations, plain, "binding")
    out += pair_prompts(scenes.heldout_object_pairs, scenes.relations, plain, "object pair")
    phrasing = scenes.heldout_relation_template
    if phrasing is not None:
        pairs = [swapped(p) for p in scenes.heldout_bindings] or seen_pairs(spec)[:1]
        out += [scene_item(p, r, phrasing, "phrasing") for p in pairs for r in scenes.relations]
    return out


def counterpart_prompts(spec: SyntheticSpec) -> list[dict[str, Any]]:
    """The seen counterpart of every held-out binding (its colours on the swapped shapes),
    asked for like :func:`heldout_scene_prompts` asks for the binding."""
    scenes = spec.scenes
    pairs = [swapped(p) for p in scenes.heldout_bindings]
    return pair_prompts(pairs, scenes.relations, scenes.seen_templates()[0])


def seen_pairs(spec: SyntheticSpec) -> list[tuple[ObjectName, ObjectName]]:
    """Every ordered pair of objects training may show together, in table order."""
    objects = scene_objects(spec.heldout)
    held = spec.scenes.held_pairs()
    return [(a, b) for a in objects for b in objects if fits(held, [a], b)]


def seen_scene_prompts(spec: SyntheticSpec, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` two-object prompts for (object, object, relation) combinations training may show,
    drawn without replacement (seeded), phrased with the first training phrasing."""
    combos = [(p, r) for p in seen_pairs(spec) for r in spec.scenes.relations]
    picks = np.random.default_rng(seed).permutation(len(combos))[: max(0, n)]
    plain = spec.scenes.seen_templates()[0]
    return [scene_item(combos[k][0], combos[k][1], plain) for k in sorted(int(i) for i in picks)]
