"""Package attributes loaded on first use (PEP 562), for packages whose light parts (the
generation plan, the vocabularies) must import without torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_getattr(package: str, modules: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``package.<module>`` when one of its names is
    first asked for, and keeps the value on the package.

    Args:
        package: the package's ``__name__``.
        modules: submodule name -> the names it provides.
    """
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
