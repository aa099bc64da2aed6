"""Shards from image folders and caption tables (``imagen-ray data shards``).

Each source turns its items into :class:`~imagen_ray.data.writer.ShardSample` or
:class:`~imagen_ray.data.writer.SkippedItem` and hands them to the one shard writer,
:func:`~imagen_ray.data.writer.write_shards` (which owns the format, ``summary.json`` and
the atomic publish). Here: key sanitising, the image check (decodable, original bytes kept
for JPEG/PNG/WebP, others re-encoded to PNG), the folder walk (sorted, hidden entries
ignored) and the table readers (CSV, JSONL, Parquet).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from imagen_ray.data.hygiene import (
    DEFAULT_MAX_PIXELS,
    open_checked,
    oriented_size,
    to_rgb,
)
from imagen_ray.data.writer import ShardSample, ShardWriteSummary, SkippedItem, write_shards
from imagen_ray.images import formats_for

__all__ = [
    "IMAGE_SUFFIXES",
    "TABLE_SUFFIXES",
    "ImageRejected",
    "image_sample",
    "prepare_image",
    "read_table",
    "sanitize_key",
    "write_folder_shards",
    "write_table_shards",
]

MAX_KEY_CHARS = 80

# Folder images are recognised by suffix; jpg/png/webp keep their bytes, the rest become png.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_KEEP_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
_SOURCE_FORMATS = formats_for([s.lstrip(".") for s in IMAGE_SUFFIXES])


class ImageRejected(ValueError):
    """Bytes that are not a usable image; ``reason`` is a writer skip reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")

# ---------------------------------------------------------------------------- helpers


def sanitize_key(text: str) -> str:
    """A webdataset key from a path or id: runs of other characters become ``_``.

    Args:
        text: a relative path without extension (``a/b/cat``) or a row id.

    Returns:
        ``[A-Za-z0-9_-]+`` without leading/trailing ``_`` (``a_b_cat``); keys over 80
        characters are cut and suffixed with a hash of the full text so they stay unique.
    """
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    if not key or len(key) > MAX_KEY_CHARS:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]
        key = f"{key[: MAX_KEY_CHARS - 17]}-{digest}" if key else f"k-{digest}"
    return key


def prepare_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[bytes, str, int, int]:
    """Check that encoded bytes are a complete image and choose what to store.

    The header goes through the training pipeline's checks first
    (:func:`imagen_ray.data.hygiene.open_checked`: formats of :data:`IMAGE_SUFFIXES`,
    ``max_pixels``), so nothing is decoded that training would refuse. Then
    ``Image.verify()`` catches broken structure and a second open + ``load()`` decodes every
    pixel, catching truncated files that verify() lets through.

    Args:
        data: the encoded file content.
        max_pixels: most ``width * height`` accepted (from the header).

    Returns:
        ``(bytes, ext, width, height)``: the original bytes for JPEG/PNG/WebP (ext ``jpg``,
        ``png``, ``webp``), otherwise the first frame as 8-bit RGB(A), upright, re-encoded
        as PNG (ext ``png``). Width and height are those after the EXIF orientation.

    Raises:
        ImageRejected: ``corrupt_image``, ``wrong_format`` or ``too_many_pixels``.
    """
    checked = open_checked(data, formats=_SOURCE_FORMATS, max_pixels=max_pixels)
    if isinstance(checked, str):
        reason = "corrupt_image" if checked == "decode_error" else checked
        raise ImageRejected(reason, "refused from the header, not decoded")
    checked.close()
    try:
        with Image.open(io.BytesIO(data), formats=list(_SOURCE_FORMATS)) as im:
            fmt = im.format or ""
            im.verify()
        with Image.open(io.BytesIO(data), formats=list(_SOURCE_FORMATS)) as im:
            im.load()
            width, height = oriented_size(im)
            if fmt in _KEEP_FORMATS:
                return data, _KEEP_FORMATS[fmt], width, height
            buf = io.BytesIO()
            to_rgb(im, keep_alpha=True).save(buf, format="PNG")
            return buf.getvalue(), "png", width, height
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        raise ImageRejected("corrupt_image", f"{type(e).__name__}: {e}") from e


def image_sample(
    path: Path,
    *,
    key: str,
    caption: str,
    source: str,
    meta: Mapping[str, Any] | None = None,
    min_size: int = 0,
    data: bytes | None = None,
) -> ShardSample | SkippedItem:
    """Read and check one image file; a :class:`SkippedItem` says why it cannot be used.

    Args:
        path: the image file.
        key: the sample key (see :func:`sanitize_key`).
        caption: the caption, already stripped (empty -> ``empty_caption``).
        source: what the summary names the item by (relative path or row id).
        meta: extra json fields (``width``/``height``/``source`` are always set by the writer).
        min_size: skip images whose short side is below this (0: off).
        data: the image bytes, when they do not come from a file (``path`` then only
            names it).

    Returns:
        A sample to write or the reason it was skipped.
    """
    if not caption:
        return SkippedItem(source, "empty_caption", "caption is empty")
    if data is None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return SkippedItem(source, "missing_image", f"no such file: {path}")
        except OSError as e:
            return SkippedItem(source, "corrupt_image", f"cannot read {path}: {e}")
    try:
        data, ext, width, height = prepare_image(data)
    except ImageRejected as e:
        return SkippedItem(source, e.reason, str(e))
    if min(width, height) < min_size:
        return SkippedItem(source, "too_small", f"{width}x{height} < min_size {min_size}")
    return ShardSample(key, data, ext, caption, width, height, source, dict(meta or {}))


# ---------------------------------------------------------------------------- folders


def _list_folder(root: Path) -> list[tuple[str, str]]:
    """Sorted ``(kind, relative posix path)`` items: ``image`` files and ``orphan`` captions.

    Hidden files and directories (``.name``, e.g. this writer's own ``.tmp-*``) are ignored.
    """
    items: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [n for n in filenames if not n.startswith(".")]
        stems = {os.path.splitext(n)[0] for n in names if n.lower().endswith(IMAGE_SUFFIXES)}
        rel_dir = Path(dirpath).relative_to(root)
        for n in names:
            stem, suffix = os.path.splitext(n)
            if suffix.lower() in IMAGE_SUFFIXES:
                items.append(("image", (rel_dir / n).as_posix()))
            elif suffix == ".txt" and stem not in stems:
                items.append(("orphan", (rel_dir / n).as_posix()))
    return sorted(items, key=lambda it: it[1])


def _folder_item(root: Path, kind: str, rel: str, min_size: int) -> ShardSample | SkippedItem:
    if kind == "orphan":
        return SkippedItem(rel, "missing_image", "caption file without a same-stem image")
    stem = os.path.splitext(rel)[0]
    cap_path = root / f"{stem}.txt"
    if not cap_path.is_file():
        return SkippedItem(rel, "missing_caption", f"no caption file {stem}.txt")
    try:
        caption = cap_path.read_bytes().decode("utf-8-sig").strip()
    except UnicodeDecodeError as e:
        return SkippedItem(rel, "bad_caption", f"{stem}.txt is not UTF-8: {e}")
    except OSError as e:
        return SkippedItem(rel, "bad_caption", f"cannot read {stem}.txt: {e}")
    return image_sample(
        root / rel, key=sanitize_key(stem), caption=caption, source=rel, min_size=min_size
    )


def write_folder_shards(
    root: str | Path,
    out_dir: str | Path,
    *,
    samples_per_shard: int = 1000,
    min_size: int = 0,
    progress: bool = True,
) -> ShardWriteSummary:
    """Shards from a folder tree of images with same-stem captions (``a/b/cat.jpg`` + ``.txt``).

    Keys are the sanitised relative paths without extension (``a/b/cat`` -> ``a_b_cat``);
    json ``source`` is the relative image path. Files are visited in sorted path order.

    Args:
        root: the folder to walk (recursively; hidden entries ignored).
        out_dir: the shard directory.
        samples_per_shard: samples per tar file.
        min_size: skip images whose short side is smaller (0: off).
        progress: show a progress bar.

    Returns:
        The write summary.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist or is not a directory")
    items = _list_folder(root)
    return write_shards(
        (_folder_item(root, kind, rel, min_size) for kind, rel in items),
        out_dir,
        samples_per_shard=samples_per_shard,
        source=f"folder {root}",
        progress=progress,
        total=len(items),
    )


# ---------------------------------------------------------------------------- tables


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV (all values strings), JSONL (one object a line) or Parquet table.

    Args:
        path: ``.csv``, ``.jsonl`` or ``.parquet`` file.

    Returns:
        One dict per row; missing values are ``None``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: unknown extension or a JSONL line that is not a JSON object.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"table {p} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        with p.open(newline="", encoding="utf-8-sig") as f:
            return [
                {k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)
            ]
    if suffix == ".jsonl":
        rows = []
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{i}: not valid JSON ({e})") from e
            if not isinstance(row, dict):
                raise ValueError(f"{p}:{i}: expected a JSON object per line, got {row!r:.60}")
            rows.append(row)
        return rows
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(p).to_pylist())
    raise ValueError(f"table {p}: unknown extension {suffix!r}; use one of {TABLE_SUFFIXES}")


def _table_item(
    row: Mapping[str, Any],
    index: int,
    base: Path,
    *,
    image_column: str,
    caption_column: str,
    id_column: str,
    min_size: int,
) -> ShardSample | SkippedItem:
    image_value = row.get(image_column)
    image_str = "" if image_value is None else str(image_value).strip()
    row_id = row.get(id_column)
    has_id = row_id is not None and str(row_id).strip() != ""
    source = str(row_id) if has_id else (image_str or f"row {index}")
    if not image_str:
        return SkippedItem(source, "missing_image", f"row {index}: no {image_column!r} value")
    caption_value = row.get(caption_column)
    caption = "" if caption_value is None else str(caption_value).strip()
    image_path = Path(image_str)
    key = sanitize_key(str(row_id) if has_id else os.path.splitext(image_str)[0])
    meta = {k: v for k, v in row.items() if k not in (image_column, caption_column)}
    return image_sample(
        image_path if image_path.is_absolute() else base / image_path,
        key=key,
        caption=caption,
        source=source,
        meta=meta,
        min_size=min_size,
    )


def write_table_shards(
    table: str | Path,
    out_dir: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str = "id",
    samples_per_shard: int = 1000,
    min_size: int = 0,
    progress: bool = True,
) -> ShardWriteSummary:
    """Shards from a CSV / JSONL / Parquet table of image paths and captions.

    Relative image paths resolve against the table's directory. Keys are the sanitised
    ``id_column`` value when the table has one, else the sanitised image path without
    extension (so one image listed twice needs ids, or its second row is a ``duplicate_key``).
    json ``source`` is the id (or the image path as written in the table); every column other
    than the image and caption columns is kept in the json (``width``/``height``/``source``
    win over columns of the same name).

    Args:
        table: the table file (format from the extension).
        out_dir: the shard directory.
        image_column: column of image paths.
        caption_column: column of captions.
        id_column: optional column of unique row ids used for keys.
        samples_per_shard: samples per tar file.
        min_size: skip images whose short side is smaller (0: off).
        progress: show a progress bar.

    Returns:
        The write summary.

    Raises:
        FileNotFoundError: the table does not exist.
        ValueError: unreadable table, or the image/caption column is absent.
    """
    table = Path(table)
    rows = read_table(table)
    columns: set[str] = set().union(*(r.keys() for r in rows)) if rows else set()
    for what, col in (("image", image_column), ("caption", caption_column)):
        if rows and col not in columns:
            raise ValueError(
                f"table {table} has no {what} column {col!r}; its columns are "
                f"{sorted(columns)} (choose with --{what}-column)"
            )
    base = table.resolve().parent
    return write_shards(
        (
            _table_item(
                row,
                i,
                base,
                image_column=image_column,
                caption_column=caption_column,
                id_column=id_column,
                min_size=min_size,
            )
            for i, row in enumerate(rows)
        ),
        out_dir,
        samples_per_shard=samples_per_shard,
        source=f"table {table}",
        progress=progress,
        total=len(rows),
    )
