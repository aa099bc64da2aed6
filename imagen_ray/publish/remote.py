"""A cascade on object storage (``s3://``, ``gs://``): each directory is downloaded to a
temporary local directory, loaded, and removed (:func:`imagen_ray.storage.local_dir`)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import torch

from imagen_ray import storage
from imagen_ray.cascade.cascade import Cascade, TextEncoder


def load_cascade(
    path: str | Path | Sequence[str | Path],
    *,
    device: torch.device | str = "cpu",
    encoder: TextEncoder | None = None,
    dtype: str = "float32",
) -> Cascade:
    """Load a saved cascade directory, a single stage directory (a one-stage cascade), or a
    list of stage directories in order, each local or a URI.

    Every stage must expect the same text encoder config; sizes must chain. Local
    directories load as :meth:`Cascade.load` loads them.

    Args:
        path: see above; local directories or URIs (``s3://...``, ``gs://...``: each is
            downloaded to a temporary directory, removed once the weights are loaded).
        device: where the stages go.
        encoder: a loaded text encoder to reuse (default: built on first use).
        dtype: inference dtype of the U-Nets (``auto``: bfloat16 on CUDA, float32
            elsewhere; see :meth:`imagen_ray.cascade.Stage.to_inference`). The default keeps
            the saved float32 weights exactly.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    with ExitStack() as stack:
        local = [stack.enter_context(storage.local_dir(p, what="cascade")) for p in paths]
        where = local[0] if isinstance(path, (str, Path)) else local
        return Cascade.load(where, device=device, encoder=encoder, dtype=dtype)
