"""The compositional suite's prompts: by DrawBench-style category, built in or from a file.

Categories: ``colour binding`` (two objects whose colours and shapes could be swapped: each
held-out binding and its seen counterpart), ``spatial relation`` (two objects by a relation:
held-out object pairs, the held-out phrasing, seen pairs), ``counting`` (two or three copies
of one object) and ``single object``; :func:`suite_items` builds them from a synthetic set's
settings, and :mod:`imagen_ray.eval.compositional` scores the images.

A prompts file is JSONL, one prompt per line::

    {"prompt": "a red circle to the left of a blue square",
     "objects": [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"}],
     "relation": "left of", "category": "spatial relation", "split": "seen"}
    {"prompt": "two green squares at the top", "objects": [{"colour": "green",
     "shape": "square", "count": 2}], "position": "top", "category": "counting"}

``objects`` lists what the image must show, in the relation's order (each object is
``relation`` of the next); ``count`` repeats an object (default 1). ``relation``,
``position`` (a region for the objects' common centroid), ``category`` (inferred when
absent, except colour binding), ``split`` (default ``heldout``), ``reason`` (why it is held
out) and ``file`` (the image to score, relative to a folder named when scoring:
:func:`read_images`) are optional. The report of
:func:`~imagen_ray.eval.compositional.evaluate_compositional` holds such a file with every
image's ``file``, so its images can be scored again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_ray.data.scenes import counterpart_prompts, heldout_scene_prompts, seen_scene_prompts
from imagen_ray.data.synthetic import make_caption
from imagen_ray.data.synthetic_spec import TEMPLATES, SyntheticSpec, allowed_triples
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, RELATIONS, check_name
from imagen_ray.eval.alignment import HELDOUT, SEEN
from imagen_ray.prompts import read_prompt_file

CATEGORIES = ("colour binding", "spatial relation", "counting", "single object")


def _tag(items: Sequence[Mapping[str, Any]], category: str, split: str) -> list[dict[str, Any]]:
    """Items in the prompts-file layout, with their category and split."""
    keys = ("prompt", "objects", "relation", "position")
    return [
        {
            **{k: it.get(k) for k in keys},
            "category": category,
            "split": split,
            "reason": it.get("reason"),
        }
        for it in items
    ]


def object_item(colour: str, shape: str, position: str, count: int = 1) -> dict[str, Any]:
    """A single-object or counting prompt (``two red circles on the left``), the first
    caption template's phrasing, with what it asks for."""
    attrs = {"colour": colour, "shape": shape, "position": position, "count": count}
    return {
        "prompt": make_caption(attrs, TEMPLATES[0]),
        "objects": [{"colour": colour, "shape": shape}] * count,
        "relation": None,
        "position": position,
    }


def _object_items(spec: SyntheticSpec, n: int, seed: int) -> list[dict[str, Any]]:
    """Single-object and counting prompts: the held-out (colour, shape) pairs at every region
    (one count each, cycling 1, 2, 3), then ``n`` seen combinations of each kind."""
    held = [(c, s, p) for c, s in spec.heldout for p in ATTRIBUTES.positions]
    held += [(c, s, p) for s, p in spec.heldout_shape_positions for c in ATTRIBUTES.colours]
    counts = ATTRIBUTES.counts
    out = []
    for k, (c, s, p) in enumerate(held):
        count = counts[k % len(counts)]
        category = "single object" if count == 1 else "counting"
        out += _tag(
            [{**object_item(c, s, p, count), "reason": "colour-shape pair"}], category, HELDOUT
        )
    triples = allowed_triples(spec)
    rng = np.random.default_rng(seed)
    for category, choices in (("single object", (1,)), ("counting", counts[1:])):
        picks = sorted(int(i) for i in rng.permutation(len(triples))[:n])
        items = [
            object_item(*triples[i], count=choices[j % len(choices)]) for j, i in enumerate(picks)
        ]
        out += _tag(items, category, SEEN)
    return out


def suite_items(
    spec: SyntheticSpec, *, num_seen: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """The built-in compositional suite of a synthetic set.

    Args:
        spec: the set's settings (its held-out choices, relations and phrasings).
        num_seen: seen prompts per category for spatial relation, single object and counting
            (default: as many as spatial relation has held-out prompts).
        seed: seed for choosing the seen prompts.

    Returns:
        Items as a prompts file holds them (``objects`` one entry per object), each with
        ``category`` and ``split``: colour binding (held-out bindings, their seen
        counterparts), spatial relation (held-out object pairs and phrasing, seen pairs),
        single object and counting.
    """
    held = heldout_scene_prompts(spec)
    binding = [it for it in held if it["reason"] == "binding"]
    relation = [it for it in held if it["reason"] != "binding"]
    n = len(relation) if num_seen is None else num_seen
    return [
        *_tag(binding, "colour binding", HELDOUT),
        *_tag(counterpart_prompts(spec), "colour binding", SEEN),
        *_tag(relation, "spatial relation", HELDOUT),
        *_tag(seen_scene_prompts(spec, n, seed=seed), "spatial relation", SEEN),
        *_object_items(spec, n, seed),
    ]


def _infer_category(item: Mapping[str, Any]) -> str:
    objects = item["objects"]
    if item.get("relation") is not None:
        return "spatial relation"
    return "counting" if len(objects) > 1 else "single object"


def normalise_item(raw: Mapping[str, Any], where: str = "item") -> dict[str, Any]:
    """A prompts-file record checked and in the form the scorer uses: ``count`` expanded,
    names checked against the vocabulary, ``relation``/``position``/``category``/``split``
    filled in. Raises ValueError naming ``where`` and the bad value."""
    try:
        objects = []
        for o in raw["objects"]:
            check_name("colour", o["colour"], ATTRIBUTES.colours)
            check_name("shape", o["shape"], ATTRIBUTES.shapes)
            objects += [{"colour": o["colour"], "shape": o["shape"]}] * int(o.get("count", 1))
        if not objects or not isinstance(raw["prompt"], str):
            raise ValueError("needs a prompt and at least one object")
        item = {**raw, "objects": objects}
        for key, vocab in (("relation", RELATIONS), ("position", ATTRIBUTES.positions)):
            item[key] = raw.get(key)
            if item[key] is not None:
                check_name(key, item[key], vocab)
        item["category"] = raw.get("category") or _infer_category(item)
        check_name("category", item["category"], CATEGORIES)
        item["split"] = str(raw.get("split") or HELDOUT)
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise ValueError(f"{where}: {detail}") from e
    return item


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read a prompts file (JSONL, see the module docstring; read by
    :func:`~imagen_ray.prompts.read_prompt_file`), each record checked."""
    prompts = read_prompt_file(path, default_format="jsonl")
    return [
        normalise_item({"prompt": pr.text, **pr.meta}, f"{path}: prompt {k}")
        for k, pr in enumerate(prompts, start=1)
    ]


def write_prompts(items: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write items as a prompts file (JSONL), one per line."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(dict(it)) + "\n" for it in items))
    return p


def read_images(items: Sequence[Mapping[str, Any]], folder: str | Path) -> list[np.ndarray]:
    """The image of each item's ``file`` under ``folder``, as (H, W, 3) uint8."""
    from PIL import Image

    missing = [it["prompt"] for it in items if not it.get("file")]
    if missing:
        raise ValueError(f"the prompt {missing[0]!r} has no 'file' to score")
    images = []
    for it in items:
        path = Path(folder) / it["file"]
        if not path.is_file():
            raise FileNotFoundError(f"no image {path} for the prompt {it['prompt']!r}")
        with Image.open(path) as im:
            images.append(np.asarray(im.convert("RGB")))
    return images
