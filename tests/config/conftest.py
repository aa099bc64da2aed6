"""Shared paths and helpers of the config tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from imagen_ray.config import ConfigError, load_any_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_YAML = sorted([*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")])
ALL_YAML_IDS = [str(p.relative_to(CONFIGS)) for p in ALL_YAML]
TINY_BASE = CONFIGS / "tiny" / "base.yaml"
TINY_SR = CONFIGS / "tiny" / "sr64.yaml"
TINY_CASCADE = CONFIGS / "tiny" / "cascade.yaml"
TINY_SERVE = CONFIGS / "tiny" / "serve.yaml"


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def config_error(path: Path, overrides: list[str]) -> str:
    """The message of the ConfigError that loading ``path`` with ``overrides`` raises."""
    with pytest.raises(ConfigError) as info:
        load_any_config(path, overrides)
    return str(info.value)
