"""Layers point down (docs/architecture.md, "Package layout"): the rules a lower package
keeps about what it imports, checked over every module's source with ``ast``.

Every import in a file counts: at the top, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imagen_ray

PACKAGE = Path(imagen_ray.__file__).parent

# Per package: the imagen_ray packages none of its modules may import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "config": ("cascade", "data", "train", "serve", "batch", "demo", "eval", "publish", "cli"),
    "cascade": ("publish", "serve", "train", "data", "batch", "demo", "cli"),
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    """``imagen_ray/config/run.py`` -> ``imagen_ray.config.run`` (a package: its name)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every ``imagen_ray...`` module that ``source`` (the module ``module``) imports,
    relative imports resolved; ``from a import b`` counts as ``a`` and ``a.b``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return {m for m in out if m == "imagen_ray" or m.startswith("imagen_ray.")}


def imports_of(path: Path) -> set[str]:
    return imported(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_checker_sees_imports_everywhere() -> None:
    """Imports inside functions, under TYPE_CHECKING, relative and ``from pkg import mod``."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from imagen_ray.cascade.stage import Stage\n"
        "def f():\n"
        "    import imagen_ray.data.metadata\n"
        "    from .. import cli\n"
        "    from imagen_ray import serve\n"
        "    import os\n"
    )
    found = imported(source, "imagen_ray.config.probe")
    assert {
        "imagen_ray.cascade.stage",
        "imagen_ray.data.metadata",
        "imagen_ray.cli",
        "imagen_ray.serve",
    } <= found
    assert "os" not in found
    assert "imagen_ray.config.cli" in imported(
        "from . import cli\n", "imagen_ray.config", is_package=True
    )
    assert len(modules()) > 50  # the walk finds the package's modules


def test_only_the_cli_and_entry_points_import_the_cli() -> None:
    offenders = {
        str(p.relative_to(PACKAGE.parent)): sorted(
            m for m in imports_of(p) if within(m, "imagen_ray.cli")
        )
        for p in modules()
        if p.parent != PACKAGE / "cli" and p.name != "__main__.py"
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_packages_do_not_import_higher_ones(package: str) -> None:
    banned = tuple(f"imagen_ray.{name}" for name in FORBIDDEN[package])
    offenders = {}
    for p in sorted((PACKAGE / package).rglob("*.py")):
        bad = sorted(m for m in imports_of(p) if any(within(m, b) for b in banned))
        if bad:
            offenders[str(p.relative_to(PACKAGE.parent))] = bad
    assert not offenders, f"{package}/ imports packages above it: {offenders}"
