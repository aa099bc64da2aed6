"""The synthetic shapes set's settings: what one set contains.

:class:`SyntheticSpec` is one set's settings: a strict typed model like the run configs
(unknown keys are errors, names are checked against the vocabulary of
:mod:`~imagen_ray.data.synthetic_vocab`, the held-out pairs must leave something to draw).
Its ``scenes`` field (:class:`~imagen_ray.data.scene_spec.SceneSpec`) sets the share of two-
and three-object scenes and what they hold out. It goes into ``summary.json`` as
``synthetic`` and comes back with :meth:`SyntheticSpec.from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from pydantic import ConfigDict, ValidationInfo, field_validator, model_validator

from imagen_ray.config import Strict
from imagen_ray.data.scene_spec import SceneSpec, check_scene_held_outs
from imagen_ray.data.synthetic_vocab import ATTRIBUTES, check_name

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
    scenes: SceneSpec = SceneSpec()  # two- and three-object scenes (default: none)

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
            check_name(what, name, vocab)
        return v

    @field_validator("heldout")
    @classmethod
    def _heldout(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for colour, shape in v:
            check_name("colour", colour, ATTRIBUTES.colours)
            check_name("shape", shape, ATTRIBUTES.shapes)
        return v

    @field_validator("heldout_shape_positions")
    @classmethod
    def _heldout_positions(cls, v: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        for shape, position in v:
            check_name("shape", shape, ATTRIBUTES.shapes)
            check_name("position", position, ATTRIBUTES.positions)
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
        check_scene_held_outs(self.scenes, self.heldout)
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists), field order kept."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticSpec:
        """Rebuild from ``to_dict()`` output (e.g. summary.json's ``synthetic``)."""
        return cls.model_validate(dict(d))


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
