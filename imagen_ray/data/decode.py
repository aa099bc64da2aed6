"""Per-sample decode, filter, resize and crop: the ``map_batches`` step of the pipeline.

:func:`decode_filter_resize` turns raw shard rows (reader output) into fixed-size uint8
images (plus the SR stage's low-res input and, for precomputed shards, the stored text
embeddings), counting each dropped sample under one skip reason. Pure functions of the
batch and the configs: no Ray at import time, so decode workers stay light.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from imagen_ray.config import DataConfig, StageConfig
from imagen_ray.config.grammar import JSON_ENTRY, JSON_PREFIX, MetadataFilter, parse_filter
from imagen_ray.data.encoding import EMBEDDING_ENTRY, load_embedding
from imagen_ray.data.epochs import EPOCH_COLUMN
from imagen_ray.data.hygiene import (
    DECODE_ERROR,
    open_checked,
    to_rgb,
)
from imagen_ray.data.metadata import (
    caption_from_json,
    first_failing,
    parse_json_entry,
)
from imagen_ray.data.reader import ERROR_COLUMN, KEY_COLUMN
from imagen_ray.images import formats_for, resize_crop

# Skip reasons (and ``ok``) counted by the pipeline's stats actor; the filters' own are
# ``filter:FIELD<OP>VALUE`` (see imagen_ray.config.grammar).
OK = "ok"
__all__ = [
    "BAD_ASPECT",
    "BAD_EMBEDDING",
    "CAPTION_LENGTH",
    "NO_CAPTION",
    "NO_EMBEDDING",
    "NO_IMAGE",
    "OK",
    "TOO_SMALL",
    "aligned_crop",
    "batch_or_empty_block",
    "decode_filter_resize",
    "resize_crop",
]
NO_IMAGE = "no_image"
NO_CAPTION = "no_caption"
CAPTION_LENGTH = "caption_length"
TOO_SMALL = "too_small"
BAD_ASPECT = "bad_aspect"
NO_EMBEDDING = "no_embedding"
BAD_EMBEDDING = "bad_embedding"


def _rng_for(seed: int, key: str, epoch: int = 0) -> np.random.Generator:
    """Per-sample RNG from (seed, epoch, key): reproducible across processes (no ``hash()``)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, int.from_bytes(digest, "little")])


def aligned_crop(
    image: np.ndarray, lowres: np.ndarray, crop: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A random ``crop`` px square of ``image`` and the low-res crop pixel-aligned with it.

    Imagen trains its 256 -> 1024 stage on 256 px crops of the 1024 px image with the
    matching 64 px crop of the 256 px input. The offset is drawn on the low-res grid and
    scaled by the factor ``S / s``, so the low-res crop covers exactly the area of the crop.

    Args:
        image: (S, S, C) full-size image.
        lowres: (s, s, C) low-res image; ``S`` a multiple of ``s``.
        crop: crop side in pixels, a multiple of ``S / s`` and <= ``S``.
        rng: draws the offset (one draw per axis).

    Returns:
        ``(image[y:y+crop, x:x+crop], lowres[y/f:(y+crop)/f, x/f:(x+crop)/f])`` with
        ``f = S / s``: (crop, crop, C) and (crop/f, crop/f, C).
    """
    size, small = image.shape[0], lowres.shape[0]
    factor = size // small
    if factor * small != size or crop % factor or not 0 < crop <= size:
        raise ValueError(
            f"crop {crop} of a {size} px image with a {small} px low-res input must be <= "
            f"{size} and a multiple of {size}/{small}"
        )
    c = crop // factor  # low-res crop side
    top, left = (int(v) for v in rng.integers(0, small - c + 1, size=2))  # low-res grid
    y, x = top * factor, left * factor
    return (
        image[y : y + crop, x : x + crop],
        lowres[top : top + c, left : left + c],
    )


def _decode_image(
    raw: bytes,
    data: DataConfig,
    formats: tuple[str, ...],
    size: int,
    rng: np.random.Generator | None = None,
) -> Image.Image | str:
    """Check the header, filter by size/aspect, decode, resize, crop: a square or a reason."""
    opened = open_checked(
        raw, formats=formats, max_pixels=data.max_pixels, max_bytes=data.max_member_bytes
    )
    if isinstance(opened, str):
        return opened
    img: Image.Image = opened
    w, h = img.size  # from the header, before any pixel is decoded
    if min(w, h) < data.min_size:
        return TOO_SMALL
    if max(w, h) / max(1, min(w, h)) > data.max_aspect:
        return BAD_ASPECT
    try:
        # JPEG: let the decoder downscale by 1/2..1/8 in the DCT (never below `size`).
        img.draft("RGB", (size, size))
        img = to_rgb(img, data.background)
        return resize_crop(img, size, crop=data.crop, rng=rng)
    except Exception:
        return DECODE_ERROR


def decode_filter_resize(
    batch: pa.Table,
    *,
    data_cfg: dict[str, Any],
    stage_cfg: dict[str, Any],
    precomputed: bool = False,
    emb_shape: tuple[int, int] | None = None,
    stats: Any = None,
    columns: Sequence[str] | None = None,
) -> dict[str, np.ndarray] | pa.Table:
    """One ``map_batches`` step: raw shard rows -> decoded, filtered, resized samples.

    Checks run cheapest first: reader error rows (``member_too_large`` among them), image
    present, the ``json`` entry parses when ``data.filters`` or a ``json:`` caption key
    need it (``no_json``/``bad_json``), ``data.filters`` (``filter:...``), caption
    present (``data.caption_key``) and of allowed length (after strip), the ``text.npz``
    entry (precomputed mode), image bytes <= ``max_member_bytes``, the header of a format
    named by ``data.image_keys`` (``wrong_format``), pixels <= ``max_pixels``
    (``too_many_pixels``), short side >= ``min_size``, long/short <= ``max_aspect``, pixels
    decode; each failure counts one skip reason. Decoded images go through
    :func:`imagen_ray.data.hygiene.to_rgb` (EXIF orientation, 16-bit, CMYK, alpha). Then
    the short side is resized to ``stage.size`` (Lanczos) and a square cropped (center,
    or random with an RNG seeded from ``(data.seed, epoch, key)``: reproducible, and new each
    epoch; ``__epoch__`` is set by :mod:`imagen_ray.data.epochs`, 0 without it). SR stages
    also get the low-res conditioning image: the crop downsampled (bicubic, antialiased) to
    ``lowres_size``; the U-Net upsamples it itself (``unet.network.upsample_to``). With
    ``data.train_crop`` (SR only) both are then cut to a random ``train_crop`` px crop and
    its pixel-aligned low-res crop (:func:`aligned_crop`, offset from the same RNG).

    Args:
        batch: reader rows (``__key__``, ``__error__``, one binary column per extension,
            optionally ``__epoch__``).
        data_cfg: ``DataConfig.model_dump()``.
        stage_cfg: ``StageConfig.model_dump()``.
        precomputed: read ``emb``/``mask`` from each sample's ``text.npz``.
        emb_shape: expected (L, D) of precomputed embeddings (others are ``bad_embedding``).
        stats: a :class:`PipelineStats` actor handle; counts are sent fire-and-forget.
        columns: output columns to keep (default all).

    Returns:
        Columns ``__key__`` (B,) str, ``caption`` (B,) str, ``image`` (B, S, S, 3) uint8,
        for SR ``lowres`` (B, s, s, 3) uint8 (with ``train_crop`` C: (B, C, C, 3) and
        (B, C*s/S, C*s/S, 3)), and when precomputed ``emb`` (B, L, D) float16
        and ``mask`` (B, L) bool; an empty Arrow table of that schema when no row survives.
    """
    plan = _Plan.build(data_cfg, stage_cfg, precomputed=precomputed, emb_shape=emb_shape)
    counts: Counter[str] = Counter()
    kept = _Kept()
    for sample in _samples(batch, plan):
        reason = _first_skip(sample, plan)
        if reason is not None:
            counts[reason] += 1
            continue
        counts[OK] += 1
        kept.add(sample, plan)
    if stats is not None and counts:
        stats.add.remote(dict(counts))
    return batch_or_empty_block(kept.columns(plan, columns))


@dataclass(frozen=True)
class _Plan:
    """What each sample of a batch is checked and cut against: the configs, read once."""

    data: DataConfig
    size: int  # the stage's image side
    lowres_size: int | None  # SR stages: the low-res input's side
    crop: int | None  # SR stages: data.train_crop
    filters: tuple[MetadataFilter, ...]
    json_caption: bool  # data.caption_key names a field of the json entry
    formats: tuple[str, ...]
    precomputed: bool
    emb_shape: tuple[int, int] | None

    @classmethod
    def build(
        cls,
        data_cfg: dict[str, Any],
        stage_cfg: dict[str, Any],
        *,
        precomputed: bool,
        emb_shape: tuple[int, int] | None,
    ) -> _Plan:
        data = DataConfig.model_validate(data_cfg)
        stage = StageConfig.model_validate(stage_cfg)
        return cls(
            data=data,
            size=stage.size,
            lowres_size=stage.lowres_size,
            crop=data.train_crop if stage.lowres_size is not None else None,
            filters=tuple(parse_filter(f) for f in data.filters),
            json_caption=data.caption_key.startswith(JSON_PREFIX),
            formats=formats_for(data.image_keys),
            precomputed=precomputed,
            emb_shape=emb_shape,
        )

    @property
    def needs_json(self) -> bool:
        return self.json_caption or bool(self.filters)

    @property
    def needs_rng(self) -> bool:
        return self.data.crop == "random" or self.crop is not None


@dataclass
class _Sample:
    """One reader row on its way through the steps; each step fills in what later ones use."""

    key: str
    epoch: int | None
    error: str | None  # the reader's skip reason (e.g. member_too_large)
    image_entries: list[bytes | None]  # one per data.image_keys column present
    json_entry: bytes | None
    caption_entry: bytes | None
    embedding_entry: bytes | None
    raw: bytes = b""  # the image's bytes
    meta: dict[str, Any] = field(default_factory=dict)  # the parsed json entry
    caption: str = ""
    emb: np.ndarray | None = None  # (L, D)
    mask: np.ndarray | None = None  # (L,)
    rng: np.random.Generator | None = None
    image: Image.Image | None = None  # the decoded size x size square


def _samples(batch: pa.Table, plan: _Plan) -> Iterator[_Sample]:
    """The batch's rows, reading only the columns the plan's steps use."""
    n = batch.num_rows
    cols = set(batch.column_names)

    def column(name: str) -> list[Any]:
        return batch.column(name).to_pylist() if name in cols else [None] * n

    keys = column(KEY_COLUMN)
    epochs = column(EPOCH_COLUMN)
    errors = column(ERROR_COLUMN)
    metas = column(JSON_ENTRY) if plan.needs_json else [None] * n
    captions = [None] * n if plan.json_caption else column(plan.data.caption_key)
    embeddings = column(EMBEDDING_ENTRY) if plan.precomputed else [None] * n
    image_cols = [column(k) for k in plan.data.image_keys if k in cols]
    for i in range(n):
        entries = [c[i] for c in image_cols]
        yield _Sample(keys[i], epochs[i], errors[i], entries, metas[i], captions[i], embeddings[i])


# The per-sample steps, cheapest first. Each returns the skip reason it owns, or None to
# pass the sample on.


def _reader_error(s: _Sample, plan: _Plan) -> str | None:
    """The reader's own reason for the row (``member_too_large`` among them)."""
    return s.error or None


def _has_image(s: _Sample, plan: _Plan) -> str | None:
    """``no_image``: none of ``data.image_keys`` is in the sample."""
    raw = next((entry for entry in s.image_entries if entry is not None), None)
    if raw is None:
        return NO_IMAGE
    s.raw = raw
    return None


def _json_entry(s: _Sample, plan: _Plan) -> str | None:
    """``no_json`` / ``bad_json``, when filters or a ``json:`` caption key need the entry."""
    if not plan.needs_json:
        return None
    meta = parse_json_entry(s.json_entry)
    if isinstance(meta, str):
        return meta
    s.meta = meta
    return None


def _metadata_filters(s: _Sample, plan: _Plan) -> str | None:
    """``filter:FIELD<OP>VALUE``: the first of ``data.filters`` the json entry fails."""
    return first_failing(plan.filters, s.meta) if plan.needs_json else None


def _has_caption(s: _Sample, plan: _Plan) -> str | None:
    """``no_caption``: nothing at ``data.caption_key`` (an entry, or a json field)."""
    text = caption_from_json(s.meta, plan.data.caption_key) if plan.json_caption else None
    if s.caption_entry is not None:
        text = s.caption_entry.decode("utf-8", errors="replace")
    if text is None:
        return NO_CAPTION
    s.caption = text.strip()
    return None


def _caption_length(s: _Sample, plan: _Plan) -> str | None:
    """``caption_length``: the stripped caption is outside the allowed length."""
    if not plan.data.caption_min_chars <= len(s.caption) <= plan.data.caption_max_chars:
        return CAPTION_LENGTH
    return None


def _embedding(s: _Sample, plan: _Plan) -> str | None:
    """``no_embedding`` / ``bad_embedding`` for precomputed shards' ``text.npz`` entry."""
    if not plan.precomputed:
        return None
    if s.embedding_entry is None:
        return NO_EMBEDDING
    try:
        s.emb, s.mask = load_embedding(s.embedding_entry, plan.emb_shape)
    except Exception:
        return BAD_EMBEDDING
    return None


def _decode(s: _Sample, plan: _Plan) -> str | None:
    """The image's reasons (:func:`_decode_image`): header, size and aspect checks, decode."""
    # One RNG per sample, seeded from (data.seed, epoch, key): the square crop draws
    # first, then the training crop.
    if plan.needs_rng:
        s.rng = _rng_for(plan.data.seed, s.key, s.epoch or 0)
    img = _decode_image(s.raw, plan.data, plan.formats, plan.size, s.rng)
    if isinstance(img, str):
        return img
    s.image = img
    return None


_STEPS: tuple[Callable[[_Sample, _Plan], str | None], ...] = (
    _reader_error,
    _has_image,
    _json_entry,
    _metadata_filters,
    _has_caption,
    _caption_length,
    _embedding,
    _decode,
)


def _first_skip(s: _Sample, plan: _Plan) -> str | None:
    """The sample through :data:`_STEPS` in order: the first skip reason, or None to keep it."""
    for step in _STEPS:
        reason = step(s, plan)
        if reason is not None:
            return reason
    return None


@dataclass
class _Kept:
    """The output columns of the samples that passed every step."""

    keys: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    lowres: list[np.ndarray] = field(default_factory=list)
    embs: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def add(self, s: _Sample, plan: _Plan) -> None:
        """The sample's pixels, with the SR stage's low-res input and training crop."""
        assert s.image is not None
        self.keys.append(s.key)
        self.captions.append(s.caption)
        pixels = np.asarray(s.image, dtype=np.uint8)  # (S, S, 3)
        if plan.lowres_size is not None:
            small = s.image.resize((plan.lowres_size, plan.lowres_size), Image.Resampling.BICUBIC)
            small_pixels = np.asarray(small, dtype=np.uint8)  # (s, s, 3)
            if plan.crop is not None and s.rng is not None:
                pixels, small_pixels = aligned_crop(pixels, small_pixels, plan.crop, s.rng)
            self.lowres.append(small_pixels)  # (s, s, 3) or (crop/f, crop/f, 3)
        self.images.append(pixels)
        if plan.precomputed:
            assert s.emb is not None and s.mask is not None
            self.embs.append(s.emb)
            self.masks.append(s.mask)

    def columns(self, plan: _Plan, keep: Sequence[str] | None) -> dict[str, np.ndarray]:
        """Stacked columns (empty ones keep their shapes), only ``keep`` when given."""
        size, lowres_size, crop = plan.size, plan.lowres_size, plan.crop
        out_size = crop or size  # SR crop training: images are train_crop px
        out_lowres = crop * lowres_size // size if crop and lowres_size else lowres_size
        out: dict[str, np.ndarray] = {
            KEY_COLUMN: np.array(self.keys, dtype=object),
            "caption": np.array(self.captions, dtype=object),
            "image": _stack(self.images, (out_size, out_size, 3), np.uint8),
        }
        if out_lowres is not None:
            out["lowres"] = _stack(self.lowres, (out_lowres, out_lowres, 3), np.uint8)
        if plan.precomputed:
            length, dim = plan.emb_shape if plan.emb_shape is not None else (0, 0)
            out["emb"] = _stack(self.embs, (length, dim), np.float16)
            out["mask"] = _stack(self.masks, (length,), np.bool_)
        if keep is not None:
            out = {k: v for k, v in out.items() if k in keep}
        return out


def _stack(arrays: list[np.ndarray], shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Stack to (B, *shape); an empty (0, *shape) array when nothing survived."""
    if not arrays:
        return np.zeros((0, *shape), dtype=dtype)
    return np.stack(arrays).astype(dtype, copy=False)


def batch_or_empty_block(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray] | pa.Table:
    """The batch itself, or for zero rows an empty Arrow table with the right schema.

    Ray cannot infer a tensor type from a (0, ...) array (it falls back to pickled objects,
    and strings to the null type); a one-row table sliced to zero rows keeps the schema.
    """
    if len(next(iter(columns.values()))):
        return columns
    from ray.data.block import BlockAccessor

    one = {
        k: np.array([""], dtype=object)
        if v.dtype == object
        else np.zeros((1, *v.shape[1:]), v.dtype)
        for k, v in columns.items()
    }
    table: pa.Table = BlockAccessor.batch_to_block(one).slice(0, 0)
    return table
