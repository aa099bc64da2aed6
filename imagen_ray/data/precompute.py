"""Precomputed text embeddings: encode captions once into new shards.

``imagen-ray data encode`` runs the frozen encoder over shards once and writes new shards,
through the same writer as ``imagen-ray data shards``
(:func:`~imagen_ray.data.writer.write_shards`), with a ``text.npz`` entry per sample plus
``encoding.json`` (the text config used); the training pipeline then skips the encoder,
after checking the stored config matches the run's. The on-disk contract (entry names,
``encoding.json``, the checks) lives in :mod:`imagen_ray.data.encoding`, imported by both
this module and ``pipeline``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from imagen_ray.config import TextEncoderConfig
from imagen_ray.data.encoding import (
    CAPTION_ENTRY,
    EMBEDDING_ENTRY,
    ENCODING_FILE,
    check_encoding,
    embedding_bytes,
    encoding_info,
    read_encoding_info,
    resolve_encoding,
)
from imagen_ray.data.pipeline import TextEncoderActor
from imagen_ray.data.reader import (
    ERROR_COLUMN,
    KEY_COLUMN,
    URL_COLUMN,
    expand_shards,
    read_shards,
)
from imagen_ray.data.writer import RawSample, SkippedItem, write_shards

__all__ = [
    "check_encoding",
    "encode_shards",
    "read_encoding_info",
    "resolve_encoding",
]

# --------------------------------------------------------------------------- the dataset


def _captions_for_encoding(batch: pa.Table) -> pa.Table:
    """Raw rows -> the same rows plus ``caption`` (stripped; "" when missing).

    Error rows of broken tars stay (``__error__``, ``__url__``): the writer lists them as
    skipped items.
    """
    raw = (
        batch.column(CAPTION_ENTRY).to_pylist()
        if CAPTION_ENTRY in batch.column_names
        else [None] * batch.num_rows
    )
    captions = [b.decode("utf-8", errors="replace").strip() if b is not None else "" for b in raw]
    return batch.append_column("caption", pa.array(captions, pa.string()))


def _samples(batches: Iterable[Any], counts: dict[str, int]) -> Iterator[RawSample | SkippedItem]:
    """Encoded numpy batches -> :class:`RawSample` (original entries + ``text.npz`` when captioned)
    and :class:`SkippedItem` for the reader's error rows; counts ``with_embeddings``.

    A ``text.npz`` already in the input is not copied: the output holds this encoder's only.
    """
    special = {KEY_COLUMN, ERROR_COLUMN, URL_COLUMN, EMBEDDING_ENTRY, "emb", "mask"}
    for batch in batches:
        entries = [k for k in batch if k not in special]
        errors = batch.get(ERROR_COLUMN)
        urls = batch.get(URL_COLUMN)
        for i, key in enumerate(batch[KEY_COLUMN]):
            # null strings come back as None or NaN
            url = urls[i] if urls is not None and isinstance(urls[i], str) else ""
            error = errors[i] if errors is not None and isinstance(errors[i], str) else ""
            if error:
                yield SkippedItem(url, error, "broken input tar (samples before it kept)")
                continue
            data: dict[str, bytes] = {}
            for k in entries:
                value = batch[k][i]
                if isinstance(value, bytes):  # missing entries come back as None/NaN
                    data[k] = value
            if CAPTION_ENTRY in data:
                data[EMBEDDING_ENTRY] = embedding_bytes(batch["emb"][i], batch["mask"][i])
                counts["with_embeddings"] += 1
            yield RawSample(str(key), data, source=f"{url}:{key}" if url else str(key))


def encode_shards(
    in_dir: str | Path | Sequence[str],
    out_dir: str | Path,
    text_cfg: TextEncoderConfig,
    *,
    encoder_batch_size: int = 64,
    concurrency: int = 1,
    num_cpus: float = 0.5,
    num_gpus: float = 0.0,
    max_tasks: int | None = None,
    samples_per_shard: int = 1000,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Precompute text embeddings once: new shards with a ``text.npz`` entry per sample.

    Reads ``in_dir`` with the tolerant reader, encodes captions on an actor pool and writes
    every sample (same key, original entries, plus ``text.npz`` = float16 ``emb`` (L, D)
    and bool ``mask`` (L,)) through :func:`~imagen_ray.data.writer.write_shards`, the writer
    of ``imagen-ray data shards``: the same summary format, no empty shard, and a staged
    publish, so a failed run leaves ``out_dir`` as it was. Samples without a caption are
    copied without embeddings; error rows of broken tars are skipped items of the summary.
    Shard order may differ from the input.

    Args:
        in_dir: raw shards (directory, glob, list; see ``reader.expand_shards``).
        out_dir: new directory for shards, ``encoding.json`` and ``summary.json``.
        text_cfg: the text encoder (must equal the training run's ``text`` config).
        encoder_batch_size, concurrency, num_cpus, num_gpus: the encoder actor pool.
        max_tasks: most read tasks, and caption tasks, at once (``data.read_tasks``;
            default: as many as the CPUs allow).
        samples_per_shard: samples per output tar.
        overwrite: write into an existing ``out_dir`` (its shards, ``summary.json`` and
            ``encoding.json`` are replaced, stale shards deleted).

    Returns:
        The content of ``summary.json``: the writer's fields (samples, shards, skipped
        counts and items, seconds) plus ``samples_with_embeddings`` and ``text_encoding``
        (the name of the encoding file).

    Raises:
        ValueError: ``out_dir`` exists (without ``overwrite``) or is the input directory.
        FileNotFoundError: no input shards.
    """
    from imagen_ray.text.encoder import text_dim

    paths = expand_shards(str(in_dir) if isinstance(in_dir, (str, Path)) else list(in_dir))
    out = Path(out_dir).expanduser().resolve()
    if any(Path(p).parent == out for p in paths if "://" not in p):
        raise ValueError(f"--out {out} is the input directory; choose a new directory")
    if out.exists() and not overwrite:
        raise ValueError(f"output directory {out} already exists (pass overwrite to replace it)")
    dim = text_dim(text_cfg)
    ds = read_shards(paths, num_cpus=0.25, max_tasks=max_tasks).map_batches(
        _captions_for_encoding,
        batch_format="pyarrow",
        batch_size=None,
        num_cpus=0.25,
        compute=ray.data.TaskPoolStrategy(size=max_tasks),
    )
    ds = ds.map_batches(
        TextEncoderActor,
        fn_constructor_kwargs={"text_cfg": text_cfg.model_dump(), "keep_caption": False},
        batch_format="numpy",
        batch_size=encoder_batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
    )
    counts = {"with_embeddings": 0}

    def encoding_file() -> dict[str, bytes]:  # called once every sample is written
        info = encoding_info(text_cfg, dim, counts["with_embeddings"])
        return {ENCODING_FILE: (json.dumps(info, indent=2) + "\n").encode()}

    summary = write_shards(
        _samples(ds.iter_batches(batch_format="numpy", batch_size=256), counts),
        out,
        samples_per_shard=samples_per_shard,
        source=paths[0] if len(paths) == 1 else f"{len(paths)} shards in {in_dir}",
        progress=False,
        extra_summary=lambda: {
            "samples_with_embeddings": counts["with_embeddings"],
            "text_encoding": ENCODING_FILE,
        },
        extra_files=encoding_file,
    )
    return summary.to_dict()
