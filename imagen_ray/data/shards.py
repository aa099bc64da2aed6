"""Writing webdataset shards from image folders, caption tables and generated samples.

Every source goes through one writer, :func:`write_shards`. The format it writes (a contract
with ``imagen_ray.data.reader`` and ``pipeline``):

* ``shard-000000.tar``, ``shard-000001.tar``, ... (``samples_per_shard`` samples each, the
  last one fewer), written with ``webdataset.ShardWriter``; the entries of a sample are
  contiguous and sorted (``KEY.jpg``, ``KEY.json``, ``KEY.txt``).
* per sample: ``__key__`` (only ``[A-Za-z0-9_-]``, no dots, at most 80 characters), one image
  entry holding the original encoded bytes (``jpg``, ``png`` or ``webp``, chosen by the
  decoded format, not the file name; other formats are re-encoded to ``png``), ``txt`` (the
  stripped UTF-8 caption) and ``json`` (``width``, ``height``, ``source`` plus any metadata).
* ``summary.json`` beside the shards: format, version, shard names, sample and skip counts,
  the skipped items with their reasons, a description of the source and the time taken.

Bad input never aborts a run and is never dropped silently: each bad item is skipped with one
of :data:`SKIP_REASONS` and listed in the summary. A run writes into a temporary directory
inside ``out_dir`` and moves its files into place only at the end, so a failed or interrupted
run leaves the previous output as it was; shards of a previous run that the new one does not
produce are deleted. Identical input gives byte-identical shards (sorted folder walks, fixed
tar member mtime/owner/mode, ``json`` with sorted keys).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

SHARD_FORMAT = "imagen-ray/shards"
SHARD_FORMAT_VERSION = 1
SUMMARY_NAME = "summary.json"
SHARD_NAME = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-\d{6,}\.tar$")
MAX_LISTED_SKIPS = 1000
MAX_KEY_CHARS = 80
TAR_MTIME = 0  # fixed tar member mtime: identical input -> byte-identical shards

SKIP_REASONS = (
    "corrupt_image",  # not decodable by PIL (random bytes, truncated file, unreadable file)
    "missing_image",  # table row without image value / file; folder caption without image
    "missing_caption",  # folder image without a same-stem .txt file
    "empty_caption",  # caption empty after stripping (or null in a table)
    "bad_caption",  # caption file is not UTF-8
    "too_small",  # short side below min_size
    "duplicate_key",  # a sample with this key was already written (second one skipped)
)

# Folder images are recognised by suffix; jpg/png/webp keep their bytes, the rest become png.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_KEEP_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
TABLE_SUFFIXES = (".csv", ".parquet", ".jsonl")


@dataclass(frozen=True)
class ShardSample:
    """One sample ready to be written: encoded image bytes, caption and metadata."""

    key: str
    image: bytes
    ext: str  # jpg | png | webp
    caption: str
    width: int
    height: int
    source: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedItem:
    """An input item that was not written, and why (``reason`` is one of SKIP_REASONS)."""

    source: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class ShardWriteSummary:
    """What a :func:`write_shards` run wrote; ``to_dict()`` is the content of summary.json."""

    out_dir: Path
    shards: tuple[str, ...]
    shard_samples: tuple[int, ...]
    samples: int
    samples_per_shard: int
    skipped: dict[str, int]
    skipped_items: tuple[SkippedItem, ...]
    skipped_items_omitted: int
    source: str
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_NAME

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": SHARD_FORMAT,
            "version": SHARD_FORMAT_VERSION,
            "shards": list(self.shards),
            "shard_samples": list(self.shard_samples),
            "samples": self.samples,
            "samples_per_shard": self.samples_per_shard,
            "skipped": dict(self.skipped),
            "skipped_total": self.skipped_total,
            "skipped_items": [s.to_dict() for s in self.skipped_items],
            "skipped_items_omitted": self.skipped_items_omitted,
            "source": self.source,
            "seconds": round(self.seconds, 3),
            **self.extra,
        }

    def one_line(self) -> str:
        """``wrote N samples in S shards to DIR; skipped K (reason n, ...); summary: PATH``."""
        reasons = ", ".join(f"{r} {n}" for r, n in self.skipped.items())
        skipped = f"skipped {self.skipped_total}" + (f" ({reasons})" if reasons else "")
        return (
            f"wrote {self.samples} samples in {len(self.shards)} shard(s) to {self.out_dir}; "
            f"{skipped}; summary: {self.summary_path} ({self.seconds:.1f} s)"
        )


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


def prepare_image(data: bytes) -> tuple[bytes, str, int, int]:
    """Check that encoded bytes are a complete image and choose what to store.

    ``Image.verify()`` catches broken structure; a second open + ``load()`` decodes every
    pixel and so catches truncated files that verify() lets through.

    Args:
        data: the encoded file content.

    Returns:
        ``(bytes, ext, width, height)``: the original bytes for JPEG/PNG/WebP (ext ``jpg``,
        ``png``, ``webp``), otherwise the first frame re-encoded as PNG (ext ``png``).

    Raises:
        ValueError: the bytes are not a decodable image (message names PIL's error).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            width, height = im.size
            if fmt in _KEEP_FORMATS:
                return data, _KEEP_FORMATS[fmt], width, height
            alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            buf = io.BytesIO()
            im.convert("RGBA" if alpha else "RGB").save(buf, format="PNG")
            return buf.getvalue(), "png", width, height
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb...
        raise ValueError(f"{type(e).__name__}: {e}") from e


def image_sample(
    path: Path,
    *,
    key: str,
    caption: str,
    source: str,
    meta: Mapping[str, Any] | None = None,
    min_size: int = 0,
) -> ShardSample | SkippedItem:
    """Read and check one image file; a :class:`SkippedItem` says why it cannot be used.

    Args:
        path: the image file.
        key: the sample key (see :func:`sanitize_key`).
        caption: the caption, already stripped (empty -> ``empty_caption``).
        source: what the summary names the item by (relative path or row id).
        meta: extra json fields (``width``/``height``/``source`` are always set by the writer).
        min_size: skip images whose short side is below this (0: off).

    Returns:
        A sample to write or the reason it was skipped.
    """
    if not caption:
        return SkippedItem(source, "empty_caption", "caption is empty")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return SkippedItem(source, "missing_image", f"no such file: {path}")
    except OSError as e:
        return SkippedItem(source, "corrupt_image", f"cannot read {path}: {e}")
    try:
        data, ext, width, height = prepare_image(data)
    except ValueError as e:
        return SkippedItem(source, "corrupt_image", str(e))
    if min(width, height) < min_size:
        return SkippedItem(source, "too_small", f"{width}x{height} < min_size {min_size}")
    return ShardSample(key, data, ext, caption, width, height, source, dict(meta or {}))


def _jsonable(value: Any) -> Any:
    """NaN -> None, containers recursively, unknown types -> str (table metadata)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _encode(sample: ShardSample) -> dict[str, Any]:
    meta = {
        **{k: _jsonable(v) for k, v in sample.meta.items()},
        "width": sample.width,
        "height": sample.height,
        "source": sample.source,
    }
    return {
        "__key__": sample.key,
        sample.ext: sample.image,
        "txt": sample.caption.encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


# ---------------------------------------------------------------------------- the writer


def write_shards(
    samples: Iterable[ShardSample | SkippedItem],
    out_dir: str | Path,
    *,
    samples_per_shard: int = 1000,
    source: str = "",
    progress: bool = True,
    total: int | None = None,
    extra_summary: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> ShardWriteSummary:
    """Write samples to ``out_dir/shard-*.tar`` + ``summary.json``, replacing a previous run.

    Everything is written into ``out_dir/.tmp-<pid>-<random>`` first; on success the shards,
    ``extra_files`` and (last) ``summary.json`` are moved into ``out_dir``, replacing files of
    the same name, and ``shard-*.tar`` files of an earlier run that this run did not write are
    deleted. On any error the temporary directory is removed and the old output is untouched.

    Args:
        samples: samples and skipped items in output order (a generator is fine).
        out_dir: output directory (created if needed).
        samples_per_shard: samples per tar file (the last one holds the rest).
        source: a description of the input for the summary.
        progress: show a tqdm progress bar.
        total: number of items ``samples`` will yield, for the progress bar.
        extra_summary: more top-level fields for summary.json (e.g. ``synthetic``).
        extra_files: more files to publish beside the shards, name -> content.

    Returns:
        The summary (``.to_dict()`` is what summary.json holds).

    Raises:
        ValueError: ``samples_per_shard`` < 1, or an extra file name clashes with the shards.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if name == SUMMARY_NAME or SHARD_RE.match(name) or "/" in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-", dir=out))
    try:
        shard_counts, skipped = _write_tar_files(
            samples, tmp, samples_per_shard=samples_per_shard, progress=progress, total=total
        )
        counts = Counter(s.reason for s in skipped)
        summary = ShardWriteSummary(
            out_dir=out,
            shards=tuple(shard_counts),
            shard_samples=tuple(shard_counts.values()),
            samples=sum(shard_counts.values()),
            samples_per_shard=samples_per_shard,
            skipped={r: counts[r] for r in sorted(counts)},
            skipped_items=tuple(skipped[:MAX_LISTED_SKIPS]),
            skipped_items_omitted=max(0, len(skipped) - MAX_LISTED_SKIPS),
            source=source,
            seconds=time.perf_counter() - t0,
            extra=dict(extra_summary or {}),
        )
        for name, content in extra_files.items():
            (tmp / name).write_bytes(content)
        text = json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n"
        (tmp / SUMMARY_NAME).write_text(text, encoding="utf-8")
        _publish(tmp, out, [*summary.shards, *extra_files])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary


def _write_tar_files(
    samples: Iterable[ShardSample | SkippedItem],
    tmp: Path,
    *,
    samples_per_shard: int,
    progress: bool,
    total: int | None,
) -> tuple[dict[str, int], list[SkippedItem]]:
    """The ShardWriter loop: returns {shard name: samples} and the skipped items in order."""
    import webdataset as wds  # imports torch: keep it off the import path of this module
    from tqdm import tqdm

    pattern = str(tmp).replace("%", "%%") + "/shard-%06d.tar"
    shard_counts: dict[str, int] = {}
    skipped: list[SkippedItem] = []
    written: set[str] = set()
    bar = tqdm(total=total, desc="writing shards", unit="sample", disable=not progress)
    writer = wds.ShardWriter(
        pattern,
        maxcount=samples_per_shard,
        maxsize=float("inf"),  # split by count only
        verbose=0,
        encoder=False,  # every entry is bytes already
        mtime=TAR_MTIME,
        user="imagen-ray",
        group="imagen-ray",
    )
    try:
        for item in samples:
            if isinstance(item, ShardSample) and item.key in written:
                item = SkippedItem(item.source, "duplicate_key", f"key {item.key!r} was written")
            if isinstance(item, SkippedItem):
                skipped.append(item)
            else:
                writer.write(_encode(item))
                written.add(item.key)
                name = Path(writer.fname).name
                shard_counts[name] = shard_counts.get(name, 0) + 1
            bar.update(1)
            if skipped:
                bar.set_postfix(skipped=len(skipped), refresh=False)
    finally:
        writer.close()
        bar.close()
    for f in tmp.iterdir():  # ShardWriter opens shard 0 before the first sample arrives
        if SHARD_RE.match(f.name) and f.name not in shard_counts:
            f.unlink()
    return shard_counts, skipped


def _publish(tmp: Path, out: Path, names: list[str]) -> None:
    """Move a finished run into place; summary.json last, stale shards deleted."""
    for name in names:
        os.replace(tmp / name, out / name)
    keep = set(names)
    for f in out.iterdir():
        if SHARD_RE.match(f.name) and f.name not in keep:
            f.unlink()
    os.replace(tmp / SUMMARY_NAME, out / SUMMARY_NAME)


def read_summary(out_dir: str | Path) -> dict[str, Any]:
    """Load and check ``summary.json`` of a shard directory.

    Args:
        out_dir: a directory written by :func:`write_shards`.

    Returns:
        The summary dict (``shards`` lists the tar files in order).

    Raises:
        FileNotFoundError: no summary.json there.
        ValueError: the file is not an imagen-ray shard summary of a known version.
    """
    path = Path(out_dir) / SUMMARY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not a shard directory?)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path} is not an {SHARD_FORMAT} summary")
    if data.get("version") != SHARD_FORMAT_VERSION:
        raise ValueError(
            f"{path} has shard format version {data.get('version')}, this imagen-ray reads "
            f"version {SHARD_FORMAT_VERSION}"
        )
    return data


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
