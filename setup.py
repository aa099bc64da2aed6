"""Package discovery that pyproject.toml cannot state: ``configs/`` ships as ``imagen_ray.configs``.

Everything else (metadata, dependencies, entry point, package data) is in pyproject.toml.
The top-level ``configs/`` folder stays where people look for it and is mapped into the
package, so a wheel (``pip install .``) carries the configs that ``imagen-ray demo`` reads
through importlib.resources; an editable install maps the same folder.
"""

from setuptools import find_namespace_packages, find_packages, setup

CONFIG_DIRS = [f"imagen_ray.configs.{name}" for name in find_namespace_packages("configs")]

setup(
    packages=[
        *find_packages(include=["imagen_ray", "imagen_ray.*"]),
        "imagen_ray.configs",
        *CONFIG_DIRS,  # data-only folders, listed so that setuptools does not warn about them
    ],
    package_dir={"imagen_ray.configs": "configs"},
)
