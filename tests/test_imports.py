"""Import weight of the light entry points: loading a config or the Serve ingress must not
import torch (an ingress replica with torch took ~360 MB and 8-15 s to start, ~180 MB and
3.8 s without)."""

from __future__ import annotations

import subprocess
import sys

import pytest


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


def test_lazy_package_names_resolve() -> None:
    """The lazily loaded names of ``imagen_ray.cascade`` and ``imagen_ray.diffusion`` exist."""
    import imagen_ray.cascade as cascade
    import imagen_ray.diffusion as diffusion

    for pkg in (cascade, diffusion):
        missing = [n for n in pkg.__all__ if getattr(pkg, n, None) is None]
        assert not missing, f"{pkg.__name__} lacks {missing}"
