"""Import weight of the light entry points: loading a config or the Serve ingress must not
import torch (an ingress replica with torch took ~360 MB and 8-15 s to start, ~180 MB and
3.8 s without). The lazy packages (:mod:`imagen_ray._lazy`) name each public name once, in
their TYPE_CHECKING imports."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from imagen_ray._lazy import type_checking_imports


@pytest.mark.parametrize(
    "module",
    ["imagen_ray.config", "imagen_ray.serve.ingress", "imagen_ray.serve.api", "imagen_ray.cascade"],
)
def test_light_modules_do_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False", f"importing {module} imported torch"


LAZY_PACKAGES = ["imagen_ray.cascade", "imagen_ray.data", "imagen_ray.diffusion"]


def _typed_names(package: str) -> dict[str, tuple[str, str]]:
    """What a type checker sees: the imports of the package's ``if TYPE_CHECKING:`` block."""
    tree = ast.parse(Path(importlib.import_module(package).__file__).read_text())
    names = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.unparse(stmt)
                names.update({a.asname or a.name: (stmt.module, a.name) for a in stmt.names})
    return names


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_package_names_are_the_typed_names(package: str) -> None:
    """``__all__``, ``dir()`` and the run-time values agree with the TYPE_CHECKING imports."""
    typed = _typed_names(package)
    pkg = importlib.import_module(package)
    assert typed, f"{package} has no TYPE_CHECKING imports"
    assert sorted(typed) == sorted(pkg.__all__)
    assert set(typed) <= set(dir(pkg))
    for name, (module, original) in typed.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), original), name
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pkg.not_a_name  # noqa: B018


def test_lazy_names_load_only_their_module() -> None:
    """Listing ``imagen_ray.cascade`` and taking the plan's names leave torch unimported."""
    code = (
        "import sys, imagen_ray.cascade as c; names = dir(c); "
        "from imagen_ray.cascade import GenerationPlan, plan_generation; "
        "print('plan_generation' in names, 'Cascade' in names, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["True", "True", "False"]


def test_type_checking_block_holds_only_the_package_imports() -> None:
    source = "if TYPE_CHECKING:\n    from imagen_ray.cascade.plan import PlanError as Error\n"
    assert type_checking_imports(source, "imagen_ray.cascade") == {"Error": ("plan", "PlanError")}
    for stray in ("import torch", "from torch import Tensor", "from .plan import PlanError"):
        with pytest.raises(ValueError, match=r"may only import from imagen_ray\.cascade\."):
            type_checking_imports(f"if TYPE_CHECKING:\n    {stray}\n", "imagen_ray.cascade")
