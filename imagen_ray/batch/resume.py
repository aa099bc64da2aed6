"""Resuming a batch run: which planned images are done, and the manifest rebuilt from them."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from imagen_ray import storage

MANIFEST = "manifest.jsonl"
# Fields that must match for an existing image to count as this run's image.
_SAME = ("prompt", "seed", "negative_prompt", "stages", "sampling", "dtype")
# Records written before a field existed: what that run used.
_BEFORE = {"dtype": "float32"}


def sidecar_name(record: dict[str, Any]) -> str:
    """The JSON record beside an image (relative to out); it is written after the image and
    marks it done."""
    return PurePosixPath(record["file"]).with_suffix(".json").as_posix()


def sidecar(out: str | Path, record: dict[str, Any]) -> str:
    """:func:`sidecar_name` under ``out`` (a local path or a URI)."""
    return storage.join(out, sidecar_name(record))


def split_done(out: str | Path, records: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(done, todo): done when the image and its record exist and match this run.

    Args:
        out: the output directory, local or a URI (listed once).

    Raises:
        ValueError: a record there was made with other settings (they are named).
    """
    done, todo = [], []
    present = storage.list_files(out)
    for r in records:
        side = sidecar(out, r)
        if not (sidecar_name(r) in present and r["file"] in present):
            todo.append(r)
            continue
        try:
            old = json.loads(storage.read_text(side))
        except (json.JSONDecodeError, UnicodeDecodeError):
            todo.append(r)  # a torn write from an older crash: make it again
            continue
        was = _flatten({k: old.get(k, _BEFORE.get(k)) for k in _SAME})
        now = _flatten({k: r[k] for k in _SAME})
        diff = [
            f"{k}: {was.get(k)!r} there, {now.get(k)!r} now" for k in now if was.get(k) != now[k]
        ]
        diff += [f"{k}: {was[k]!r} there, unset now" for k in was if k not in now]
        if diff:
            raise ValueError(
                f"{side} was made with other settings ({'; '.join(diff[:4])}); use a new "
                "--out directory, or --overwrite to replace the images there"
            )
        done.append(old)
    return done, todo


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (to name the settings that differ)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_manifest(out: str | Path, records: list[dict[str, Any]]) -> str:
    """Rebuild ``manifest.jsonl`` from the per-image records, in plan order (atomic)."""
    lines = []
    present = storage.list_files(out)
    for r in records:
        side = sidecar(out, r)
        if sidecar_name(r) not in present:
            raise RuntimeError(f"{side} is missing after the run; run the command again")
        lines.append(json.dumps(json.loads(storage.read_text(side))))
    path = storage.join(out, MANIFEST)
    text = "".join(line + "\n" for line in lines)
    if MANIFEST in present and storage.read_text(path) == text:
        return path  # a run with nothing to do writes nothing
    storage.write_bytes(path, text.encode("utf-8"))
    return path
