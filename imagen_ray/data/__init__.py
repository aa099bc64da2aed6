"""Data: webdataset shards from folders, tables and the synthetic shapes set.

Names are re-exported lazily so that ``import imagen_ray.data`` stays light (no webdataset,
torch or ray): each submodule is imported on first attribute access.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagen_ray.data.shards import write_folder_shards, write_table_shards
    from imagen_ray.data.synthetic import heldout_prompts, render_sample, write_synthetic
    from imagen_ray.data.synthetic_spec import ATTRIBUTES, SyntheticSpec
    from imagen_ray.data.writer import (
        ShardSample,
        ShardWriteSummary,
        SkippedItem,
        read_summary,
        write_shards,
    )

_LAZY = MappingProxyType(
    {
        "ShardSample": "writer",
        "ShardWriteSummary": "writer",
        "SkippedItem": "writer",
        "read_summary": "writer",
        "write_shards": "writer",
        "write_folder_shards": "shards",
        "write_table_shards": "shards",
        "ATTRIBUTES": "synthetic_spec",
        "SyntheticSpec": "synthetic_spec",
        "heldout_prompts": "synthetic",
        "render_sample": "synthetic",
        "write_synthetic": "synthetic",
    }
)

__all__ = [
    "ATTRIBUTES",
    "ShardSample",
    "ShardWriteSummary",
    "SkippedItem",
    "SyntheticSpec",
    "heldout_prompts",
    "read_summary",
    "render_sample",
    "write_folder_shards",
    "write_shards",
    "write_synthetic",
    "write_table_shards",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'imagen_ray.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"imagen_ray.data.{module}"), name)
