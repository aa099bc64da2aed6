"""Precomputed text embeddings on disk: the ``text.npz`` entry and ``encoding.json``.

The contract between the writer (``precompute.encode_shards``, ``imagen-ray data encode``)
and the reader (``pipeline.build_dataset``): each sample of an encoded shard holds a
``text.npz`` entry (float16 ``emb`` (L, D), bool ``mask`` (L,)), and ``encoding.json``
beside the shards records the text-encoder config that made them. A run reads the
embeddings only when that config equals its own ``text`` config (:func:`check_encoding`).

Light on purpose (numpy and the config only): both sides import it, so neither imports
the other.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imagen_ray.config import RunConfig, TextEncoderConfig

ENCODING_FILE = "encoding.json"
EMBEDDING_ENTRY = "text.npz"
ENCODING_FORMAT = 1
EMB_DTYPE = "float16"

# Captions are read from this entry (webdataset convention).
CAPTION_ENTRY = "txt"


def embedding_bytes(emb: np.ndarray, mask: np.ndarray) -> bytes:
    """emb (L, D), mask (L,) -> the ``text.npz`` entry (compressed; float16 and bool)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, emb=emb.astype(np.float16), mask=mask.astype(bool))
    return buf.getvalue()


def load_embedding(raw: bytes, shape: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """``text.npz`` bytes -> emb (L, D) float16, mask (L,) bool; ValueError when malformed."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        emb, mask = z["emb"].astype(np.float16), z["mask"].astype(bool)
    if emb.ndim != 2 or mask.shape != emb.shape[:1]:
        raise ValueError(f"emb {emb.shape} / mask {mask.shape} do not match")
    if shape is not None and emb.shape != tuple(shape):
        raise ValueError(f"emb has shape {emb.shape}, expected {tuple(shape)}")
    return emb, mask


def encoding_info(
    text: TextEncoderConfig, dim: int, num_samples: int, caption_key: str = CAPTION_ENTRY
) -> dict[str, Any]:
    """The content of ``encoding.json`` for shards encoded with ``text`` (width ``dim``)
    from the captions under ``caption_key``."""
    return {
        "format": ENCODING_FORMAT,
        "text": text.model_dump(),
        "dim": dim,
        "max_length": text.max_length,
        "emb_dtype": EMB_DTYPE,
        "entry": EMBEDDING_ENTRY,
        "num_samples": num_samples,
        "caption_key": caption_key,
    }


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
