"""Reading config files: YAML, dotted ``--set`` overrides, validation with readable errors.

There are three file types, told apart by their top-level keys:

    run      ``text``, ``stage``, ``data``, ``train``, ``wandb``   (configs/tiny/base.yaml)
    cascade  ``text`` and ``stages``                               (configs/tiny/cascade.yaml)
    serve    ``serve`` alone                                       (configs/tiny/serve.yaml)

Unknown keys are rejected, values are validated, and errors name the key, the bad value and
what is allowed. Configs cross Ray boundaries as plain dicts (``cfg.model_dump()``) and are
rebuilt with ``Model.model_validate(d)`` on the other side.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from imagen_ray.config.base import ConfigError, submodel
from imagen_ray.config.model import (
    CascadeConfig,
    SamplingConfig,
    StageConfig,
    TextEncoderConfig,
    UNetConfig,
)
from imagen_ray.config.run import RunConfig
from imagen_ray.config.serve import (
    ServeConfig,
    ServeDeploymentConfig,
    ServeFileConfig,
    ServeStageDefaultsConfig,
)

M = TypeVar("M", bound=BaseModel)
FileKind = Literal["run", "cascade", "serve"]

# --------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML: ``true``, ``1e-4``, ``[1, 2]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value {raw!r} is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (list items by index)."""
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = out
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                node = node[_index(part, node, where, item)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {where!r} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, node, ".".join(path), item)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: cannot set {last!r} inside a value")
    return out


def _index(part: str, node: list[Any], where: str, item: str) -> int:
    if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"override {item!r}: {where!r} needs a list index in 0..{len(node) - 1}, got {part!r}"
        )
    return int(part)


# --------------------------------------------------------------------------- validation

# Models whose unknown-key errors list the valid keys (by pydantic's error title).
_MODELS: dict[str, type[BaseModel]] = {
    m.__name__: m
    for m in (
        RunConfig,
        CascadeConfig,
        ServeFileConfig,
        StageConfig,
        UNetConfig,
        TextEncoderConfig,
        SamplingConfig,
        ServeConfig,
        ServeDeploymentConfig,
        ServeStageDefaultsConfig,
    )
}

_RUN_SECTIONS = tuple(k for k in RunConfig.model_fields if k != "version")
# Top-level keys that belong to another file type: (model, key) -> what to do instead.
_MISPLACED: dict[tuple[str, str], str] = {
    ("RunConfig", "serve"): "serve settings live in their own file, a top-level `serve:` "
    "mapping like configs/tiny/serve.yaml (`imagen-ray serve --config SERVE.yaml`); move "
    "this section there",
    **{
        ("ServeFileConfig", key): "a serve file holds only `serve:` (and `version`); "
        f"{key} belongs in a run file"
        for key in _RUN_SECTIONS
    },
}


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's error list into lines naming the key, the value and what is allowed."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            misplaced = (
                _MISPLACED.get((err.title, str(e["loc"][0]))) if len(e["loc"]) == 1 else None
            )
            hint = f": {misplaced}" if misplaced else _known_keys_hint(err.title, e["loc"])
            msg = "unknown key" + hint
        value = e.get("input")
        shown = "" if e["type"] == "missing" else f" (got {value!r})"
        if isinstance(value, dict):
            shown = ""
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


def _known_keys_hint(title: str, loc: Sequence[int | str]) -> str:
    model: type[BaseModel] | None = _MODELS.get(title)
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = submodel(field.annotation) if field else None
    if model is None:
        return ""
    return "; valid keys here: " + ", ".join(sorted(model.model_fields))


def validate(model: type[M], data: Any, source: str = "<dict>") -> M:
    """Validate ``data`` as ``model``; raise ConfigError with a readable message."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


# --------------------------------------------------------------------------- files


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or non-mapping content is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def file_kind(data: dict[str, Any]) -> FileKind:
    """Which file type a top-level mapping is: ``stages`` makes a cascade file; ``serve``
    without any run section (``text``, ``stage``, ...) a serve file; anything else a run file
    (so a run file with a ``serve:`` section is refused with a message saying where it goes)."""
    if "stages" in data:
        return "cascade"
    if "serve" in data and not any(k in data for k in _RUN_SECTIONS):
        return "serve"
    return "run"


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a per-stage run config file with ``--set`` style overrides."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate(RunConfig, data, str(path))


def load_cascade_config(path: str | Path, overrides: Sequence[str] = ()) -> CascadeConfig:
    """Load a cascade file; ``stages`` items may be inline mappings or paths of run files.

    A path item contributes its ``stage`` section; its ``text`` section must equal the
    cascade's (one text encoder conditions every stage).
    """
    p = Path(path)
    data = read_yaml(p)
    stages = data.get("stages")
    if isinstance(stages, list):
        resolved: list[Any] = []
        for i, item in enumerate(stages):
            if isinstance(item, str):
                run = load_run_config(p.parent / item)
                text = validate(TextEncoderConfig, data.get("text", {}), str(p))
                if run.text != text:
                    raise ConfigError(
                        f"{p}: stages[{i}] ({item}) uses text encoder {run.text.model_dump()} "
                        f"but the cascade uses {text.model_dump()}; they must match"
                    )
                resolved.append(run.stage.model_dump())
            else:
                resolved.append(item)
        data = {**data, "stages": resolved}
    data = apply_overrides(data, overrides)
    return validate(CascadeConfig, data, str(p))


def load_serve_file(path: str | Path, overrides: Sequence[str] = ()) -> ServeFileConfig:
    """Load a serve file (a top-level ``serve:`` mapping) with ``serve.key=value`` overrides."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate(ServeFileConfig, data, str(path))


def load_serve_config(
    path: str | Path, overrides: Sequence[str] = (), cascade: str | Path | None = None
) -> ServeConfig:
    """The ``serve:`` section of a serve file, with ``serve.key=value`` overrides and an
    optional cascade directory that replaces ``serve.cascade``."""
    cfg = load_serve_file(path, overrides).serve
    if cascade:
        cfg = cfg.model_copy(update={"cascade": str(cascade)})
    return cfg


def load_any_config(
    path: str | Path, overrides: Sequence[str] = ()
) -> RunConfig | CascadeConfig | ServeFileConfig:
    """Load a run, cascade or serve file, told apart by its top-level keys (:func:`file_kind`)."""
    kind = file_kind(read_yaml(path))
    if kind == "cascade":
        return load_cascade_config(path, overrides)
    if kind == "serve":
        return load_serve_file(path, overrides)
    return load_run_config(path, overrides)


def load_model_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig | CascadeConfig:
    """Load a run or cascade file (what defines U-Nets); a serve file is a ConfigError."""
    cfg = load_any_config(path, overrides)
    if isinstance(cfg, ServeFileConfig):
        raise ConfigError(
            f"{path} is a serve file; pass a run file (configs/tiny/base.yaml) or a cascade "
            "file (configs/tiny/cascade.yaml)"
        )
    return cfg


def to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (tuples written as lists)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
