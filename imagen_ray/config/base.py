"""What every config model shares: the strict base class, the error type, the format version."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

CONFIG_FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says what to change."""


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def check_version(v: int) -> int:
    """The ``version`` field of a file: only :data:`CONFIG_FORMAT_VERSION` is read."""
    if v != CONFIG_FORMAT_VERSION:
        raise ValueError(
            f"config format version {v} is not supported (this imagen-ray reads version "
            f"{CONFIG_FORMAT_VERSION})"
        )
    return v


def submodel(annotation: Any) -> type[BaseModel] | None:
    """The config model inside a field's type (``X``, ``X | None``, ``tuple[X, ...]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = submodel(arg)
        if found is not None:
            return found
    return None
