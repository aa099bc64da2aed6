"""A cascade directory on the Hugging Face Hub: resolve a repo id to a local snapshot and load
it, and upload a cascade with its model card. ``huggingface_hub`` is imported only here,
inside the functions.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from imagen_ray.cascade.cascade import Cascade, TextEncoder
from imagen_ray.cascade.io import CONFIG, MANIFEST, CheckpointError
from imagen_ray.publish.card import CARD, model_card


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but at call time (it reads it once,
    at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_pretrained(
    dir_or_repo_id: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """A local cascade (or stage) directory for a directory or a Hub repo id.

    An existing directory is used as it is. Anything else is a repo id (``org/name``),
    downloaded with ``huggingface_hub.snapshot_download`` into the Hugging Face cache, or, when
    offline (``HF_HUB_OFFLINE=1``), read from that cache alone.

    Args:
        dir_or_repo_id: a local directory or ``org/name``.
        revision: a branch, tag or commit of the repo (default: main).
        cache_dir: the Hub cache (default: ``HF_HUB_CACHE`` / ``~/.cache/huggingface/hub``).

    Returns:
        The directory holding ``cascade.json`` (or a stage's ``config.json``).

    Raises:
        CheckpointError: not a directory and not a repo id, or not cached while offline
            (says how to fix it), or the snapshot holds no cascade.
    """
    local = Path(dir_or_repo_id)
    if local.is_dir():
        return local
    repo_id = str(dir_or_repo_id)
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        raise CheckpointError(
            f"{repo_id!r} is neither a directory nor a Hugging Face repo id (org/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    offline = _offline()
    try:
        path = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        )
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{repo_id!r} is not in the local Hugging Face cache"
            + (" and HF_HUB_OFFLINE=1 forbids downloading it" if offline else "")
            + ": download it once online (unset HF_HUB_OFFLINE, or run `hf download "
            f"{repo_id}`), or pass a local directory; cache searched: "
            f"{cache_dir or 'HF_HUB_CACHE / ~/.cache/huggingface/hub'}"
        ) from e
    except RepositoryNotFoundError as e:
        raise CheckpointError(
            f"the Hub has no repo {repo_id!r} (or it is private: log in with `hf auth login`)"
        ) from e
    if not (path / MANIFEST).is_file() and not (path / CONFIG).is_file():
        raise CheckpointError(
            f"{repo_id!r} (snapshot {path}) holds no {MANIFEST} or {CONFIG}: it is not an "
            "imagen-ray cascade"
        )
    return path


def from_pretrained(
    dir_or_repo_id: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: str = "auto",
    encoder: TextEncoder | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Cascade:
    """Load a cascade from a local directory or a Hugging Face Hub repo (``org/name``).

    A repo is downloaded into the Hugging Face cache, or read from it alone when offline
    (``HF_HUB_OFFLINE=1``); see :func:`resolve_pretrained`.

    Args:
        dir_or_repo_id: a cascade or stage directory, or a repo id.
        device: where the stages go.
        dtype: the U-Nets' inference dtype (default ``auto``: bfloat16 on CUDA).
        encoder: a loaded text encoder to reuse.
        revision: branch, tag or commit of the repo.
        cache_dir: the Hub cache (default ``HF_HUB_CACHE``).
    """
    path = resolve_pretrained(dir_or_repo_id, revision=revision, cache_dir=cache_dir)
    return Cascade.load(path, device=device, encoder=encoder, dtype=dtype)


def push_to_hub(
    cascade: Cascade,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    api: Any = None,
) -> Any:
    """Save ``cascade`` (safetensors + configs) with a generated model card ``README.md`` and
    upload the directory to the Hub repo ``repo_id``, created if missing.

    The weights are uploaded in the dtype they are in: load in float32 (the default of
    :func:`imagen_ray.publish.load_cascade` and :meth:`Cascade.load`) to share
    full-precision weights.

    Args:
        cascade: the cascade to share.
        repo_id: ``org/name`` (created if missing).
        private: create the repo private.
        token: Hub token (default: the logged-in one / ``HF_TOKEN``).
        commit_message: default ``"Upload imagen-ray cascade <stages>"``.
        api: a ``huggingface_hub.HfApi`` (default: ``HfApi(token=token)``), e.g. for another
            endpoint.

    Returns:
        What ``HfApi.upload_folder`` returns (the commit info).
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    names = [s.cfg.name for s in cascade.stage_list]
    with tempfile.TemporaryDirectory(prefix="imagen-ray-push-") as tmp:
        out = cascade.save(Path(tmp) / repo_id.split("/")[-1])
        (out / CARD).write_text(model_card(out, title=repo_id), encoding="utf-8")
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(out),
            commit_message=commit_message or f"Upload imagen-ray cascade {' + '.join(names)}",
        )
