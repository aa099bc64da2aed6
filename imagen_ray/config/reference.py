"""The config reference: one Markdown table row per key, generated from the models.

``imagen-ray config --reference`` prints it and the documentation embeds it (a test keeps
the two equal), so the reference cannot drift from the code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from imagen_ray.config.base import submodel
from imagen_ray.config.run import RunConfig
from imagen_ray.config.serve import ServeFileConfig

_HEAD = "| key | type | default | meaning |\n|---|---|---|---|\n"


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, meaning) for every field, recursively."""
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = submodel(field.annotation)
        if sub is not None and getattr(field.annotation, "__origin__", None) is tuple:
            # A list of mappings: one row for the list, then the keys of an item (``--set``
            # addresses item i as ``key.i.name``).
            default = "`[]`" if field.get_default() == () else "see `configs/`"
            rows.append(f"| `{key}` | list of mappings | {default} | {field.description} |")
            rows += config_reference(sub, f"{key}[i].")
            continue
        if sub is not None:
            rows += config_reference(sub, f"{key}.")
            continue
        typ = _type_name(field.annotation)
        default = "required" if field.is_required() else f"`{field.get_default()!r}`"
        rows.append(f"| `{key}` | {typ} | {default} | {field.description or ''} |")
    return rows


def _type_name(annotation: Any) -> str:
    args = getattr(annotation, "__args__", None)
    origin = getattr(annotation, "__origin__", None)
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is Literal and args:
        return " \\| ".join(f"`{a}`" for a in args)
    if args:
        return " \\| ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def config_reference_markdown() -> str:
    """The reference of a run file (one stage) and of a serve file, as Markdown tables."""
    return (
        "## Run file (`imagen-ray train --config`)\n\n"
        "One cascade stage and how to train it (`configs/tiny/base.yaml`). A cascade file "
        "(`configs/tiny/cascade.yaml`) has the same `text` section and `stages`: a list of "
        "`stage` sections or paths of run files.\n\n"
        + _HEAD
        + "\n".join(config_reference(RunConfig))
        + "\n\n## Serve file (`imagen-ray serve --config`)\n\n"
        "Ray Serve settings of a served cascade (`configs/tiny/serve.yaml`).\n\n"
        + _HEAD
        + "\n".join(config_reference(ServeFileConfig))
        + "\n"
    )
