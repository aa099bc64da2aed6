"""Fixtures of the pipeline tests: tiny webdataset shards written with ``ShardWriter``.

Images are small solid-colour (or gradient) PNG/JPEG files of varied sizes; captions are
short sentences. Helpers are handed to tests as fixtures (this directory is not a package).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "purple": (140, 40, 180),
    "white": (250, 250, 250),
}

Sample = dict[str, Any]


def encode_image(w: int, h: int, colour: tuple[int, int, int], fmt: str, gradient: bool) -> bytes:
    """A w x h image as PNG or JPEG bytes (solid colour, or a horizontal gradient)."""
    arr = np.empty((h, w, 3), np.uint8)
    arr[:] = colour
    if gradient:
        arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
        arr[..., 1] = np.linspace(0, 255, h, dtype=np.uint8)[:, None]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if fmt == "jpg" else "PNG")
    return buf.getvalue()


def make_sample(
    key: str,
    w: int = 24,
    h: int = 20,
    *,
    colour: str = "red",
    fmt: str = "png",
    caption: str | None = "",
    gradient: bool = False,
    image: bytes | None = None,
    with_image: bool = True,
) -> Sample:
    """A webdataset sample dict (``__key__``, image entry, ``txt``, ``json``)."""
    if caption == "":
        caption = f"a {colour} picture of size {w} by {h}"
    sample: Sample = {"__key__": key}
    if with_image:
        sample[fmt] = (
            image if image is not None else encode_image(w, h, COLOURS[colour], fmt, gradient)
        )
    if caption is not None:
        sample["txt"] = caption.encode("utf-8")
    sample["json"] = json.dumps({"width": w, "height": h, "source": "test"}).encode()
    return sample


def good_samples(n: int, prefix: str = "s") -> list[Sample]:
    """n valid samples: sides 16..31 px (aspect < 2), alternating PNG/JPEG, six colours."""
    names = list(COLOURS)
    out = []
    for i in range(n):
        w, h = 16 + (i * 7) % 16, 16 + (i * 5) % 16
        out.append(
            make_sample(
                f"{prefix}{i:04d}", w, h, colour=names[i % len(names)], fmt=("png", "jpg")[i % 2]
            )
        )
    return out


def write_shard_dir(out: Path, shards: Sequence[Sequence[Sample]]) -> list[Path]:
    """Write one tar per sample list (``shard-%06d.tar``) plus a ``summary.json``."""
    from webdataset import ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, samples in enumerate(shards):
        path = out / f"shard-{i:06d}.tar"
        with ShardWriter(
            str(out / "shard-%06d.tar"), maxcount=10**9, start_shard=i, verbose=0
        ) as w:
            for s in samples:
                w.write(s)
        paths.append(path)
    summary = {"shards": [p.name for p in paths], "samples": sum(len(s) for s in shards)}
    (out / "summary.json").write_text(json.dumps(summary))
    return paths


def truncate_in_sample(path: Path, index: int) -> int:
    """Cut a tar in the middle of the first entry's data of sample ``index``; return the cut."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    keys: list[str] = []
    for m in members:
        key = m.name.split(".", 1)[0]
        if not keys or keys[-1] != key:
            keys.append(key)
            if len(keys) == index + 1:
                cut = m.offset_data + m.size // 2
                break
    else:
        raise ValueError(f"{path} has fewer than {index + 1} samples")
    data = path.read_bytes()[:cut]
    path.write_bytes(data)
    return cut


@pytest.fixture(scope="session")
def shard_tools() -> dict[str, Callable[..., Any]]:
    """The helpers above, for tests (this test directory is not a package)."""
    return {
        "make_sample": make_sample,
        "good_samples": good_samples,
        "write_shard_dir": write_shard_dir,
        "truncate_in_sample": truncate_in_sample,
        "encode_image": encode_image,
    }


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 valid samples in 3 shards of 8; the last shard is all JPEG (another schema)."""
    out = tmp_path_factory.mktemp("good")
    samples = good_samples(16)
    for i in range(16, 24):
        w, h = 16 + (i * 7) % 16, 16 + (i * 5) % 16
        samples.append(make_sample(f"s{i:04d}", w, h, colour="purple", fmt="jpg"))
    write_shard_dir(out, [samples[0:8], samples[8:16], samples[16:24]])
    return out
