"""The synthetic caption -> image set: bold coloured shapes at coarse positions.

The embedded default data for the demo and the tests. Each sample is one to three copies of
a shape in one saturated colour on a plain background, rendered with PIL ImageDraw at 4x (2x
at 1024 px) and downsampled with LANCZOS. The attributes are chosen so that a tiny model can
learn them and a deterministic pixel checker can read them back from generated images:

* colour: the object's RGB is one of :data:`ATTRIBUTES` ``.colours`` (nearest-colour
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
prompts for them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image, ImageDraw

if TYPE_CHECKING:
    from imagen_ray.data.shards import ShardSample, ShardWriteSummary

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
JITTER = 0.04  # max shift of the group centre from the region anchor (image fractions)
SIZE_JITTER = 0.08  # relative jitter of the object size
GAP = 0.06  # space between copies
MARGIN = 0.03  # objects stay this far from the border

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

ImageFormat = Literal["png", "jpg"]


@dataclass(frozen=True)
class SyntheticSpec:
    """Settings of a synthetic set; ``to_dict()`` goes into summary.json as ``synthetic``."""

    num_samples: int = 2000
    size: int = 64
    seed: int = 0
    count_probs: tuple[float, float, float] = (0.7, 0.2, 0.1)  # P(count = 1, 2, 3)
    sizes: tuple[str, ...] = ("small", "large")  # object sizes drawn (uniformly)
    backgrounds: tuple[str, ...] = ("black", "white", "gray")  # drawn uniformly (not the colour)
    heldout: tuple[tuple[str, str], ...] = DEFAULT_HELDOUT  # (colour, shape) pairs
    heldout_shape_positions: tuple[tuple[str, str], ...] = ()  # (shape, position) pairs
    samples_per_shard: int = 500
    image_format: ImageFormat = "png"
    templates: tuple[str, ...] = field(default=TEMPLATES)

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}")
        if not 8 <= self.size <= 1024:
            raise ValueError(f"size must be between 8 and 1024 pixels, got {self.size}")
        if self.samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        probs = tuple(self.count_probs)
        if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError(
                f"count_probs must be 3 non-negative numbers (P of 1, 2, 3 objects) summing "
                f"to 1, got {self.count_probs}"
            )
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be png or jpg, got {self.image_format!r}")
        if not self.templates:
            raise ValueError("templates must not be empty")
        for what, names, vocab in (
            ("size", self.sizes, ATTRIBUTES.sizes),
            ("background", self.backgrounds, ATTRIBUTES.backgrounds),
        ):
            if not names:
                raise ValueError(f"{what}s must name at least one of {', '.join(vocab)}")
            for name in names:
                _check_name(what, name, vocab)
        for colour, shape in self.heldout:
            _check_name("colour", colour, ATTRIBUTES.colours)
            _check_name("shape", shape, ATTRIBUTES.shapes)
        for shape, position in self.heldout_shape_positions:
            _check_name("shape", shape, ATTRIBUTES.shapes)
            _check_name("position", position, ATTRIBUTES.positions)
        if not allowed_triples(self):
            raise ValueError("the held-out pairs exclude every (colour, shape, position)")
        for colour, rgb in ATTRIBUTES.colours.items():
            if all(ATTRIBUTES.backgrounds[b] == rgb for b in self.backgrounds):
                raise ValueError(
                    f"a {colour} object would be invisible on every background of "
                    f"{list(self.backgrounds)}; add another background"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["count_probs"] = list(self.count_probs)
        d["heldout"] = [list(p) for p in self.heldout]
        d["heldout_shape_positions"] = [list(p) for p in self.heldout_shape_positions]
        d["templates"] = list(self.templates)
        d["sizes"] = list(self.sizes)
        d["backgrounds"] = list(self.backgrounds)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SyntheticSpec:
        """Rebuild from ``to_dict()`` output (e.g. summary.json's ``synthetic``)."""
        kw = dict(d)
        for k in ("heldout", "heldout_shape_positions"):
            if k in kw:
                kw[k] = tuple(tuple(p) for p in kw[k])
        for k in ("count_probs", "templates", "sizes", "backgrounds"):
            if k in kw:
                kw[k] = tuple(kw[k])
        return cls(**kw)


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


def _supersample(size: int) -> int:
    """4x for sizes up to 512, 2x at 1024 (a 2048 px canvas at most)."""
    return max(2, min(4, 2048 // size))


def render_attributes(attrs: Mapping[str, Any], size: int) -> Image.Image:
    """Draw a sample from its attributes (as returned by :func:`sample_attributes`).

    Args:
        attrs: needs ``shape``, ``rgb``, ``background_rgb``, ``object_size``, ``centers``.
        size: output side in pixels (8 ... 1024).

    Returns:
        An RGB image of ``size x size``: drawn at 4x (2x at 1024), LANCZOS-downsampled.
    """
    ss = _supersample(size)
    big = size * ss
    canvas = Image.new("RGB", (big, big), tuple(attrs["background_rgb"]))
    draw = ImageDraw.Draw(canvas)
    fill = tuple(attrs["rgb"])
    half = attrs["object_size"] * big / 2
    for cx_f, cy_f in attrs["centers"]:
        cx, cy = cx_f * big, cy_f * big
        x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        shape = attrs["shape"]
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
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


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
            spec's size, count probabilities, held-out pairs and templates.

    Returns:
        ``(image, caption, attributes)``: an RGB ``spec.size`` square PIL image, its caption
        and the dict of :func:`sample_attributes`.
    """
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
        "prompts": [str, ...], "items": heldout_prompts(spec)}``.
    """
    items = heldout_prompts(spec)
    return {
        "pairs": [list(p) for p in spec.heldout],
        "shape_position_pairs": [list(p) for p in spec.heldout_shape_positions],
        "prompts": [it["prompt"] for it in items],
        "items": items,
    }


# ---------------------------------------------------------------------------- writing


def _encode(image: Image.Image, fmt: ImageFormat) -> bytes:
    import io

    buf = io.BytesIO()
    if fmt == "jpg":
        image.save(buf, format="JPEG", quality=95)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def synthetic_sample(spec: SyntheticSpec, index: int) -> ShardSample:
    """Sample ``index`` encoded for :func:`~imagen_ray.data.shards.write_shards`.

    Args:
        spec: the set's settings.
        index: sample number.

    Returns:
        A shard sample with key ``syn-{index:08d}``, source ``synthetic/{index}`` and the
        attributes as json metadata.
    """
    from imagen_ray.data.shards import ShardSample

    image, caption, attrs = render_sample(spec, index)
    return ShardSample(
        key=f"syn-{index:08d}",
        image=_encode(image, spec.image_format),
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
    from imagen_ray.data.shards import write_shards

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
