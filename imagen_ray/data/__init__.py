"""Data: webdataset shards from folders, tables and the synthetic shapes set.

Names load their module on first use (PEP 562), so that ``import imagen_ray.data`` stays
light (no webdataset, torch or ray).
"""

# The TYPE_CHECKING imports are the package's names: imagen_ray._lazy builds __all__ from them.
# ruff: noqa: F401

from __future__ import annotations

from typing import TYPE_CHECKING

from imagen_ray._lazy import lazy_package

if TYPE_CHECKING:
    from imagen_ray.data.shards import write_folder_shards, write_table_shards
    from imagen_ray.data.synthetic import heldout_prompts, render_sample, write_synthetic
    from imagen_ray.data.synthetic_spec import SyntheticSpec
    from imagen_ray.data.synthetic_vocab import ATTRIBUTES
    from imagen_ray.data.writer import (
        ShardSample,
        ShardWriteSummary,
        SkippedItem,
        read_summary,
        write_shards,
    )

__getattr__, __dir__ = lazy_package(__name__)
