"""The synthetic shapes set's attribute vocabulary: the names a set and a checker may use.

:data:`ATTRIBUTES` (colours, shapes, positions, sizes, backgrounds, counts, caption words)
and :data:`RELATIONS` (how a scene places two objects and how captions say it) are shared by
the renderer (``synthetic.py``, ``scenes.py``), the settings (``synthetic_spec.py``,
``scene_spec.py``) and the pixel checkers (``eval/probe.py``, ``eval/scenes.py``).
:func:`check_name` and :func:`parse_pair` turn names from files and flags into checked ones.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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


@dataclass(frozen=True)
class Relation:
    """How a relation of the first object to the second is said and laid out."""

    phrase: str  # "to the left of"
    short: str  # "left of"
    inverse: str  # name of the second object's relation to the first
    axis: int  # 0: x (left/right), 1: y (above/below)
    first_lower: bool  # the first object has the smaller coordinate (left of, above)
    order: str  # objects in a row in this relation: "from left to right"

    @property
    def sides(self) -> tuple[str, str]:
        """Region names (``ATTRIBUTES.positions``) of the first and the second object."""
        names = ("left", "right") if self.axis == 0 else ("top", "bottom")
        return names if self.first_lower else (names[1], names[0])


RELATIONS = MappingProxyType(
    {
        "left of": Relation("to the left of", "left of", "right of", 0, True, "from left to right"),
        "right of": Relation(
            "to the right of", "right of", "left of", 0, False, "from right to left"
        ),
        "above": Relation("above", "above", "below", 1, True, "from top to bottom"),
        "below": Relation("below", "below", "above", 1, False, "from bottom to top"),
    }
)


def check_name(what: str, name: str, valid: Collection[str]) -> None:
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
    check_name(first, a, vocab[first])
    check_name(second, b, vocab[second])
    return a, b
