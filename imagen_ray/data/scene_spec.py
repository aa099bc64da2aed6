"""Scenes of two (or three) objects: caption phrasings and what is held out.

A scene places objects of their own colour, shape and size by a relation ("a red circle to
the left of a blue square"; the relations are
:data:`~imagen_ray.data.synthetic_vocab.RELATIONS`). :func:`scene_caption` phrases a scene
with a template. :class:`SceneSpec` is the scene part of a set's settings
(``SyntheticSpec.scenes``): the share of 1-, 2- and 3-object samples, the relations drawn,
the phrasings, and what training never shows:

* ``heldout_bindings``: two objects never together, while the same colours on the swapped
  shapes are (blue circle + red square held out, red circle + blue square seen);
* ``heldout_object_pairs``: two objects never together, in either binding;
* ``heldout_relation_template``: one two-object phrasing never used for a training caption.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Sequence
from typing import Any

from pydantic import ConfigDict, ValidationInfo, field_validator, model_validator

from imagen_ray.config import Strict
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, RELATIONS, check_name, parse_pair

ObjectName = tuple[str, str]  # (colour, shape)
ObjectPair = tuple[ObjectName, ObjectName]


# {a} {b} {c}: "a red circle"; {rel}/{rel_short}: a's relation to b ("to the left of"/"left
# of"), {inv}/{inv_short}: b's to a; {the_a}: "the circle" ("the red circle" when b shares the
# shape); {a_side}/{b_side}: "on the left"; {order}: "from left to right"; {bg}: background.
RELATION_TEMPLATES = (
    "{a} {rel} {b}",
    "{b} {inv} {a}",
    "{b} {inv_short} {a}",
    "{a} and {b}, {the_a} {a_side}",
    "{a} and {b}, {the_b} {b_side}",
    "a picture of {a} {rel} {b} on a {bg} background",
)
ROW_TEMPLATES = (  # three objects, each in the relation to the next
    "{a}, {b} and {c}, {order}",
    "{a} {rel} {b}, {the_b} {rel} {c}",
    "a picture of {a}, {b} and {c} in a row, {order}",
)
PLACEHOLDERS = (
    *("a", "b", "c", "rel", "rel_short", "inv", "inv_short", "the_a", "the_b", "the_c"),
    *("a_side", "b_side", "order", "bg"),
)
DEFAULT_HELDOUT_BINDINGS: tuple[ObjectPair, ...] = (
    (("blue", "circle"), ("red", "square")),
    (("yellow", "triangle"), ("purple", "cross")),
)
DEFAULT_HELDOUT_OBJECT_PAIRS: tuple[ObjectPair, ...] = (
    (("orange", "square"), ("green", "triangle")),
)
DEFAULT_HELDOUT_TEMPLATE = "{a} and {b}, {the_b} {b_side}"


def object_phrase(obj: ObjectName) -> str:
    """``("orange", "circle")`` -> ``an orange circle``."""
    colour, shape = obj
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def _the(k: int, objects: Sequence[ObjectName]) -> str:
    """``the circle``, or ``the red circle`` when another object is a circle too."""
    colour, shape = objects[k]
    shared = sum(s == shape for _, s in objects) > 1
    return f"the {colour} {shape}" if shared else f"the {shape}"


def scene_caption(
    objects: Sequence[ObjectName], relation: str, template: str, background: str | None = None
) -> str:
    """The caption of a scene: ``objects[0]`` is ``relation`` of ``objects[1]`` (of ``[2]``).

    Args:
        objects: two or three (colour, shape) pairs, in the relation's order.
        relation: a name of :data:`RELATIONS`.
        template: a format string over :data:`PLACEHOLDERS`.
        background: background name for ``{bg}``.

    Returns:
        e.g. ``a blue square to the right of a red circle``.
    """
    rel = RELATIONS[relation]
    inv = RELATIONS[rel.inverse]
    sides = [ATTRIBUTES.position_phrases[s] for s in rel.sides]
    phrases = [object_phrase(o) for o in objects] + [""] * (3 - len(objects))
    thes = [_the(k, objects) for k in range(len(objects))] + [""] * (3 - len(objects))
    text = template.format(
        **dict(zip(("a", "b", "c"), phrases, strict=True)),
        **dict(zip(("the_a", "the_b", "the_c"), thes, strict=True)),
        rel=rel.phrase,
        rel_short=rel.short,
        inv=inv.phrase,
        inv_short=inv.short,
        a_side=sides[0],
        b_side=sides[1],
        order=rel.order,
        bg=background or "",
    )
    return re.sub(r"\s+", " ", text).strip()


def _check_template(template: str, needs: Collection[str]) -> None:
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise ValueError(
            f"unknown placeholder {{{unknown[0]}}} in template {template!r}; use "
            + ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        )
    missing = [n for n in needs if n not in names]
    if missing:
        raise ValueError(f"template {template!r} must name {', '.join(f'{{{n}}}' for n in needs)}")


def _check_object(obj: ObjectName) -> None:
    check_name("colour", obj[0], ATTRIBUTES.colours)
    check_name("shape", obj[1], ATTRIBUTES.shapes)


def swapped(pair: ObjectPair) -> ObjectPair:
    """The other binding of two objects' colours and shapes: red circle + blue square ->
    blue circle + red square."""
    (c1, s1), (c2, s2) = pair
    return (c2, s1), (c1, s2)


class SceneSpec(Strict):
    """The scene settings of a synthetic set (``SyntheticSpec.scenes``).

    The default draws only single-object samples (the set is as without scenes); set
    ``probs`` to draw scenes, e.g. ``(0.3, 0.6, 0.1)``.
    """

    model_config = ConfigDict(frozen=True)

    probs: tuple[float, float, float] = (1.0, 0.0, 0.0)  # P(1 object (counts incl.), 2, 3)
    relations: tuple[str, ...] = tuple(RELATIONS)  # drawn uniformly
    relation_templates: tuple[str, ...] = RELATION_TEMPLATES  # two objects
    row_templates: tuple[str, ...] = ROW_TEMPLATES  # three objects
    heldout_bindings: tuple[ObjectPair, ...] = DEFAULT_HELDOUT_BINDINGS
    heldout_object_pairs: tuple[ObjectPair, ...] = DEFAULT_HELDOUT_OBJECT_PAIRS
    heldout_relation_template: str | None = DEFAULT_HELDOUT_TEMPLATE  # one of relation_templates

    @field_validator("probs")
    @classmethod
    def _probs(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(
                f"scene probs must be 3 non-negative numbers (P of 1-, 2-, 3-object samples) "
                f"summing to 1, got {v}"
            )
        return v

    @field_validator("relations")
    @classmethod
    def _relations(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError(f"relations must name at least one of {', '.join(RELATIONS)}")
        for name in v:
            check_name("relation", name, RELATIONS)
        return v

    @field_validator("relation_templates", "row_templates")
    @classmethod
    def _templates(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not v:
            raise ValueError(f"{info.field_name} must not be empty")
        needs = ("a", "b", "c") if info.field_name == "row_templates" else ("a", "b")
        for t in v:
            _check_template(t, needs)
        return v

    @field_validator("heldout_bindings", "heldout_object_pairs")
    @classmethod
    def _pairs(cls, v: tuple[ObjectPair, ...], info: ValidationInfo) -> tuple[ObjectPair, ...]:
        for pair in v:
            for obj in pair:
                _check_object(obj)
            (c1, s1), (c2, s2) = pair
            if c1 == c2:
                raise ValueError(f"{info.field_name}: {pair} has one colour twice; scenes never do")
            if info.field_name == "heldout_bindings" and s1 == s2:
                raise ValueError(
                    f"heldout_bindings: {pair} has one shape twice, so swapping the colours "
                    "gives the same scene; name two shapes"
                )
        return v

    @model_validator(mode="after")
    def _heldout_template(self) -> SceneSpec:
        t = self.heldout_relation_template
        if t is None:
            return self
        if t not in self.relation_templates:
            raise ValueError(
                f"heldout_relation_template {t!r} is not one of relation_templates: "
                f"{list(self.relation_templates)}"
            )
        seen = [s for s in self.relation_templates if s != t]
        if not seen:
            raise ValueError("heldout_relation_template leaves no phrasing for training")
        a, b = ("red", "circle"), ("blue", "square")
        for rel in self.relations:
            said = {scene_caption((a, b), rel, s) for s in seen}
            said |= {scene_caption((b, a), RELATIONS[rel].inverse, s) for s in seen}
            if scene_caption((a, b), rel, t) in said:
                raise ValueError(
                    f"heldout_relation_template {t!r} says {scene_caption((a, b), rel, t)!r}, "
                    "which another template also says: hold out a phrasing of its own"
                )
        return self

    @property
    def enabled(self) -> bool:
        """Whether the set draws any scene of two or three objects."""
        return self.probs[0] < 1.0

    def seen_templates(self) -> tuple[str, ...]:
        """The two-object phrasings training captions use."""
        return tuple(t for t in self.relation_templates if t != self.heldout_relation_template)

    def held_pairs(self) -> frozenset[frozenset[ObjectName]]:
        """The object pairs training never shows together (bindings and whole pairs)."""
        return frozenset(frozenset(p) for p in (*self.heldout_bindings, *self.heldout_object_pairs))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        return self.model_dump(mode="json")


def scene_objects(heldout: Collection[ObjectName]) -> list[ObjectName]:
    """Every (colour, shape) a scene may hold: those not held out of the set, table order."""
    return [(c, s) for c in ATTRIBUTES.colours for s in ATTRIBUTES.shapes if (c, s) not in heldout]


def fits(
    held: Collection[frozenset[ObjectName]], chosen: Sequence[ObjectName], obj: ObjectName
) -> bool:
    """Whether ``obj`` may join ``chosen`` in a training scene: a colour of its own and no
    pair with any of them in ``held`` (``SceneSpec.held_pairs()``)."""
    return all(obj[0] != o[0] and frozenset((o, obj)) not in held for o in chosen)


def check_scene_held_outs(scenes: SceneSpec, heldout: Collection[ObjectName]) -> None:
    """Cross-checks with the set's held-out (colour, shape) pairs: every held-out binding's
    swapped counterpart is drawable (its objects are not held out, nor is the pair), and the
    scenes the set draws have objects to draw. Nothing to check when it draws no scenes."""
    if not scenes.enabled:
        return
    held = scenes.held_pairs()
    for pair in scenes.heldout_bindings:
        other = swapped(pair)
        bad = [o for o in other if o in heldout]
        if bad or frozenset(other) in held:
            raise ValueError(
                f"heldout_bindings {pair}: its counterpart {other} must be seen in training, "
                f"but {'the pair' if not bad else bad[0]} is held out too; hold out other "
                "bindings (scenes.heldout_bindings, --heldout-binding)"
            )
    objects = scene_objects(heldout)
    pairs = [(a, b) for a in objects for b in objects if fits(held, [a], b)]
    if not pairs:
        raise ValueError("the held-out choices leave no two objects to draw together")
    if scenes.probs[2] > 0 and not any(fits(held, p, o) for p in pairs for o in objects):
        raise ValueError("the held-out choices leave no three objects to draw together")


def parse_object_pair(text: str) -> ObjectPair:
    """``red:circle+blue:square`` -> ``(("red", "circle"), ("blue", "square"))``, names
    checked (the message lists the valid ones)."""
    a, sep, b = text.strip().partition("+")
    if not sep:
        raise ValueError(
            f"expected COLOUR:SHAPE+COLOUR:SHAPE (e.g. red:circle+blue:square), got {text!r}"
        )
    return parse_pair(a), parse_pair(b)
