"""bench/data.py --sizes: decode rates per (format, source, target), JPEG draft sizes, and the
decode fast path it measured (to_rgb returns plain upright RGB as it is, and converts the rest
as before)."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from PIL.JpegImagePlugin import JpegImageFile

from bench import data as bench_data
from imagen_ray.images import has_alpha, resize_crop, to_rgb


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    assert bench_data.main(list(args)) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sizes_mode_reports_every_case_with_draft_sizes(capsys) -> None:
    draft, threads = JpegImageFile.draft, torch.get_num_threads()
    lines = _run(capsys, "--sizes", "128,256", "--quick", "--samples", "4", "--rounds", "1")
    header, *rows, summary = lines
    assert header["bench"] == "data_sizes" and header["machine"]["cpu_count"] >= 1
    got = {(r["format"], r["source"], r["target"]): r for r in rows}
    expected = [(f, s, t) for f in ("JPEG", "WEBP") for s, t in ((128, 64), (256, 64), (256, 256))]
    assert sorted(got) == sorted(expected)
    skipped = {(f, s, t) for f in ("JPEG", "WEBP") for s in (128, 256) for t in (256, 1024)}
    assert set(map(tuple, summary["skipped_upscaling"])) == {x for x in skipped if x[2] > x[1]}
    for (fmt, source, target), r in got.items():
        assert r["config"] == "decode_sizes" and r["samples"] == 4 and r["loadavg"] is not None
        assert set(r["samples_per_s"]) == {"ours", "ours_no_draft", "dataloader"}
        for rates in r["samples_per_s"].values():
            assert rates["best"] > 0 and rates["median"] > 0 and rates["per_cpu_s_best"] > 0
        assert r["ratios"]["ours_vs_dataloader"] > 0 and r["ratios"]["ours_vs_ours_no_draft"] > 0
        assert min(r["decoded_size"]) >= target
        # draft scales JPEG by 1/2..1/8 in the DCT, never below the target; WebP ignores it
        shrinks = fmt == "JPEG" and source >= 2 * target
        assert r["draft_applies"] is shrinks
        assert (max(r["decoded_size"]) < source) is shrinks
    assert got[("JPEG", 256, 64)]["decoded_size"] == [64, 64]  # 1/4
    assert summary["summary"] == "data_sizes" and summary["slower_than_dataloader"] is not None
    assert summary["goal_ours_ge_dataloader_per_core_at_1024"] is None  # no 1024 px source
    # the bench leaves the process as it found it
    assert JpegImageFile.draft is draft and torch.get_num_threads() == threads


def test_sizes_rejects_sizes_below_the_smallest_target(capsys) -> None:
    with pytest.raises(SystemExit):
        bench_data.main(["--sizes", "32"])
    assert "--sizes" in capsys.readouterr().err


def _encoded(mode: str, fmt: str, **kw: Any) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (24, 40, 4), dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rotated() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6
    return exif


@pytest.mark.parametrize(
    "raw",
    [
        _encoded("RGB", "JPEG"),
        _encoded("RGB", "JPEG", exif=_rotated()),
        _encoded("L", "JPEG"),
        _encoded("CMYK", "JPEG"),
        _encoded("RGB", "WEBP"),
        _encoded("RGBA", "WEBP", lossless=True),
        _encoded("RGB", "PNG", transparency=(0, 0, 0)),
        _encoded("P", "PNG", transparency=0),
    ],
    ids=["jpeg", "jpeg_rot6", "jpeg_L", "jpeg_cmyk", "webp", "webp_rgba", "png_trns", "png_P"],
)
def test_to_rgb_skips_its_copies_only_where_they_change_nothing(raw: bytes) -> None:
    def converted(img: Image.Image) -> Image.Image:  # the full path, always
        img = ImageOps.exif_transpose(img)
        if has_alpha(img):
            rgba = img.convert("RGBA")
            base = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(base, rgba).convert("RGB")
        return img.convert("RGB")

    out = []
    for fn in (lambda im: to_rgb(im, (255, 255, 255)), converted):
        img = Image.open(io.BytesIO(raw))
        img.draft("RGB", (12, 12))
        got = fn(img)
        out.append(np.asarray(resize_crop(got, 12)))
    assert np.array_equal(out[0], out[1])
    img = Image.open(io.BytesIO(raw))
    plain = img.mode == "RGB" and not has_alpha(img) and 0x0112 not in img.getexif()
    assert (to_rgb(img) is img) == plain
