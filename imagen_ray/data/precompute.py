"""Precomputed text embeddings: encode captions once into new shards, read them back.

``imagen-ray data encode`` runs the frozen encoder over shards once and writes new shards
with a ``text.npz`` entry per sample plus ``encoding.json`` (the text config used); the
training pipeline then skips the encoder, after checking the stored config matches the
run's. Split from ``pipeline.py``, which imports ``resolve_encoding`` from here.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from imagen_ray.config import RunConfig, TextEncoderConfig
from imagen_ray.data.pipeline import (
    CAPTION_ENTRY,
    EMBEDDING_ENTRY,
    ENCODING_FILE,
    ENCODING_FORMAT,
    TextEncoderActor,
    create_stats,
)
from imagen_ray.data.reader import (
    ERROR_COLUMN,
    KEY_COLUMN,
    URL_COLUMN,
    expand_shards,
    read_shards,
)


def _shard_dir(path: str) -> str:
    return path.rsplit("/", 1)[0] if "://" in path else str(Path(path).parent)


def read_encoding_info(shard_dir: str) -> dict[str, Any] | None:
    """The ``encoding.json`` next to shards (local dir or URI), or None when absent."""
    if "://" in shard_dir:
        import pyarrow.fs as pafs

        fs, root = pafs.FileSystem.from_uri(shard_dir)
        where = f"{root.rstrip('/')}/{ENCODING_FILE}"
        if fs.get_file_info(where).type == pafs.FileType.NotFound:
            return None
        with fs.open_input_stream(where) as f:
            info: dict[str, Any] = json.loads(f.read())
            return info
    p = Path(shard_dir) / ENCODING_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def check_encoding(info: dict[str, Any], text: TextEncoderConfig, where: str) -> None:
    """Raise ValueError unless precomputed embeddings were made with the run's encoder.

    ``dim`` may be null in the run's config; it then matches the recorded width.
    """
    stored = TextEncoderConfig.model_validate(info["text"])
    want = text.model_copy(update={"dim": text.dim if text.dim is not None else info["dim"]})
    stored = stored.model_copy(update={"dim": info["dim"]})
    if stored != want:
        a, b = stored.model_dump(), want.model_dump()
        diff = {k: (a[k], b[k]) for k in a if a[k] != b[k]}
        fields = ", ".join(f"text.{k}: shards {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"the embeddings precomputed in {where} were made with a different text encoder "
            f"config ({fields}). Re-encode the shards with this config (`imagen-ray data "
            "encode`), point data.shards at the raw shards, or set data.precomputed=false to "
            "encode captions on the fly"
        )


def resolve_encoding(run_cfg: RunConfig, paths: Sequence[str]) -> dict[str, Any] | None:
    """Decide whether to read precomputed embeddings; return their ``encoding.json``.

    Args:
        run_cfg: the run (``data.precomputed``: true = required, null = when present,
            false = never).
        paths: the expanded shard paths.

    Returns:
        The encoding info (checked against ``run_cfg.text``) or None for on-the-fly encoding.

    Raises:
        FileNotFoundError: ``data.precomputed`` is true but a shard directory has no
            ``encoding.json``.
        ValueError: the shards were encoded with another text config, or only some
            directories have embeddings.
    """
    mode = run_cfg.data.precomputed
    if mode is False:
        return None
    dirs = sorted({_shard_dir(p) for p in paths})
    infos = {d: read_encoding_info(d) for d in dirs}
    missing = [d for d, info in infos.items() if info is None]
    if mode is True and missing:
        raise FileNotFoundError(
            f"data.precomputed=true but {missing[0]}/{ENCODING_FILE} does not exist: run "
            "`imagen-ray data encode --shards DIR --out DIR --config RUN.yaml` first, or set "
            "data.precomputed=null (use embeddings when present) or false"
        )
    if len(missing) == len(dirs):
        return None
    if missing:
        raise ValueError(
            f"only some shard directories have precomputed embeddings ({missing[0]} has no "
            f"{ENCODING_FILE}); encode them all or set data.precomputed=false"
        )
    first: dict[str, Any] | None = None
    for d, info in infos.items():
        assert info is not None
        check_encoding(info, run_cfg.text, d)
        first = first or info
    return first


# --------------------------------------------------------------------------- the dataset


def _captions_for_encoding(batch: pa.Table, *, stats: Any) -> pa.Table:
    """Raw rows -> sample rows plus ``caption`` (stripped; "" when missing).

    Error rows of broken tars are counted (waiting for the count, so the summary is exact)
    and removed, with the ``__error__`` and ``__url__`` columns.
    """
    import pyarrow.compute as pc

    if ERROR_COLUMN in batch.column_names:
        errors = batch.column(ERROR_COLUMN)
        counts = Counter(e for e in errors.to_pylist() if e)
        if counts:
            ray.get(stats.add.remote(dict(counts)))
        batch = batch.filter(pc.is_null(errors))
    batch = batch.drop_columns([c for c in (ERROR_COLUMN, URL_COLUMN) if c in batch.column_names])
    raw = (
        batch.column(CAPTION_ENTRY).to_pylist()
        if CAPTION_ENTRY in batch.column_names
        else [None] * batch.num_rows
    )
    captions = [b.decode("utf-8", errors="replace").strip() if b is not None else "" for b in raw]
    return batch.append_column("caption", pa.array(captions, pa.string()))


def _npz_bytes(emb: np.ndarray, mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, emb=emb.astype(np.float16), mask=mask.astype(bool))
    return buf.getvalue()


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
    and bool ``mask`` (L,)) with ``webdataset.ShardWriter`` into a temporary directory
    beside ``out_dir``, then renames it: ``out_dir`` never holds half-written output.
    Samples without a caption are copied without embeddings; error rows of broken tars are
    counted in the summary. Shard order may differ from the input.

    Args:
        in_dir: raw shards (directory, glob, list; see ``reader.expand_shards``).
        out_dir: new directory for shards, ``encoding.json`` and ``summary.json``.
        text_cfg: the text encoder (must equal the training run's ``text`` config).
        encoder_batch_size, concurrency, num_cpus, num_gpus: the encoder actor pool.
        max_tasks: most read tasks, and caption tasks, at once (``data.read_tasks``;
            default: as many as the CPUs allow).
        samples_per_shard: samples per output tar.
        overwrite: replace an existing ``out_dir``.

    Returns:
        The summary written to ``summary.json`` (samples, shards, skipped counts, seconds).

    Raises:
        ValueError: ``out_dir`` exists (without ``overwrite``) or is the input directory.
        FileNotFoundError: no input shards.
    """
    from webdataset import ShardWriter

    from imagen_ray.data.shards import SHARD_FORMAT, SHARD_FORMAT_VERSION, SHARD_NAME
    from imagen_ray.text.encoder import text_dim

    t0 = time.perf_counter()
    paths = expand_shards(str(in_dir) if isinstance(in_dir, (str, Path)) else list(in_dir))
    out = Path(out_dir).expanduser().resolve()
    if any(Path(p).parent == out for p in paths if "://" not in p):
        raise ValueError(f"--out {out} is the input directory; choose a new directory")
    if out.exists() and not overwrite:
        raise ValueError(f"output directory {out} already exists (pass overwrite to replace it)")
    dim = text_dim(text_cfg)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        stats = create_stats()
        ds = read_shards(paths, num_cpus=0.25, max_tasks=max_tasks).map_batches(
            _captions_for_encoding,  # type: ignore[arg-type]  # takes pyarrow batches only
            fn_kwargs={"stats": stats},
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
        per_shard: list[int] = []
        with_emb = 0
        pattern = str(tmp / SHARD_NAME.replace("{:06d}", "%06d"))
        with ShardWriter(pattern, maxcount=samples_per_shard, verbose=0) as w:
            for batch in ds.iter_batches(batch_format="numpy", batch_size=256):
                entries = [k for k in batch if k not in (KEY_COLUMN, "emb", "mask")]
                for i, key in enumerate(batch[KEY_COLUMN]):
                    sample: dict[str, Any] = {KEY_COLUMN: str(key)}
                    for k in entries:
                        value = batch[k][i]
                        if isinstance(value, bytes):  # missing entries come back as None/NaN
                            sample[k] = value
                    if CAPTION_ENTRY in sample:
                        sample[EMBEDDING_ENTRY] = _npz_bytes(batch["emb"][i], batch["mask"][i])
                        with_emb += 1
                    w.write(sample)
                    if not per_shard or per_shard[-1] == samples_per_shard:
                        per_shard.append(0)
                    per_shard[-1] += 1
        skipped: dict[str, int] = ray.get(stats.get.remote())
        info = {
            "format": ENCODING_FORMAT,
            "text": text_cfg.model_dump(),
            "dim": dim,
            "max_length": text_cfg.max_length,
            "emb_dtype": "float16",
            "entry": EMBEDDING_ENTRY,
            "num_samples": with_emb,
        }
        (tmp / ENCODING_FILE).write_text(json.dumps(info, indent=2) + "\n")
        shards = sorted(p.name for p in tmp.glob("*.tar"))[: len(per_shard)]
        for extra in sorted(tmp.glob("*.tar"))[len(per_shard) :]:  # an empty first shard
            extra.unlink()
        summary = {
            "format": SHARD_FORMAT,
            "version": SHARD_FORMAT_VERSION,
            "shards": shards,
            "shard_samples": per_shard,
            "samples": sum(per_shard),
            "samples_per_shard": samples_per_shard,
            "samples_with_embeddings": with_emb,
            "skipped": skipped,
            "skipped_total": sum(skipped.values()),
            "source": paths[0] if len(paths) == 1 else f"{len(paths)} shards in {in_dir}",
            "seconds": round(time.perf_counter() - t0, 3),
            "text_encoding": ENCODING_FILE,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        return summary
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
