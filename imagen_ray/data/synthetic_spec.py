"""The synthetic shapes set's vocabulary and settings: what a set may contain.

:data:`ATTRIBUTES` is the vocabulary (colours, shapes, positions, sizes, backgrounds,
counts, caption words) shared by the renderer (``synthetic.py``) and the pixel checker
(``eval/probe.py``). :class:`SyntheticSpec` is one set's settings: a strict typed model
like the run configs (unknown keys are errors, names are checked against the vocabulary,
the held-out pairs must leave something to draw). It goes into ``summary.json`` as
``synthetic`` and comes back with :meth:`SyntheticSpec.from_dict`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, get_args

from pydantic import ConfigDict, ValidationInfo, field_validator, model_validator

from imagen_ray.config import Strict

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class SyntheticAttributes:
    """The attribute vocabulary of the synthetic set (import :data:`ATTRIBUTES`)."""

    colours: Mapping[str, RGB]
    shapes: tuple[str, ...]
    positions: Mapping[str, tuple[float, float]]  # region anchor (x, y) as image fractions
    position_phrases: Mapping[str, str]
    sizes: Mapping[str, float]  # bounding-box side / image side
    backgrounds: Mapping[str, RGB]
    counts: tuple[int, ...]
    count_words: Mapping[int, str]
    shape_plurals: Mapping[str, str]
    shape_fill: Mapping[str, float]  # area / bounding-box area

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return {
            "colours": {k: list(v) for k, v in self.colours.items()},
            "shapes": list(self.shapes),
            "positions": {k: list(v) for k, v in self.positions.items()},
            "position_phrases": dict(self.position_phrases),
            "sizes": dict(self.sizes),
            "backgrounds": {k: list(v) for k, v in self.backgrounds.items()},
            "counts": list(self.counts),
            "count_words": {str(k): v for k, v in self.count_words.items()},
            "shape_plurals": dict(self.shape_plurals),
            "shape_fill": dict(self.shape_fill),
        }


CROSS_ARM = 0.4  # arm width of a cross as a fraction of its side

ATTRIBUTES = SyntheticAttributes(
    colours=MappingProxyType(
        {
            "red": (255, 0, 0),
            "orange": (255, 128, 0),
            "yellow": (255, 255, 0),
            "green": (0, 200, 0),
            "blue": (0, 0, 255),
            "purple": (160, 0, 255),
            "white": (255, 255, 255),
        }
    ),
    shapes=("circle", "square", "triangle", "cross"),
    positions=MappingProxyType(
        {
            "left": (0.25, 0.5),
            "right": (0.75, 0.5),
            "top": (0.5, 0.25),
            "bottom": (0.5, 0.75),
            "center": (0.5, 0.5),
        }
    ),
    position_phrases=MappingProxyType(
        {
            "left": "on the left",
            "right": "on the right",
            "top": "at the top",
            "bottom": "at the bottom",
            "center": "in the center",
        }
    ),
    sizes=MappingProxyType({"small": 0.16, "large": 0.30}),
    backgrounds=MappingProxyType(
        {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
    ),
    counts=(1, 2, 3),
    count_words=MappingProxyType({1: "a", 2: "two", 3: "three"}),
    shape_plurals=MappingProxyType(
        {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
    ),
    shape_fill=MappingProxyType(
        {
            "circle": math.pi / 4,
            "square": 1.0,
            "triangle": 0.5,
            "cross": 2 * CROSS_ARM - CROSS_ARM**2,
        }
    ),
)

DEFAULT_HELDOUT: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("green", "circle"),
    ("blue", "cross"),
)

# {n}: "a"/"two"/"three" ("a" becomes "an" before a vowel), {shape}: plural when n > 1.
TEMPLATES = (
    "{n} {colour} {shape} {where}",
    "{n} {size} {colour} {shape} {where}",
    "a picture of {n} {size} {colour} {shape} {where} on a {bg} background",
    "{n} {colour} {shape} {where} on a {bg} background",
    "{where}, {n} {size} {colour} {shape}",
    "an image of {n} {colour} {shape} {where}, {bg} background",
    "{n} {size} {colour} {shape} {where} against a {bg} background",
)

# The formats a synthetic set is written in (``imagen_ray.images`` reads "jpg" as "jpeg").
ShardImageFormat = Literal["png", "jpg"]  # the shard entry names a synthetic set is written as
SHARD_IMAGE_FORMATS: tuple[str, ...] = get_args(ShardImageFormat)


class SyntheticSpec(Strict):
    """Settings of a synthetic set; ``to_dict()`` goes into summary.json as ``synthetic``.

    Frozen: a spec is a value (compared with ``==``, e.g. to reuse shards written from it).
    """

    model_config = ConfigDict(frozen=True)

    num_samples: int = 2000
    size: int = 64
    seed: int = 0
    count_probs: tuple[float, ...] = (0.7, 0.2, 0.1)  # P(count = 1, 2, 3)
    sizes: tuple[str, ...] = ("small", "large")  # object sizes drawn (uniformly)
    backgrounds: tuple[str, ...] = ("black", "white", "gray")  # drawn uniformly (not the colour)
    heldout: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT  # (colour, shape) pairs
    heldout_shape_positions: tuple[tuple[str, str], ...] = ()  # (shape, position) pairs
    samples_per_shard: int = 500
    image_format: ShardImageFormat = "png"
    templates: tuple[str, ...] = TEMPLATES

    @field_validator("num_samples")
    @classmethod
    def _num_samples(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"num_samples must be >= 0, got {v}")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: int) -> int:
        if not 8 <= v <= 1024:
            raise ValueError(f"size must be between 8 and 1024 pixels, got {v}")
        return v

    @field_validator("samples_per_shard")
    @classmethod
    def _samples_per_shard(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {v}")
        return v

    @field_validator("count_probs")
    @classmethod
    def _count_probs(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if len(v) != len(ATTRIBUTES.counts) or min(v) < 0 or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(
                f"count_probs must be 3 non-negative numbers (P of 1, 2, 3 objects) summing "
                f"to 1, got {v}"
            )
        return v

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("templates must not be empty")
        return v

    @field_validator("sizes", "backgrounds")
    @classmethod
    def _names(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        what = str(info.field_name)[:-1]  # "size" / "background"
        vocab = ATTRIBUTES.sizes if what == "size" else ATTRIBUTES.backgrounds
        if not v:
            raise ValueError(f"{what}s must name at least one of {', '.join(vocab)}")
        for name in v:
            _check_name(what, name, vocab)
        return v

    @field_validator("heldout")
    @classmethod
    def _heldout(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for colour, shape in v:
            _check_name("colour", colour, ATTRIBUTES.colours)
            _check_name("shape", shape, ATTRIBUTES.shapes)
        return v

    @field_validator("heldout_shape_positions")
    @classmethod
    def _heldout_positions(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for shape, position in v:
            _check_name("shape", shape, ATTRIBUTES.shapes)
            _check_name("position", position, ATTRIBUTES.positions)
        return v

    @model_validator(mode="after")
    def _drawable(self) -> SyntheticSpec:
        if not allowed_triples(self):
            raise ValueError("the held-out pairs exclude every (colour, shape, position)")
        for colour, rgb in ATTRIBUTES.colours.items():
            if all(ATTRIBUTES.backgrounds[b] == rgb for b in self.backgrounds):
                raise ValueError(
                    f"a {colour} object would be invisible on every background of "
                    f"{list(self.backgrounds)}; add another background"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists), field order kept."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticSpec:
        """Rebuild from ``to_dict()`` output (e.g. summary.json's ``synthetic``)."""
        return cls.model_validate(dict(d))


def _check_name(what: str, name: str, valid: Collection[str]) -> None:
    if name not in valid:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(valid)}")


def parse_pair(text: str, first: str = "colour", second: str = "shape") -> tuple[str, str]:
    """``red:circle`` -> ``("red", "circle")``, both names checked against ATTRIBUTES.

    Args:
        text: ``A:B``.
        first: kind of A (``colour``, ``shape`` or ``position``).
        second: kind of B.

    Returns:
        The pair.

    Raises:
        ValueError: not of the form A:B or an unknown name (the message lists valid ones).
    """
    a, sep, b = text.strip().partition(":")
    if not sep or not a or not b:
        raise ValueError(
            f"expected {first.upper()}:{second.upper()} (e.g. red:circle), got {text!r}"
        )
    vocab = {
        "colour": ATTRIBUTES.colours,
        "shape": ATTRIBUTES.shapes,
        "position": ATTRIBUTES.positions,
    }
    _check_name(first, a, vocab[first])
    _check_name(second, b, vocab[second])
    return a, b


def allowed_triples(spec: SyntheticSpec) -> list[tuple[str, str, str]]:
    """Every (colour, shape, position) not excluded by the held-out pairs, in table order."""
    cs, sp = set(spec.heldout), set(spec.heldout_shape_positions)
    return [
        (c, s, p)
        for c in ATTRIBUTES.colours
        for s in ATTRIBUTES.shapes
        for p in ATTRIBUTES.positions
        if (c, s) not in cs and (s, p) not in sp
    ]
