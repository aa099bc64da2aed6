"""Precomputed text embeddings: encode captions once into new shards, in parallel, resumably.

``imagen-ray data encode`` turns every input shard into one output shard of the same name
(``shard-000042.tar`` -> ``OUT/shard-000042.tar``; img2dataset's ``00042.tar`` keeps its
name too) holding each sample's original entries plus a ``text.npz`` entry, and at the end
``encoding.json`` (the text config used; see :mod:`imagen_ray.data.encoding`) and
``summary.json`` (the shard writer's summary format, :mod:`imagen_ray.data.writer`).

How it scales:

* **One writer per Ray task.** Each input shard is one task (``writers`` at once): it
  streams the input tar, sends caption batches to a pool of encoder actors
  (``TextEncoderActor``, the training pipeline's, with its byte-bounded caption cache) and
  writes its own output tar. Reading, tar writing and upload overlap with encoding.
* **Any storage pyarrow reaches.** Input and output are local paths or URIs (``s3://``,
  ``gs://``; ``pyarrow.fs.FileSystem.from_uri`` with the usual credentials, e.g.
  ``AWS_ENDPOINT_URL``); only local paths are tested here.
* **Resumable.** A task writes ``.NAME.tmp-<id>`` and renames it to ``NAME`` once complete,
  then records the shard's counts in ``.encode-progress/NAME.json``. A rerun with the same
  ``--out`` keeps every shard that has its progress record (not rewritten: same bytes, same
  mtime), removes leftovers of interrupted tasks, encodes the rest, and writes a summary
  that covers all shards. ``encoding.json`` and ``summary.json`` appear only when every
  shard is done, so a training run never mistakes a half-encoded directory for a finished
  one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray

from imagen_ray import storage
from imagen_ray.config import TextEncoderConfig
from imagen_ray.data.encoding import (
    CAPTION_ENTRY,
    EMBEDDING_ENTRY,
    ENCODING_FILE,
    embedding_bytes,
    encoding_info,
)
from imagen_ray.data.metadata import sample_caption
from imagen_ray.data.pipeline import TextEncoderActor
from imagen_ray.data.reader import (
    ERROR_COLUMN,
    KEY_COLUMN,
    ShardFormatError,
    expand_shards,
    iter_tar_samples,
)
from imagen_ray.data.writer import (
    MAX_LISTED_SKIPS,
    SHARD_FORMAT,
    SHARD_FORMAT_VERSION,
    SUMMARY_NAME,
    SkippedItem,
    tar_writer,
)

__all__ = [
    "PROGRESS_DIR",
    "check_output",
    "encode_shards",
]

PROGRESS_DIR = ".encode-progress"
_CONFIG_RECORD = "text.json"  # the text config of the run in progress (resume must match)


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Location:
    """A directory on a pyarrow filesystem: a local path or a URI (``s3://bucket/x``)."""

    uri: str  # what the user gave, normalised (absolute for local paths)
    fs: pafs.FileSystem
    root: str  # the path inside ``fs``

    @classmethod
    def parse(cls, where: str | Path) -> Location:
        text = str(where)
        if "://" in text:
            fs, root = pafs.FileSystem.from_uri(text)
            return cls(text.rstrip("/"), fs, root.rstrip("/"))
        path = str(Path(text).expanduser().resolve())
        return cls(path, pafs.LocalFileSystem(), path)

    def path(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    def exists(self, *parts: str) -> bool:
        return bool(self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound)

    def files(self, *parts: str) -> list[pafs.FileInfo]:
        """Files directly in this directory (or a subdirectory); [] when it does not exist."""
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return [i for i in infos if i.type == pafs.FileType.File]

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write ``name`` completely under a temporary name, then rename it into place."""
        final = PurePosixPath(self.path(name))
        tmp = str(final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, str(final))

    def read_json(self, *parts: str) -> Any:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return json.loads(f.read())


def _output_name(path: str) -> str:
    """The output shard name of an input shard: its file name (``.tar`` kept)."""
    return PurePosixPath(path.split("://", 1)[-1]).name


# --------------------------------------------------------------------------- one shard


def _samples_with_embeddings(
    samples: Iterator[dict[str, Any]],
    encode: Any,
    batch_size: int,
    caption_key: str = CAPTION_ENTRY,
) -> Iterator[dict[str, Any]]:
    """Samples in input order, each with ``text.npz`` when it has a caption under
    ``caption_key`` (``txt``, another entry, or ``json:FIELD``).

    A ``text.npz`` already in the input is dropped: the output holds this encoder's only.
    """
    batch: list[dict[str, Any]] = []

    def flush() -> Iterator[dict[str, Any]]:
        pairs = [(s, sample_caption(s, caption_key)) for s in batch]
        captioned = [s for s, c in pairs if c is not None]
        captions = [c for _, c in pairs if c is not None]
        if captions:
            emb, mask = encode(captions)  # (B, L, D) float16, (B, L) bool
            for i, s in enumerate(captioned):
                s[EMBEDDING_ENTRY] = embedding_bytes(emb[i], mask[i])
        yield from batch
        batch.clear()

    try:
        for sample in samples:
            sample.pop(EMBEDDING_ENTRY, None)
            batch.append(sample)
            if len(batch) >= batch_size:
                yield from flush()
    except ShardFormatError:  # a broken tar: the complete samples read before it are kept
        yield from flush()
        raise
    yield from flush()


def encode_one_shard(
    in_path: str,
    out: Location,
    encoders: list[Any],
    index: int,
    batch_size: int,
    caption_key: str = CAPTION_ENTRY,
    max_member_bytes: int | None = None,
) -> dict[str, Any]:
    """Encode one input shard into ``out/NAME`` (a Ray task: one writer per task).

    The tar is written to a temporary name and renamed when complete; a shard with no
    sample left (a broken input tar) writes no tar. Then the progress record
    ``.encode-progress/NAME.json`` marks it finished.

    Args:
        in_path: the input tar (path or URI).
        out: the output directory.
        encoders: handles of ``TextEncoderActor`` actors; this shard uses ``index % n``.
        index: the shard's position in the input list.
        batch_size: captions per encoder call.
        caption_key: where a sample's caption is (``data.caption_key``).
        max_member_bytes: larger tar members are skipped unread, their sample dropped.

    Returns:
        The progress record: ``name``, ``samples``, ``with_embeddings``, ``skipped`` items.
    """

    encoder = encoders[index % len(encoders)]
    name = _output_name(in_path)
    tmp = out.path(f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    samples = with_embeddings = 0
    skipped: list[SkippedItem] = []

    def encode(captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
        result: tuple[np.ndarray, np.ndarray] = ray.get(encoder.encode_captions.remote(captions))
        return result

    def readable(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for s in samples:  # a sample with an oversized member was never read: drop it
            if ERROR_COLUMN in s:
                where = f"{in_path}#{s[KEY_COLUMN]}"
                skipped.append(SkippedItem(where, s[ERROR_COLUMN], "a member over the size cap"))
            else:
                yield s

    with out.fs.open_output_stream(tmp) as stream:
        writer = tar_writer(stream)
        try:
            with storage.open_input(in_path) as f:
                for s in _samples_with_embeddings(
                    readable(iter_tar_samples(f, in_path, max_member_bytes=max_member_bytes)),
                    encode,
                    batch_size,
                    caption_key,
                ):
                    writer.write(s)
                    samples += 1
                    with_embeddings += EMBEDDING_ENTRY in s
        except ShardFormatError as e:  # samples before the break are kept, as the reader does
            skipped.append(
                SkippedItem(in_path, e.reason, "broken input tar (samples before it kept)")
            )
        finally:
            writer.close()
    if samples:
        out.fs.move(tmp, out.path(name))
    else:
        out.fs.delete_file(tmp)
    record = {
        "name": name,
        "input": in_path,
        "samples": samples,
        "with_embeddings": with_embeddings,
        "skipped": [s.to_dict() for s in skipped],
    }
    out.write_bytes(f"{PROGRESS_DIR}/{name}.json", json.dumps(record).encode())
    return record


# --------------------------------------------------------------------------- the command


def check_output(
    out_dir: str | Path, paths: list[str], text_cfg: TextEncoderConfig, overwrite: bool
) -> bool:
    """Raise ValueError unless ``out_dir`` can take this run; True when it resumes one.

    ``out_dir`` may be new, empty, an unfinished (or finished) run of the same text config,
    or anything holding shards with ``overwrite``. No Ray needed: the command calls it
    before starting a cluster.
    """
    out = Location.parse(out_dir)
    if any(PurePosixPath(p).parent == PurePosixPath(out.uri) for p in paths):
        raise ValueError(f"--out {out.uri} is the input directory; choose a new directory")
    names = [_output_name(p) for p in paths]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise ValueError(
            f"input shards share the name {dupes[0]!r} (output shards are named after their "
            "input): encode each directory into its own --out"
        )
    if overwrite:
        return False
    if out.exists(PROGRESS_DIR, _CONFIG_RECORD):
        stored = TextEncoderConfig.model_validate(out.read_json(PROGRESS_DIR, _CONFIG_RECORD))
        if stored != text_cfg:
            raise ValueError(
                f"{out.uri} holds shards encoded with another text config ({stored.name!r}, "
                f"max_length {stored.max_length}, dtype {stored.dtype}); pass overwrite "
                "(--overwrite) to re-encode everything, or choose a new --out"
            )
        return True
    if out.files():
        raise ValueError(
            f"output directory {out.uri} already exists and is not a `data encode` output "
            "(pass overwrite / --overwrite to replace its shards, or choose a new --out)"
        )
    return False


def _prepare_output(
    out: Location, paths: list[str], text_cfg: TextEncoderConfig, overwrite: bool
) -> None:
    """Check ``out`` (:func:`check_output`), then clear it for this run: everything of an
    earlier run with ``overwrite``, else only leftovers of interrupted tasks."""
    check_output(out.uri, paths, text_cfg, overwrite)
    for info in out.files() + out.files(PROGRESS_DIR):
        name = info.base_name
        if ".tmp-" in name or (overwrite and name.endswith((".tar", ".json"))):
            out.fs.delete_file(info.path)
    out.fs.create_dir(out.path(PROGRESS_DIR), recursive=True)
    out.write_bytes(f"{PROGRESS_DIR}/{_CONFIG_RECORD}", text_cfg.model_dump_json().encode())


# long: the docstring documents each parameter (Ray resources, resuming, caption key)
def encode_shards(
    in_dir: str | Path | Sequence[str],
    out_dir: str | Path,
    text_cfg: TextEncoderConfig,
    *,
    encoder_batch_size: int = 64,
    concurrency: int = 1,
    num_cpus: float = 0.5,
    num_gpus: float = 0.0,
    writers: int = 4,
    writer_num_cpus: float = 0.25,
    cache_bytes: int = 256 * 2**20,
    overwrite: bool = False,
    caption_key: str = CAPTION_ENTRY,
    max_member_bytes: int | None = None,
) -> dict[str, Any]:
    """Precompute text embeddings once: per input shard, an output shard with ``text.npz``.

    Each sample keeps its key and entries and gains ``text.npz`` (float16 ``emb`` (L, D),
    bool ``mask`` (L,)); samples without a ``txt`` entry are copied without one; a broken
    input tar keeps the samples before the break and is listed as a skipped item. See the
    module docstring for naming, parallelism, remote output and resuming.

    Args:
        in_dir: raw shards (directory, glob, list, URI; see ``reader.expand_shards``).
        out_dir: output directory, local or a URI (``s3://...``); a rerun resumes it.
        text_cfg: the text encoder (must equal the training run's ``text`` config).
        encoder_batch_size: captions per encoder call.
        concurrency, num_cpus, num_gpus: the encoder actors (``data.encoder_*``).
        writers: shard tasks at once (each reads, writes and uploads one shard).
        writer_num_cpus: CPUs per shard task (fractional: they mostly wait on I/O and on
            the encoders).
        cache_bytes: each encoder actor's caption cache (``data.caption_cache_mb``).
        overwrite: delete the shards and records of an earlier run in ``out_dir`` first.
        caption_key: which caption is encoded (``data.caption_key``: ``txt``, another
            entry, or ``json:FIELD``); recorded in ``encoding.json``, and training refuses
            the shards under another ``data.caption_key``.
        max_member_bytes: tar members above this are skipped unread (``data.max_member_bytes``).

    Returns:
        The content of ``summary.json``: the shard writer's fields (``shards``,
        ``shard_samples``, ``samples``, ``skipped`` ...) plus ``samples_with_embeddings``,
        ``text_encoding`` and ``encode`` (``written``/``kept`` shard counts, ``writers``).

    Raises:
        ValueError: ``out_dir`` is the input directory, holds something else (without
            ``overwrite``) or a run with another text config; two inputs share a name;
            float16 with a T5-family encoder; ``writers`` < 1.
        FileNotFoundError: no input shards.
    """
    from imagen_ray.text.encoder import check_dtype, text_dim

    if writers < 1:
        raise ValueError(f"writers must be >= 1, got {writers}")
    t0 = time.perf_counter()
    paths = expand_shards(str(in_dir) if isinstance(in_dir, (str, Path)) else list(in_dir))
    check_dtype(text_cfg)
    dim = text_dim(text_cfg)
    out = Location.parse(out_dir)
    _prepare_output(out, paths, text_cfg, overwrite)

    done = {i.base_name.removesuffix(".json") for i in out.files(PROGRESS_DIR)} - {
        _CONFIG_RECORD.removesuffix(".json")
    }
    todo = [(i, p) for i, p in enumerate(paths) if _output_name(p) not in done]
    records: dict[str, dict[str, Any]] = {}
    if todo:
        records = _encode_todo(
            todo,
            out,
            text_cfg,
            encoder_batch_size=encoder_batch_size,
            concurrency=concurrency,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            writers=writers,
            writer_num_cpus=writer_num_cpus,
            cache_bytes=cache_bytes,
            caption_key=caption_key,
            max_member_bytes=max_member_bytes,
        )
    for name in {_output_name(p) for p in paths} - set(records):
        records[name] = out.read_json(PROGRESS_DIR, f"{name}.json")

    ordered = [records[_output_name(p)] for p in paths]
    source = paths[0] if len(paths) == 1 else f"{len(paths)} shards in {in_dir}"
    summary = _summary(ordered, source=source, t0=t0)
    summary["encode"] = {"written": len(todo), "kept": len(paths) - len(todo), "writers": writers}
    with_embeddings = summary["samples_with_embeddings"]
    info = encoding_info(text_cfg, dim, with_embeddings, caption_key)
    out.write_bytes(ENCODING_FILE, (json.dumps(info, indent=2) + "\n").encode())
    out.write_bytes(
        SUMMARY_NAME, (json.dumps(summary, indent=2, ensure_ascii=False) + "\n").encode()
    )
    return summary


def _encode_todo(
    todo: list[tuple[int, str]],
    out: Location,
    text_cfg: TextEncoderConfig,
    *,
    encoder_batch_size: int,
    concurrency: int,
    num_cpus: float,
    num_gpus: float,
    writers: int,
    writer_num_cpus: float,
    cache_bytes: int,
    caption_key: str,
    max_member_bytes: int | None,
) -> dict[str, dict[str, Any]]:
    """Encode the ``(index, path)`` shards of ``todo``: encoder actors shared by at most
    ``writers`` shard tasks at once. Returns each written shard's record, by output name."""
    records: dict[str, dict[str, Any]] = {}
    actor: Any = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(TextEncoderActor)
    encoders = [
        actor.remote(text_cfg.model_dump(), keep_caption=False, cache_bytes=cache_bytes)
        for _ in range(min(concurrency, len(todo)))
    ]
    task: Any = ray.remote(num_cpus=writer_num_cpus, max_retries=3)(encode_one_shard)
    pending: list[Any] = []
    for i, path in todo:
        if len(pending) >= writers:
            ready, pending = ray.wait(pending, num_returns=1)
            for r in ray.get(ready):
                records[r["name"]] = r
        pending.append(
            task.remote(path, out, encoders, i, encoder_batch_size, caption_key, max_member_bytes)
        )
    for r in ray.get(pending):
        records[r["name"]] = r
    for e in encoders:
        ray.kill(e)
    return records


def _summary(ordered: list[dict[str, Any]], *, source: str, t0: float) -> dict[str, Any]:
    """summary.json from the shards' records, in input order (without the ``encode`` counts)."""
    written = [r for r in ordered if r["samples"]]
    skipped = [SkippedItem(**s) for r in ordered for s in r["skipped"]]
    counts = Counter(s.reason for s in skipped)
    return {
        "format": SHARD_FORMAT,
        "version": SHARD_FORMAT_VERSION,
        "shards": [r["name"] for r in written],
        "shard_samples": [r["samples"] for r in written],
        "samples": sum(r["samples"] for r in ordered),
        "samples_per_shard": None,  # one output shard per input shard
        "skipped": {k: counts[k] for k in sorted(counts)},
        "skipped_total": len(skipped),
        "skipped_items": [s.to_dict() for s in skipped[:MAX_LISTED_SKIPS]],
        "skipped_items_omitted": max(0, len(skipped) - MAX_LISTED_SKIPS),
        "source": source,
        "seconds": round(time.perf_counter() - t0, 3),
        "samples_with_embeddings": sum(r["with_embeddings"] for r in ordered),
        "text_encoding": ENCODING_FILE,
    }
