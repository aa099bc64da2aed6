"""Where the shipped configs are: ``imagen_ray.configs``, found through importlib.resources.

The repository's top-level ``configs/`` is the package ``imagen_ray.configs`` in a wheel and
in an editable install (``setup.py`` maps it); when ``imagen_ray`` is imported straight from
a checkout that was never installed (``PYTHONPATH=.``), the checkout's ``configs/`` is used.
Standard library only: this must import where torch is absent.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE = "imagen_ray.configs"
DEMO_FILES = ("base.yaml", "sr64.yaml", "serve.yaml")


def configs_root() -> Path:
    """The directory of the shipped configs (``tiny/``, ``small/``, ``paper/``, ``demo/``, ...).

    Raises:
        FileNotFoundError: neither the installed package data nor a checkout's ``configs/``
            is there.
    """
    try:
        root = resources.files(PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "configs"
        if (checkout / "__init__.py").is_file():
            return checkout
        raise FileNotFoundError(
            f"the package {PACKAGE} is not installed and {checkout} does not exist; "
            "reinstall imagen-ray (pip install .)"
        ) from None
    if not isinstance(root, Path):  # a zipped install: no directory to hand to the loaders
        raise FileNotFoundError(f"{PACKAGE} is not a directory on disk ({root}); unzip it")
    return root


def demo_configs_dir() -> Path:
    """The demo's configs: a directory with base.yaml, sr64.yaml and serve.yaml.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
    """
    path = configs_root() / "demo"
    missing = [name for name in DEMO_FILES if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"demo configs {missing} are missing from {path}")
    return path
