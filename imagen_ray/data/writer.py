"""The shard format and its one writer: ``shard-*.tar`` + ``summary.json`` in a directory.

Every producer of shards goes through :func:`write_shards`: image folders and caption tables
(``shards.py``), the synthetic set (``synthetic.py``) and precomputed text embeddings
(``precompute.py``). The format (a contract with ``reader`` and ``pipeline``):

* ``shard-000000.tar``, ``shard-000001.tar``, ... (``samples_per_shard`` samples each, the
  last one fewer; no empty shard), written with ``webdataset.ShardWriter``; the entries of a
  sample are contiguous and sorted (``KEY.jpg``, ``KEY.json``, ``KEY.txt``), tar members have
  a fixed mtime/owner/mode, so identical input gives byte-identical shards.
* per sample: ``__key__`` plus its entries. A :class:`ShardSample` becomes one image entry
  (``jpg``, ``png`` or ``webp``), ``txt`` (the UTF-8 caption) and ``json`` (``width``,
  ``height``, ``source`` plus any metadata, sorted keys); a :class:`RawSample` is written
  with the entries it carries (e.g. a copied sample plus its ``text.npz``).
* ``summary.json`` beside the shards (:class:`ShardWriteSummary`): format, version, shard
  names, sample and skip counts, the skipped items with their reasons, a description of the
  source, the time taken, plus any fields the producer adds; and any extra files it adds
  (``heldout.json``, ``encoding.json``).

Bad input never aborts a run and is never dropped silently: each bad item is a
:class:`SkippedItem` with one of :data:`SKIP_REASONS`, counted and listed in the summary. A
run writes into a staging directory inside ``out_dir`` (:func:`imagen_ray.fs.staging_dir`)
and moves its files into place only at the end, ``summary.json`` last, so a failed or
interrupted run leaves the previous output as it was; shards of a previous run that the new
one does not produce are deleted, other files in ``out_dir`` are left alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagen_ray.fs import staging_dir

SHARD_FORMAT = "imagen-ray/shards"
SHARD_FORMAT_VERSION = 1
SUMMARY_NAME = "summary.json"
SHARD_NAME = "shard-{:06d}.tar"
SHARD_RE = re.compile(r"^shard-\d{6,}\.tar$")
MAX_LISTED_SKIPS = 1000
TAR_MTIME = 0  # fixed tar member mtime: identical input -> byte-identical shards

SKIP_REASONS = (
    "corrupt_image",  # not decodable by PIL (random bytes, truncated file, unreadable file)
    "wrong_format",  # an image format outside the accepted suffixes (PPM, PSD, ...)
    "too_many_pixels",  # width x height above max_pixels (read from the header, not decoded)
    "missing_image",  # table row without image value / file; folder caption without image
    "missing_caption",  # folder image without a same-stem .txt file
    "empty_caption",  # caption empty after stripping (or null in a table)
    "bad_caption",  # caption file is not UTF-8
    "too_small",  # short side below min_size
    "duplicate_key",  # a sample with this key was already written (second one skipped)
    "truncated_tar",  # re-written shards: an input tar cut short (samples before it kept)
    "bad_tar",  # re-written shards: an input tar with a broken structure
    "member_too_large",  # re-written shards: a tar member over data.max_member_bytes (unread)
)


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

    def entries(self) -> dict[str, bytes]:
        """The tar entries: image, ``txt`` and ``json`` (metadata + width/height/source)."""
        meta = {
            **{k: _jsonable(v) for k, v in self.meta.items()},
            "width": self.width,
            "height": self.height,
            "source": self.source,
        }
        return {
            self.ext: self.image,
            "txt": self.caption.encode("utf-8"),
            "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
        }


@dataclass(frozen=True)
class RawSample:
    """A sample written with exactly the entries it carries (``{"jpg": ..., "txt": ...}``)."""

    key: str
    data: Mapping[str, bytes]
    source: str = ""

    def entries(self) -> dict[str, bytes]:
        return dict(self.data)


@dataclass(frozen=True)
class SkippedItem:
    """An input item that was not written, and why (``reason`` is one of SKIP_REASONS)."""

    source: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "reason": self.reason, "detail": self.detail}


Item = ShardSample | RawSample | SkippedItem
Extra = Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None


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


def _resolve(extra: Extra) -> dict[str, Any]:
    return dict((extra() if callable(extra) else extra) or {})


def _extra_files(extra: Extra) -> dict[str, bytes]:
    """The extra files to publish, their names checked against the shards' own."""
    files = _resolve(extra)
    for name in files:
        if name == SUMMARY_NAME or SHARD_RE.match(name) or "/" in name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is reserved or not a plain file name")
    return files


def write_shards(
    samples: Iterable[Item],
    out_dir: str | Path,
    *,
    samples_per_shard: int = 1000,
    source: str = "",
    progress: bool = True,
    total: int | None = None,
    extra_summary: Extra = None,
    extra_files: Extra = None,
) -> ShardWriteSummary:
    """Write samples to ``out_dir/shard-*.tar`` + ``summary.json``, replacing a previous run.

    Everything is written into a staging directory inside ``out_dir`` first; on success the
    shards, ``extra_files`` and (last) ``summary.json`` are moved into ``out_dir``, replacing
    files of the same name, and ``shard-*.tar`` files of an earlier run that this run did not
    write are deleted. On any error the staging directory is removed and the old output is
    untouched.

    Args:
        samples: samples and skipped items in output order (a generator is fine).
        out_dir: output directory (created if needed).
        samples_per_shard: samples per tar file (the last one holds the rest).
        source: a description of the input for the summary.
        progress: show a tqdm progress bar.
        total: number of items ``samples`` will yield, for the progress bar.
        extra_summary: more top-level fields for summary.json (e.g. ``synthetic``), or a
            function returning them, called once every sample is written (for fields
            counted while writing).
        extra_files: more files to publish beside the shards, name -> bytes (or a function
            returning that mapping, called like ``extra_summary``).

    Returns:
        The summary (``.to_dict()`` is what summary.json holds).

    Raises:
        ValueError: ``samples_per_shard`` < 1, or an extra file name clashes with the shards.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    files = None if callable(extra_files) else _extra_files(extra_files)
    out = Path(out_dir)
    t0 = time.perf_counter()
    with staging_dir(out) as tmp:
        shard_counts, skipped = _write_tar_files(
            samples, tmp, samples_per_shard=samples_per_shard, progress=progress, total=total
        )
        if files is None:
            files = _extra_files(extra_files)
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
            extra=_resolve(extra_summary),
        )
        for name, content in files.items():
            (tmp / name).write_bytes(content)
        text = json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) + "\n"
        (tmp / SUMMARY_NAME).write_text(text, encoding="utf-8")
        _publish(tmp, out, [*summary.shards, *files])
    return summary


# How every shard tar is written, by ``data shards``/``synthetic`` (ShardWriter) and by
# ``data encode`` (one TarWriter per output shard): entries are bytes already, and a fixed
# mtime and owner make identical input give byte-identical tars.
TAR_OPTIONS: dict[str, Any] = {
    "encoder": False,
    "mtime": TAR_MTIME,
    "user": "imagen-ray",
    "group": "imagen-ray",
}


def tar_writer(stream: Any) -> Any:
    """A ``webdataset.TarWriter`` on an open binary stream, with :data:`TAR_OPTIONS`."""
    import webdataset as wds  # imports torch: keep it off the import path of this module

    return wds.TarWriter(stream, **TAR_OPTIONS)


def _write_tar_files(
    samples: Iterable[Item],
    tmp: Path,
    *,
    samples_per_shard: int,
    progress: bool,
    total: int | None,
) -> tuple[dict[str, int], list[SkippedItem]]:
    """The ShardWriter loop: returns {shard name: samples} and the skipped items in order."""
    import webdataset as wds  # imports torch: keep it off the import path of this module
    from tqdm import tqdm

    pattern = str(tmp).replace("%", "%%") + "/" + SHARD_NAME.replace("{:06d}", "%06d")
    shard_counts: dict[str, int] = {}
    skipped: list[SkippedItem] = []
    written: set[str] = set()
    bar = tqdm(total=total, desc="writing shards", unit="sample", disable=not progress)
    writer = wds.ShardWriter(
        pattern,
        maxcount=samples_per_shard,
        maxsize=float("inf"),  # split by count only
        verbose=0,
        **TAR_OPTIONS,
    )
    try:
        for item in samples:
            if not isinstance(item, SkippedItem) and item.key in written:
                where = item.source or item.key
                item = SkippedItem(where, "duplicate_key", f"key {item.key!r} was written")
            if isinstance(item, SkippedItem):
                skipped.append(item)
            else:
                writer.write({"__key__": item.key, **item.entries()})
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
    """Move a finished run out of its staging directory; summary.json last, stale shards
    deleted (the renames are atomic: ``tmp`` is inside ``out``)."""
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
