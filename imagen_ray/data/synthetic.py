"""The synthetic caption -> image set: bold coloured shapes at coarse positions.

The embedded default data for the demo and the tests. Each sample is one to three copies of
a shape in one saturated colour on a plain background, rendered with PIL ImageDraw at 4x (2x
at 1024 px) and downsampled with LANCZOS. The attributes are chosen so that a tiny model can
learn them and a deterministic pixel checker can read them back from generated images:

* colour: the object's RGB is one of
  :data:`~imagen_ray.data.synthetic_vocab.ATTRIBUTES` ``.colours`` (nearest-colour
  classification; the background is never the object colour);
* position: the centroid of the object pixels lies near the ``positions`` anchor of the
  named region (left/right/top/bottom/center, anchors 0.25 apart, jitter at most 0.04);
* count: connected components of the object colour (copies never touch);
* size: the side of each copy's bounding box as a fraction of the image side, about
  ``sizes[name]`` (small 0.16, large 0.30; three large copies shrink to fit, >= 0.27);
* shape: circle, square, triangle (pointing up), cross (arms 0.4 of the side); their fill
  ratios (area / bounding box) are ``shape_fill``.

Sample ``i`` draws everything from ``numpy.random.default_rng([seed, i])``: it does not depend
on the other samples or on ``num_samples``. Some (colour, shape) pairs, and optionally
(shape, position) pairs, are held out of training; :func:`heldout_prompts` lists evaluation
prompts for them. With ``SyntheticSpec.scenes`` a share of the samples are scenes of two or
three objects placed by a relation (:mod:`imagen_ray.data.scenes`).

Here: drawing a sample's attributes, rendering and captioning it, the held-out prompts and
writing the set through the shard writer. The vocabulary (:data:`ATTRIBUTES`) is in
:mod:`imagen_ray.data.synthetic_vocab`, the drawing in :mod:`imagen_ray.data.synthetic_draw`,
the settings (:class:`SyntheticSpec`) in :mod:`imagen_ray.data.synthetic_spec`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from imagen_ray.data.scenes import (
    caption_scene,
    heldout_scene_prompts,
    render_scene,
    sample_scene,
    scene_kind,
)
from imagen_ray.data.synthetic_draw import render_objects
from imagen_ray.data.synthetic_spec import TEMPLATES, SyntheticSpec, allowed_triples
from imagen_ray.data.synthetic_vocab import ATTRIBUTES
from imagen_ray.images import encode_image

if TYPE_CHECKING:
    from imagen_ray.data.writer import ShardSample, ShardWriteSummary

__all__ = [
    "heldout_json",
    "heldout_prompts",
    "make_caption",
    "prompt_item",
    "render_attributes",
    "render_sample",
    "sample_attributes",
    "synthetic_sample",
    "write_synthetic",
]

JITTER = 0.04  # max shift of the group centre from the region anchor (image fractions)
SIZE_JITTER = 0.08  # relative jitter of the object size
GAP = 0.06  # space between copies
MARGIN = 0.03  # objects stay this far from the border


# ---------------------------------------------------------------------------- sampling


def sample_attributes(spec: SyntheticSpec, index: int) -> dict[str, Any]:
    """Draw the attributes and layout of sample ``index`` (rng = default_rng([seed, index])).

    Args:
        spec: the set's settings.
        index: sample number (>= 0).

    Returns:
        A JSON-serialisable dict: ``colour``, ``rgb``, ``shape``, ``position``, ``count``,
        ``size``, ``background``, ``background_rgb``, ``object_size`` (bounding-box side /
        image side), ``centers`` (``[[x, y], ...]`` bounding-box centres as image fractions,
        one per copy) and ``template`` (index into ``spec.templates``). Floats are rounded
        to 4 decimals, and :func:`render_attributes` draws from exactly these values.
    """
    rng = np.random.default_rng([spec.seed, index])
    triples = allowed_triples(spec)
    colour, shape, position = triples[int(rng.integers(len(triples)))]
    count = int(rng.choice(ATTRIBUTES.counts, p=np.asarray(spec.count_probs, dtype=float)))
    size = str(rng.choice(list(spec.sizes)))
    backgrounds = [
        b for b in spec.backgrounds if ATTRIBUTES.backgrounds[b] != ATTRIBUTES.colours[colour]
    ]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    template = int(rng.integers(len(spec.templates)))

    s = ATTRIBUTES.sizes[size] * float(rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER))
    s = min(s, (1 - 2 * MARGIN - (count - 1) * GAP) / count)  # copies must fit in a line
    length = count * s + (count - 1) * GAP
    ax, ay = ATTRIBUTES.positions[position]
    jx, jy = rng.uniform(-JITTER, JITTER, size=2)
    vertical = position in ("left", "right")  # copies stack along the region's long axis
    along, across = (ay + jy, ax + jx) if vertical else (ax + jx, ay + jy)
    along = float(np.clip(along, MARGIN + length / 2, 1 - MARGIN - length / 2))
    across = float(np.clip(across, MARGIN + s / 2, 1 - MARGIN - s / 2))
    offsets = [(k - (count - 1) / 2) * (s + GAP) for k in range(count)]
    centers = [[across, along + o] if vertical else [along + o, across] for o in offsets]
    return {
        "colour": colour,
        "rgb": list(ATTRIBUTES.colours[colour]),
        "shape": shape,
        "position": position,
        "count": count,
        "size": size,
        "background": background,
        "background_rgb": list(ATTRIBUTES.backgrounds[background]),
        "object_size": round(s, 4),
        "centers": [[round(x, 4), round(y, 4)] for x, y in centers],
        "template": template,
    }


def render_attributes(attrs: Mapping[str, Any], size: int) -> Image.Image:
    """Draw a sample from its attributes (as returned by :func:`sample_attributes`).

    Args:
        attrs: needs ``shape``, ``rgb``, ``background_rgb``, ``object_size``, ``centers``.
        size: output side in pixels (8 ... 1024).

    Returns:
        An RGB image of ``size x size``: drawn at 4x (2x at 1024), LANCZOS-downsampled.
    """
    return render_objects([attrs], attrs["background_rgb"], size)


def make_caption(attrs: Mapping[str, Any], template: str | None = None) -> str:
    """The caption of a sample: numbers as words, plural shapes, "an" before vowels.

    Args:
        attrs: needs ``colour``, ``shape``, ``position``, ``count``, ``size``, ``background``.
        template: a format string over ``{n} {size} {colour} {shape} {where} {bg}``
            (default ``TEMPLATES[attrs["template"]]``).

    Returns:
        e.g. ``two small blue squares at the top``.
    """
    template = TEMPLATES[attrs["template"]] if template is None else template
    count = int(attrs["count"])
    text = template.format(
        n=ATTRIBUTES.count_words[count],
        size=attrs.get("size") or "",
        colour=attrs["colour"],
        shape=attrs["shape"] if count == 1 else ATTRIBUTES.shape_plurals[attrs["shape"]],
        where=ATTRIBUTES.position_phrases[attrs["position"]],
        bg=attrs.get("background") or "",
    )
    text = re.sub(r"\ba (?=[aeiou])", "an ", text)
    return re.sub(r"\s+", " ", text).strip()


def render_sample(spec: SyntheticSpec, index: int) -> tuple[Image.Image, str, dict[str, Any]]:
    """Sample ``index`` of the set: image, caption and attributes.

    Args:
        spec: the set's settings.
        index: sample number; the result depends only on ``(spec.seed, index)`` and the
            spec's size, count probabilities, held-out pairs, templates and scenes.

    Returns:
        ``(image, caption, attributes)``: an RGB ``spec.size`` square PIL image, its caption
        and the dict of :func:`sample_attributes`, or for a scene of two or three objects
        (:func:`~imagen_ray.data.scenes.scene_kind`) that of
        :func:`~imagen_ray.data.scenes.sample_scene` (it has ``objects``).
    """
    n = scene_kind(spec, index)
    if n > 1:
        scene = sample_scene(spec, index, n)
        return render_scene(scene, spec.size), caption_scene(scene, spec.scenes), scene
    attrs = sample_attributes(spec, index)
    caption = make_caption(attrs, spec.templates[attrs["template"]])
    return render_attributes(attrs, spec.size), caption, attrs


# ---------------------------------------------------------------------------- held-out


def heldout_prompts(spec: SyntheticSpec | None = None) -> list[dict[str, Any]]:
    """Evaluation prompts whose combinations never occur in the training shards.

    Every held-out (colour, shape) pair at every position, then every held-out
    (shape, position) pair in every colour, as ``a {colour} {shape} {where}`` (one object,
    size and background unspecified). Duplicates are dropped.

    Args:
        spec: the set's settings (default ``SyntheticSpec()``).

    Returns:
        ``[{"prompt": str, "attributes": {"colour", "rgb", "shape", "position", "count",
        "size": None, "background": None}}, ...]``.
    """
    spec = spec or SyntheticSpec()
    combos = [(c, s, p) for c, s in spec.heldout for p in ATTRIBUTES.positions]
    combos += [(c, s, p) for s, p in spec.heldout_shape_positions for c in ATTRIBUTES.colours]
    out, seen = [], set()
    for colour, shape, position in combos:
        item = prompt_item(colour, shape, position)
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            out.append(item)
    return out


def prompt_item(colour: str, shape: str, position: str) -> dict[str, Any]:
    """An evaluation prompt ``a {colour} {shape} {where}`` (one object, size and background
    unspecified) with the attributes it asks for, as :func:`heldout_prompts` lists them."""
    attrs = {
        "colour": colour,
        "rgb": list(ATTRIBUTES.colours[colour]),
        "shape": shape,
        "position": position,
        "count": 1,
        "size": None,
        "background": None,
    }
    return {"prompt": make_caption(attrs, TEMPLATES[0]), "attributes": attrs}


def heldout_json(spec: SyntheticSpec) -> dict[str, Any]:
    """The content of ``heldout.json``: the pairs and their evaluation prompts.

    Args:
        spec: the set's settings.

    Returns:
        ``{"pairs": [[colour, shape], ...], "shape_position_pairs": [[shape, position], ...],
        "prompts": [str, ...], "items": heldout_prompts(spec)}``; a set with scenes adds
        ``"scenes": {**spec.scenes.to_dict(), "prompts": [...], "items":
        heldout_scene_prompts(spec)}``.
    """
    items = heldout_prompts(spec)
    out: dict[str, Any] = {
        "pairs": [list(p) for p in spec.heldout],
        "shape_position_pairs": [list(p) for p in spec.heldout_shape_positions],
        "prompts": [it["prompt"] for it in items],
        "items": items,
    }
    if spec.scenes.enabled:
        scene_items = heldout_scene_prompts(spec)
        out["scenes"] = {
            **spec.scenes.to_dict(),
            "prompts": [it["prompt"] for it in scene_items],
            "items": scene_items,
        }
    return out


# ---------------------------------------------------------------------------- writing


def synthetic_sample(spec: SyntheticSpec, index: int) -> ShardSample:
    """Sample ``index`` encoded for :func:`~imagen_ray.data.writer.write_shards`.

    Args:
        spec: the set's settings.
        index: sample number.

    Returns:
        A shard sample with key ``syn-{index:08d}``, source ``synthetic/{index}`` and the
        attributes as json metadata.
    """
    from imagen_ray.data.writer import ShardSample

    image, caption, attrs = render_sample(spec, index)
    return ShardSample(
        key=f"syn-{index:08d}",
        image=encode_image(image, spec.image_format),
        ext=spec.image_format,
        caption=caption,
        width=image.width,
        height=image.height,
        source=f"synthetic/{index}",
        meta=attrs,
    )


def write_synthetic(
    spec: SyntheticSpec, out_dir: str | Path, *, progress: bool = True
) -> ShardWriteSummary:
    """Render the set into shards (through the same writer as real data) + ``heldout.json``.

    Args:
        spec: the set's settings.
        out_dir: the shard directory (a previous run there is replaced).
        progress: show a progress bar.

    Returns:
        The write summary; summary.json also holds ``"synthetic": spec.to_dict()`` and
        ``"attributes": ATTRIBUTES.to_dict()``.
    """
    from imagen_ray.data.writer import write_shards

    heldout = json.dumps(heldout_json(spec), indent=2) + "\n"
    return write_shards(
        (synthetic_sample(spec, i) for i in range(spec.num_samples)),
        out_dir,
        samples_per_shard=spec.samples_per_shard,
        source=(f"synthetic shapes: {spec.num_samples} samples, {spec.size} px, seed {spec.seed}"),
        progress=progress,
        total=spec.num_samples,
        extra_summary={"synthetic": spec.to_dict(), "attributes": ATTRIBUTES.to_dict()},
        extra_files={"heldout.json": heldout.encode("utf-8")},
    )
