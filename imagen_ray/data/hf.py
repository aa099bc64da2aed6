"""Shards from a Hugging Face dataset on disk (``imagen-ray data shards --from-hf``).

Reads a dataset saved with ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (a
split is chosen from a DatasetDict) or Parquet files (one file, or a folder of them, as
``Dataset.to_parquet`` or the Hub write them), through the ``datasets`` library (the
optional ``hf`` extra, imported only here). The image column may be a ``datasets.Image``
feature (read undecoded: the stored bytes, or the file its ``path`` names), raw bytes, or
a file path; each image goes through the same check as every other source
(:func:`imagen_ray.data.shards.image_sample`), and every scalar column other than the image
and caption columns is kept in the ``json`` entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from imagen_ray.data.shards import image_sample, sanitize_key
from imagen_ray.data.writer import ShardSample, ShardWriteSummary, SkippedItem, write_shards

_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(
            "--from-hf needs the Hugging Face `datasets` library: pip install 'imagen-ray[hf]'"
        ) from e
    return datasets


def load_hf_dataset(path: str | Path, *, split: str = "train") -> Any:
    """A ``datasets.Dataset`` from a ``save_to_disk`` folder or Parquet file(s).

    Args:
        path: the saved dataset folder, a ``.parquet`` file, or a folder of them.
        split: the split to take when the folder holds a DatasetDict.

    Raises:
        ImportError: ``datasets`` is not installed (names the extra).
        FileNotFoundError: nothing at ``path``, or a folder with neither a saved dataset
            nor Parquet files.
        ValueError: ``split`` is not one of the DatasetDict's splits.
    """
    datasets = _datasets()
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"Hugging Face dataset {str(p)!r} does not exist")
    if p.is_dir() and any((p / m).is_file() for m in _SAVED_MARKERS):
        ds = datasets.load_from_disk(str(p))
    else:
        files = [p] if p.is_file() else sorted(p.rglob("*.parquet"))
        if not files or any(f.suffix.lower() != ".parquet" for f in files):
            raise FileNotFoundError(
                f"{str(p)!r} is neither a dataset saved with save_to_disk (no "
                f"{' / '.join(_SAVED_MARKERS)}) nor Parquet files"
            )
        ds = datasets.Dataset.from_parquet([str(f) for f in files])
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(
                f"{str(p)!r} holds splits {sorted(ds)}, not {split!r}: choose one with --split"
            )
        ds = ds[split]
    return ds


def _scalar_meta(row: Mapping[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """Columns that fit a json entry: scalars and lists of scalars (no bytes, no images)."""
    scalar = (str, int, float, bool, type(None))
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in skip:
            continue
        if isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v)):
            out[k] = v
    return out


def _image_bytes(value: Any, base: Path) -> bytes | str:
    """Encoded image bytes from an undecoded Image value, bytes or a path; or why not."""
    if isinstance(value, Mapping):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value.strip():
        p = Path(value)
        try:
            return (p if p.is_absolute() else base / p).read_bytes()
        except FileNotFoundError:
            return f"no such file: {value}"
        except OSError as e:
            return f"cannot read {value}: {e}"
    return "no image value"


def _items(
    ds: Any,
    base: Path,
    *,
    image_column: str,
    caption_column: str,
    id_column: str,
    min_size: int,
) -> Iterator[ShardSample | SkippedItem]:
    for i, row in enumerate(ds):
        row_id = row.get(id_column)
        has_id = row_id is not None and str(row_id).strip() != ""
        source = str(row_id) if has_id else f"row {i}"
        key = sanitize_key(str(row_id)) if has_id else f"row-{i:09d}"
        data = _image_bytes(row.get(image_column), base)
        if isinstance(data, str):
            yield SkippedItem(source, "missing_image", data)
            continue
        caption = row.get(caption_column)
        yield image_sample(
            Path(source),
            key=key,
            caption="" if caption is None else str(caption).strip(),
            source=source,
            meta=_scalar_meta(row, (image_column, caption_column)),
            min_size=min_size,
            data=data,
        )


def write_hf_shards(
    path: str | Path,
    out_dir: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    id_column: str = "id",
    split: str = "train",
    samples_per_shard: int = 1000,
    min_size: int = 0,
    progress: bool = True,
) -> ShardWriteSummary:
    """Shards from a Hugging Face dataset on disk (see the module docstring).

    Keys are the sanitised ``id_column`` value when the dataset has one, else
    ``row-000000042``; json ``source`` is the id or ``row N``.

    Args:
        path: a ``save_to_disk`` folder, a ``.parquet`` file or a folder of them.
        out_dir: the shard directory.
        image_column: the image column (``datasets.Image``, bytes, or file paths).
        caption_column: the caption column.
        id_column: optional column of unique row ids used for keys.
        split: the split of a saved DatasetDict.
        samples_per_shard: samples per tar file.
        min_size: skip images whose short side is smaller (0: off).
        progress: show a progress bar.

    Returns:
        The write summary.

    Raises:
        ValueError: the image or caption column is absent (names the columns there are).
    """
    datasets = _datasets()
    ds = load_hf_dataset(path, split=split)
    for what, col in (("image", image_column), ("caption", caption_column)):
        if col not in ds.column_names:
            raise ValueError(
                f"dataset {str(path)!r} has no {what} column {col!r}; its columns are "
                f"{ds.column_names} (choose with --{what}-column)"
            )
    if isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    p = Path(path).expanduser().resolve()
    base = p if p.is_dir() else p.parent
    return write_shards(
        _items(
            ds,
            base,
            image_column=image_column,
            caption_column=caption_column,
            id_column=id_column,
            min_size=min_size,
        ),
        out_dir,
        samples_per_shard=samples_per_shard,
        source=f"hf {p}" + (f" split {split}" if split != "train" else ""),
        progress=progress,
        total=len(ds),
    )
