"""A plain (non-editable) install carries what the package reads at run time: the demo's
configs (``configs/`` shipped as ``imagen_ray.configs``), the report template and the web page."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "imagen_ray", "configs")
# Run in a fresh interpreter that has only the installed package: no torch, no source tree.
PROBE = """
import json, sys
from imagen_ray.demo.configs import configs_root, demo_configs_dir
from importlib import resources
demo = demo_configs_dir()
print(json.dumps({
    "demo": str(demo),
    "files": sorted(p.name for p in demo.iterdir()),
    "tiny": sorted(p.name for p in (configs_root() / "tiny").glob("*.yaml")),
    "template": resources.files("imagen_ray.demo").joinpath("report.html").is_file(),
    "page": resources.files("imagen_ray.serve").joinpath("page.html").is_file(),
    "torch": "torch" in sys.modules,
}))
"""


def _copy_sources(dst: Path) -> Path:
    """The files a build reads, copied so that the build writes nothing into the checkout."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dst.mkdir(parents=True)
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        else:
            shutil.copy2(src, dst / name)
    return dst


def _probe(python: Path, cwd: Path, extra_site: Path | None = None) -> dict:
    code = PROBE
    if extra_site is not None:  # an install into a --prefix: make it a site directory
        code = f"import site; site.addsitedir({str(extra_site)!r})\n" + code
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    r = subprocess.run(
        [str(python), "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _venv(path: Path) -> Path:
    """A fresh venv without pip or system site-packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    return path / "bin" / "python"


def _pip(*args: str, cwd: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


@pytest.mark.slow
def test_wheel_and_editable_installs_find_the_demo_configs(tmp_path: Path) -> None:
    src = _copy_sources(tmp_path / "src")
    _pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), ".", cwd=src)
    (wheel,) = (tmp_path / "dist").glob("imagen_ray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("demo/base.yaml", "demo/sr64.yaml", "demo/serve.yaml", "tiny/cascade.yaml"):
        assert f"imagen_ray/configs/{f}" in names
    assert {"imagen_ray/demo/report.html", "imagen_ray/serve/page.html"} <= names

    # 1. the wheel in a fresh venv (no system site-packages, no dependencies), run elsewhere
    python = _venv(tmp_path / "venv")
    _pip("--python", str(python), "install", "--no-deps", str(wheel), cwd=tmp_path)
    shutil.rmtree(src)  # nothing may come from the sources any more
    run_dir = tmp_path / "elsewhere"
    run_dir.mkdir()
    got = _probe(python, run_dir)
    site = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
        ).strip()
    )
    assert Path(got["demo"]) == site / "imagen_ray" / "configs" / "demo"
    assert got["files"] == ["base.yaml", "serve.yaml", "sr64.yaml"]
    assert got["tiny"] == sorted(p.name for p in (ROOT / "configs" / "tiny").glob("*.yaml"))
    assert got["template"] and got["page"] and not got["torch"]

    # 2. an editable install maps the same folder of the checkout. --ignore-installed: without
    # it `pip install --prefix` first uninstalls this environment's own imagen-ray, which
    # broke every later test that starts a process.
    src = _copy_sources(tmp_path / "src2")
    prefix = tmp_path / "prefix"
    _pip(
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--ignore-installed",
        "-e",
        ".",
        "--prefix",
        str(prefix),
        cwd=src,
    )
    (editable_site,) = prefix.glob("lib/python*/site-packages")
    got = _probe(_venv(tmp_path / "venv2"), run_dir, extra_site=editable_site)
    assert Path(got["demo"]) == src / "configs" / "demo"
    assert got["files"] == ["base.yaml", "serve.yaml", "sr64.yaml"]
    # and this environment still has its own install
    ours = _probe(Path(sys.executable), run_dir)
    assert ours["files"] == ["base.yaml", "serve.yaml", "sr64.yaml"]
