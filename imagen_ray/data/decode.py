"""Per-sample decode, filter, resize and crop: the ``map_batches`` step of the pipeline.

:func:`decode_filter_resize` turns raw shard rows (reader output) into fixed-size uint8
images (plus the SR stage's low-res input and, for precomputed shards, the stored text
embeddings), counting each dropped sample under one skip reason. Pure functions of the
batch and the configs: no Ray at import time, so decode workers stay light.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from imagen_ray.config import DataConfig, StageConfig
from imagen_ray.config.grammar import JSON_ENTRY, JSON_PREFIX, parse_filter
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
from imagen_ray.images import formats_for

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


def resize_crop(
    img: Image.Image, size: int, *, crop: str = "center", rng: np.random.Generator | None = None
) -> Image.Image:
    """Resize the short side to ``size`` (Lanczos, antialiased) and crop a square.

    Done in one ``resize`` with a source box: the square crop of side ``min(w, h)`` is taken
    in source coordinates, which equals resize-then-crop but filters fewer pixels.

    Args:
        img: any PIL image (already RGB).
        size: output side in pixels.
        crop: ``center`` or ``random`` (offset drawn from ``rng``).
        rng: required for random crops.

    Returns:
        A ``size x size`` RGB image.
    """
    w, h = img.size
    side = min(w, h)
    if crop == "random":
        if rng is None:
            raise ValueError("crop='random' needs an rng")
        left, top = float(rng.integers(0, w - side + 1)), float(rng.integers(0, h - side + 1))
    else:
        left, top = (w - side) / 2, (h - side) / 2
    box = (left, top, left + side, top + side)
    return img.resize((size, size), Image.Resampling.LANCZOS, box=box)


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
    data = DataConfig.model_validate(data_cfg)
    stage = StageConfig.model_validate(stage_cfg)
    size, lowres_size = stage.size, stage.lowres_size
    crop = data.train_crop if lowres_size is not None else None
    needs_rng = data.crop == "random" or crop is not None
    out_size = crop or size  # SR crop training: images are train_crop px
    out_lowres = crop * lowres_size // size if crop and lowres_size else lowres_size
    n = batch.num_rows
    cols = set(batch.column_names)

    def column(name: str) -> list[Any]:
        return batch.column(name).to_pylist() if name in cols else [None] * n

    keys = column(KEY_COLUMN)
    epochs = column(EPOCH_COLUMN)
    errors = column(ERROR_COLUMN)
    filters = tuple(parse_filter(f) for f in data.filters)
    json_caption = data.caption_key.startswith(JSON_PREFIX)
    needs_json = json_caption or bool(filters)
    metas = column(JSON_ENTRY) if needs_json else [None] * n
    captions_raw: list[Any] = [None] * n if json_caption else column(data.caption_key)
    formats = formats_for(data.image_keys)
    embeddings_raw = column(EMBEDDING_ENTRY) if precomputed else [None] * n
    image_cols = [column(k) for k in data.image_keys if k in cols]

    counts: Counter[str] = Counter()
    out_keys: list[str] = []
    out_captions: list[str] = []
    images: list[np.ndarray] = []
    lowres: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i in range(n):
        if errors[i]:
            counts[errors[i]] += 1
            continue
        raw = next((c[i] for c in image_cols if c[i] is not None), None)
        if raw is None:
            counts[NO_IMAGE] += 1
            continue
        caption_text: str | None = None
        if needs_json:
            meta = parse_json_entry(metas[i])
            if isinstance(meta, str):
                counts[meta] += 1
                continue
            failed = first_failing(filters, meta)
            if failed is not None:
                counts[failed] += 1
                continue
            if json_caption:
                caption_text = caption_from_json(meta, data.caption_key)
        raw_caption = captions_raw[i]
        if raw_caption is not None:
            caption_text = raw_caption.decode("utf-8", errors="replace")
        if caption_text is None:
            counts[NO_CAPTION] += 1
            continue
        caption = caption_text.strip()
        if not data.caption_min_chars <= len(caption) <= data.caption_max_chars:
            counts[CAPTION_LENGTH] += 1
            continue
        if precomputed:
            npz = embeddings_raw[i]
            if npz is None:
                counts[NO_EMBEDDING] += 1
                continue
            try:
                emb, mask = load_embedding(npz, emb_shape)
            except Exception:
                counts[BAD_EMBEDDING] += 1
                continue
        # One RNG per sample, seeded from (data.seed, epoch, key): the square crop draws
        # first, then the training crop.
        rng = _rng_for(data.seed, keys[i], epochs[i] or 0) if needs_rng else None
        img = _decode_image(raw, data, formats, size, rng)
        if isinstance(img, str):
            counts[img] += 1
            continue
        counts[OK] += 1
        out_keys.append(keys[i])
        out_captions.append(caption)
        pixels = np.asarray(img, dtype=np.uint8)  # (S, S, 3)
        if lowres_size is not None:
            small = img.resize((lowres_size, lowres_size), Image.Resampling.BICUBIC)
            small_pixels = np.asarray(small, dtype=np.uint8)  # (s, s, 3)
            if crop is not None and rng is not None:
                pixels, small_pixels = aligned_crop(pixels, small_pixels, crop, rng)
            lowres.append(small_pixels)  # (s, s, 3) or (crop/f, crop/f, 3)
        images.append(pixels)
        if precomputed:
            embs.append(emb)
            masks.append(mask)

    if stats is not None and counts:
        stats.add.remote(dict(counts))
    out: dict[str, np.ndarray] = {
        KEY_COLUMN: np.array(out_keys, dtype=object),
        "caption": np.array(out_captions, dtype=object),
        "image": _stack(images, (out_size, out_size, 3), np.uint8),
    }
    if out_lowres is not None:
        out["lowres"] = _stack(lowres, (out_lowres, out_lowres, 3), np.uint8)
    if precomputed:
        length, dim = emb_shape if emb_shape is not None else (0, 0)
        out["emb"] = _stack(embs, (length, dim), np.float16)
        out["mask"] = _stack(masks, (length,), np.bool_)
    if columns is not None:
        out = {k: v for k, v in out.items() if k in columns}
    return batch_or_empty_block(out)


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
