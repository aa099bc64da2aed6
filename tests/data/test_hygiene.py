"""Image hygiene: every mode to the right RGB pixels; bombs, wrong formats, big members refused."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagen_ray.config import DataConfig, StageConfig
from imagen_ray.data.decode import decode_filter_resize
from imagen_ray.data.hygiene import (
    DECODE_ERROR,
    MEMBER_TOO_LARGE,
    TOO_MANY_PIXELS,
    WRONG_FORMAT,
    open_checked,
    oriented_size,
    to_rgb,
)
from imagen_ray.data.reader import _rows_to_table, iter_tar_samples
from imagen_ray.images import formats_for


def encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb_of(raw: bytes, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    img = open_checked(raw, formats=formats_for(["jpg", "png", "webp", "tif"]))
    assert not isinstance(img, str), img
    return np.asarray(to_rgb(img, background))


class Counts(dict):
    """Stands in for the PipelineStats actor handle: ``stats.add.remote(counts)``."""

    @property
    def add(self) -> Counts:
        return self

    def remote(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self[k] = self.get(k, 0) + v


def decode_counts(rows: list[dict[str, Any]], data: DataConfig, size: int = 8) -> Counts:
    counts = Counts()
    decode_filter_resize(
        _rows_to_table(rows),
        data_cfg=data.model_dump(),
        stage_cfg=StageConfig(size=size).model_dump(),
        stats=counts,
    )
    return counts


# --------------------------------------------------------------------------- modes


def test_16bit_greyscale_png_is_scaled_not_clipped_to_white():
    ramp = np.array([[0, 257 * 64, 257 * 128, 65535]], np.uint16)  # 8-bit 0, 64, 128, 255
    raw = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(raw)).mode.startswith("I")
    out = rgb_of(raw)
    assert out.shape == (1, 4, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 64, 128, 255])
    assert (out[..., 0] == out[..., 2]).all()  # grey stays grey
    # The old path, convert("RGB") on I;16, clips everything above 255 to white:
    assert (np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))[0, 1:] == 255).all()


def test_32bit_int_and_float_greyscale():
    i32 = Image.fromarray(np.array([[0, 32768, 65535]], np.int32), mode="I")
    np.testing.assert_array_equal(to_rgb(i32).getpixel((1, 0)), (128, 128, 128))
    f32 = Image.fromarray(np.array([[0.0, 0.5, 2.0]], np.float32), mode="F")
    np.testing.assert_array_equal(np.asarray(to_rgb(f32))[0, :, 0], [0, 128, 255])


def test_cmyk_jpeg():
    red = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    np.testing.assert_allclose(rgb_of(encode(red, "JPEG", quality=95))[8, 8], (255, 0, 0), atol=4)


def test_palette_with_transparency_composited_on_the_background():
    p = Image.new("P", (4, 1))
    p.putpalette([0, 0, 255, 0, 255, 0] + [0] * 762)  # index 0 blue, index 1 green
    p.putpixel((0, 0), 1)
    raw = encode(p, "PNG", transparency=0)  # blue (index 0) is transparent
    out = rgb_of(raw)
    np.testing.assert_array_equal(out[0, 0], (0, 255, 0))
    np.testing.assert_array_equal(out[0, 1], (255, 255, 255))  # not the hidden blue
    np.testing.assert_array_equal(rgb_of(raw, (10, 20, 30))[0, 1], (10, 20, 30))
    opaque = encode(p, "PNG")  # no transparency: the palette colours
    np.testing.assert_array_equal(rgb_of(opaque)[0, 1], (0, 0, 255))


def test_la_and_rgba_alpha_blended_on_white():
    la = Image.fromarray(np.array([[[0, 255], [0, 0], [0, 128]]], np.uint8), mode="LA")
    out = rgb_of(encode(la, "PNG"))[0, :, 0]
    np.testing.assert_allclose(out, [0, 255, 127], atol=1)  # opaque black, clear, half
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)
    rgba[0, 1] = (255, 0, 0, 0)  # transparent red must not show
    out = rgb_of(encode(Image.fromarray(rgba, mode="RGBA"), "PNG"))
    np.testing.assert_array_equal(out[0], [(255, 0, 0), (255, 255, 255)])


def test_exif_orientation_is_applied():
    # 4 wide, 2 tall, left half red, right half blue; orientation 6 = rotate 90 cw to view.
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, :2] = (255, 0, 0)
    arr[:, 2:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = encode(Image.fromarray(arr), "PNG", exif=exif)
    opened = open_checked(raw, formats=["PNG"])
    assert not isinstance(opened, str)
    assert opened.size == (4, 2) and oriented_size(opened) == (2, 4)
    out = np.asarray(to_rgb(opened))
    assert out.shape == (4, 2, 3)  # upright: now 2 wide, 4 tall
    np.testing.assert_array_equal(out[0, 0], (255, 0, 0))  # red on top after a cw turn
    np.testing.assert_array_equal(out[3, 0], (0, 0, 255))


# --------------------------------------------------------------------------- refusals


def test_header_checks_refuse_before_decoding():
    big = encode(Image.new("L", (3000, 3000)), "PNG")  # 9 MP, a few KB of zlib
    assert open_checked(big, formats=["PNG"], max_pixels=8_999_999) == TOO_MANY_PIXELS
    img = open_checked(big, formats=["PNG"], max_pixels=9_000_000)
    assert not isinstance(img, str) and img.size == (3000, 3000)
    tif = encode(Image.new("RGB", (4, 4)), "TIFF")
    assert open_checked(tif, formats=formats_for(["jpg", "png"])) == WRONG_FORMAT
    assert not isinstance(open_checked(tif, formats=formats_for(["tif"])), str)
    assert open_checked(b"\x89PNG\r\n\x1a\n garbage", formats=["PNG"]) == DECODE_ERROR
    assert open_checked(b"not an image", formats=["PNG"]) == DECODE_ERROR
    assert open_checked(tif, formats=["TIFF"], max_bytes=len(tif) - 1) == MEMBER_TOO_LARGE


def test_pils_own_bomb_limit_counts_as_too_many_pixels(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # errors above 2x: 2000 px
    raw = encode(Image.new("L", (50, 50)), "PNG")
    assert open_checked(raw, formats=["PNG"], max_pixels=10**9) == TOO_MANY_PIXELS


def test_bomb_is_never_decoded(monkeypatch):
    """A pixel bomb dropped by the decode step never reaches ImageFile.load."""
    raw = encode(Image.new("L", (2000, 2000)), "PNG")  # (saving loads the new image)
    calls = []
    real_load = Image.Image.load

    def spy(self: Image.Image) -> Any:
        calls.append(self.size)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    sample = {"__key__": "bomb", "png": raw, "txt": b"a bomb"}
    counts = decode_counts([sample], DataConfig(shards="x", max_pixels=1_000_000))
    assert counts == {"too_many_pixels": 1}
    assert (2000, 2000) not in calls


def _tar(entries: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


class CountingReader(io.BytesIO):
    """A stream that remembers the largest single read (an oversized member is skipped)."""

    largest = 0

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.largest = max(self.largest, len(out))
        return out


def test_reader_skips_oversized_members_unread():
    big = b"\xff" * 200_000
    tar = _tar(
        [
            ("a.jpg", b"x" * 10),
            ("a.txt", b"ok"),
            ("b.jpg", big),
            ("b.txt", b"too big"),
            ("c.txt", b"after"),
        ]
    )
    stream = CountingReader(tar.getvalue())
    rows = list(iter_tar_samples(stream, "t.tar", max_member_bytes=100_000))
    assert [r["__key__"] for r in rows] == ["a", "b", "c"]
    assert rows[1] == {"__key__": "b", "__error__": MEMBER_TOO_LARGE}
    assert rows[2]["txt"] == b"after"
    assert stream.largest < len(big)  # the member was skipped over, never read whole
    counts = decode_counts(rows, DataConfig(shards="x"))
    assert counts == {"member_too_large": 1, "decode_error": 1, "no_image": 1}


def test_shard_writer_check_uses_the_same_hygiene(tmp_path):
    from imagen_ray.data.shards import ImageRejected, image_sample, prepare_image

    with pytest.raises(ImageRejected, match="too_many_pixels") as e:
        prepare_image(encode(Image.new("L", (300, 300)), "PNG"), max_pixels=1000)
    assert e.value.reason == "too_many_pixels"
    psd_like = tmp_path / "x.jpg"
    psd_like.write_bytes(encode(Image.new("RGB", (4, 4)), "PPM"))
    skipped = image_sample(psd_like, key="x", caption="c", source="x.jpg")
    assert skipped.reason == "wrong_format"  # type: ignore[union-attr]
    grey16 = encode(Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)), "TIFF")
    data, ext, w, h = prepare_image(grey16)
    assert (ext, w, h) == ("png", 4, 4)
    assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0)) == (100, 100, 100)
