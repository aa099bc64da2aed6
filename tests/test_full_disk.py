"""A full disk: every writer stops with an error naming the path and the space it needs,
leaves the previous file or directory intact and nothing half-written.

Each test mounts a small tmpfs of its own (``mount -t tmpfs -o size=…``); where the test
cannot mount (no root, no CAP_SYS_ADMIN) it is skipped with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagen_ray.cli import main
from imagen_ray.fs import NoSpaceError, atomic_dir, atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
Mount = Callable[[int], Path]


def _mount(path: Path, kib: int, *, remount: bool = False) -> None:
    opts = f"{'remount,' if remount else ''}size={kib}k"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a {kib} KiB tmpfs here (needs root): {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Mount]:
    """``small_disk(kib)``: a fresh tmpfs of that size, unmounted after the test."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        _mount(path, kib)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path, leave_kib: int) -> None:
    """Fill the disk up to ``leave_kib`` KiB free."""
    import shutil

    free = shutil.disk_usage(disk).free - leave_kib * 1024
    if free > 0:
        (disk / "filler").write_bytes(b"\0" * free)


def _listing(disk: Path) -> list[str]:
    return sorted(str(p.relative_to(disk)) for p in disk.rglob("*"))


def test_a_file_that_does_not_fit_names_the_path_and_keeps_the_old_one(
    small_disk: Mount,
) -> None:
    disk = small_disk(64)
    target = disk / "a.bin"
    atomic_write_bytes(target, b"old" * 1000)
    with pytest.raises(NoSpaceError) as err:
        atomic_write_bytes(target, b"x" * 200_000)
    msg = str(err.value)
    assert str(target) in msg and "200 kB (200000 bytes)" in msg and "free there" in msg
    assert err.value.needed == 200_000 and err.value.free is not None
    assert target.read_bytes() == b"old" * 1000  # the previous content, whole
    assert _listing(disk) == ["a.bin"]  # no temporary left


def test_the_error_crosses_process_boundaries_whole() -> None:
    """Ray pickles what a worker raises: the path, sizes and note survive."""
    import pickle

    err = NoSpaceError("/d/x.png", 10, 2, more_than=True, note="kept")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, NoSpaceError) and str(back) == str(err)
    assert (back.path, back.needed, back.free) == ("/d/x.png", 10, 2)


def test_a_directory_that_does_not_fit_leaves_the_old_one(small_disk: Mount) -> None:
    disk = small_disk(128)
    target = disk / "d"
    with atomic_dir(target) as tmp:
        (tmp / "one").write_bytes(b"1" * 10_000)
    with pytest.raises(NoSpaceError) as err, atomic_dir(target) as tmp:
        for i in range(40):  # 40 x 10 kB into 128 KiB
            (tmp / f"part{i}").write_bytes(b"2" * 10_000)
    assert "needs more than" in str(err.value) and str(target) in str(err.value)
    assert _listing(disk) == ["d", "d/one"]
    assert (target / "one").read_bytes() == b"1" * 10_000


def test_saving_a_cascade_is_refused_before_a_byte_is_written(
    small_disk: Mount, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """imagen-ray init (Cascade.save, as export and assemble write stages): the stage's
    weights do not fit, so nothing is written; the cascade saved before is still whole."""
    from imagen_ray.cascade import Cascade

    disk = small_disk(40 * 1024)
    out = disk / "cascade"
    cfg = ["--config", str(ROOT / "configs/tiny/cascade.yaml")]
    assert main(["init", *cfg, "--out", str(out)]) == 0
    saved = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _fill(disk, leave_kib=512)
    before = _listing(disk)
    assert main(["init", *cfg, "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "imagen-ray init: error: no space left to write" in err
    need = re.search(rf"write {re.escape(str(out))}: it needs [\d.]+ MB \((\d+) bytes\)", err)
    assert need and int(need.group(1)) > 26e6 and "free there" in err  # the weights: 26.3 MB
    assert _listing(disk) == before
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == saved
    Cascade.load(out)  # loads


RAY_NUM_CPUS = 2


@pytest.mark.slow
def test_generate_on_a_full_disk_stops_keeps_whole_images_and_resumes(
    ray_cluster: None, small_disk: Mount, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    overrides = [f"stages.{i}.unet.{k}=16" for i in (0, 1) for k in ("channels", "head_dim")]
    cfg = load_cascade_config(ROOT / "configs/tiny/cascade.yaml", overrides)
    cascade = Cascade.from_config(cfg, seed=1).save(tmp_path / "c")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red circle number {i}\n" for i in range(12)))
    disk = small_disk(160)
    out = disk / "out"
    cmd = ["generate", "--cascade", str(cascade), "--prompts", str(prompts), "--out", str(out)]
    cmd += ["--sampling", "base.steps=1", "--sampling", "sr64.steps=1", "--no-progress"]
    cmd += ["--batch-size", "2", "--num-cpus", "0.5"]
    _fill(disk, leave_kib=60)  # room for a few 64 px images and their sidecars, not 12

    assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "no space left to write" in err and str(out) in err
    assert "the same command makes the rest once there is space" in err
    pngs = sorted((out / "images").glob("*.png"))
    assert 0 < len(pngs) < 12
    for png in pngs:  # every image that is there is whole
        assert np.asarray(Image.open(png)).shape == (64, 64, 3)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporaries
    kept = {p.name: p.read_bytes() for p in pngs}

    (disk / "filler").unlink()
    _mount(disk, 4096, remount=True)
    assert main(cmd) == 0
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == 12 == len(list((out / "images").glob("*.png")))
    assert len({r["file"] for r in manifest}) == 12  # none twice
    assert {n: (out / "images" / n).read_bytes() for n in kept} == kept  # kept, not redone
