"""Package attributes loaded on first use (PEP 562), for packages whose light parts (the
generation plan, the vocabularies) must import without torch.

A lazy package lists its public names once, as the imports of its ``if TYPE_CHECKING:``
block: type checkers read them there (with their real types), and :func:`lazy_package`
reads the same block from the package's source to build ``__all__``, ``__dir__`` and the
``__getattr__`` that imports a name's module when the name is first asked for::

    if TYPE_CHECKING:
        from imagen_ray.cascade.stage import Stage

    __getattr__, __dir__ = lazy_package(__name__)

``__all__`` is set on the module at run time and not written in the source: a type checker
that saw an ``__all__`` it cannot evaluate would treat every other name as private.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def type_checking_imports(source: str, package: str) -> dict[str, tuple[str, str]]:
    """The names a package's ``if TYPE_CHECKING:`` block imports from its own submodules.

    Args:
        source: the package's ``__init__.py``.
        package: the package's ``__name__``.

    Returns:
        public name -> (submodule, its name there), in source order.

    Raises:
        ValueError: the block holds something other than ``from <package>.<module> import``
            statements (a name that would be typed but never loaded).
    """
    prefix = f"{package}."
    names: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.If) and _is_type_checking(node.test)):
            continue
        for stmt in node.body:
            module = stmt.module if isinstance(stmt, ast.ImportFrom) and not stmt.level else None
            if not isinstance(stmt, ast.ImportFrom) or not module or not module.startswith(prefix):
                raise ValueError(
                    f"{package}: the TYPE_CHECKING block may only import from {prefix}<module>"
                    f" (line {stmt.lineno}: {ast.unparse(stmt)})"
                )
            for alias in stmt.names:
                names[alias.asname or alias.name] = (module.removeprefix(prefix), alias.name)
    return names


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def lazy_package(package: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` of a lazy package; sets its ``__all__``.

    The names are those of the package's ``if TYPE_CHECKING:`` imports. A name's module is
    imported when the name is first asked for, and the value is kept on the package.

    Args:
        package: the package's ``__name__``; call this from its ``__init__.py``.
    """
    module = sys.modules[package]
    where = type_checking_imports(Path(str(module.__file__)).read_text(), package)
    vars(module)["__all__"] = sorted(where)

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        submodule, original = where[name]
        value = getattr(importlib.import_module(f"{package}.{submodule}"), original)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(module), *where})

    return __getattr__, __dir__
