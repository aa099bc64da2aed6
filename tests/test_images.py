"""The one tensor -> uint8 conversion, the one image encoder, and the input formats an entry
extension may hold (imagen_ray.images)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imagen_ray.images import (
    IMAGE_FORMATS,
    encode_image,
    formats_for,
    image_format,
    model_to_uint8,
    save_image,
    to_uint8,
)


def test_to_uint8_rounds_clamps_and_moves_channels_last() -> None:
    x = torch.tensor([0.0, 0.5, 1.0, 1.7, -0.2, 0.499 / 255]).reshape(1, 3, 1, 2)
    out = to_uint8(x)
    assert out.shape == (1, 1, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, :, :].T.ravel().tolist() == [0, 128, 255, 255, 0, 0]
    assert to_uint8(x[0]).shape == (1, 2, 3)  # a single (3, H, W) image


def test_model_to_uint8_maps_minus_one_to_zero_and_one_to_255() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    assert model_to_uint8(x).ravel().tolist() == [0, 128, 255]


def test_image_format_names_and_aliases() -> None:
    assert IMAGE_FORMATS == ("png", "jpeg", "webp")
    assert image_format("JPG") == image_format(".jpeg") == "jpeg"
    with pytest.raises(ValueError, match=r"'gif'.*png, jpeg, webp"):
        image_format("gif")


@pytest.mark.parametrize("fmt", IMAGE_FORMATS)
def test_encode_image_round_trips(fmt: str) -> None:
    ramp = np.linspace(0, 255, 16, dtype=np.uint8)  # smooth, like generated images
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1, None]), -1)
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(pixels, fmt))).convert("RGB"))
    if fmt == "jpeg":  # quality 95: close, not exact
        assert np.abs(decoded.astype(int) - pixels).mean() < 3
    else:  # PNG and lossless WebP are exact
        assert np.array_equal(decoded, pixels)


def test_save_image_picks_the_format_from_the_suffix(tmp_path: Path) -> None:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    for name, kind in [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.webp", "WEBP")]:
        path = save_image(pixels, tmp_path / name)
        assert Image.open(path).format == kind


def test_formats_for_maps_entry_extensions_to_decoders() -> None:
    assert formats_for(["jpg", "jpeg", ".PNG"]) == ("JPEG", "PNG")  # each once, in order
    assert formats_for(["tif", "webp"]) == ("TIFF", "WEBP")
    with pytest.raises(ValueError, match=r"'txt' names no known image format"):
        formats_for(["jpg", "txt"])


def test_image_keys_must_name_image_formats() -> None:
    from imagen_ray.config import DataConfig

    with pytest.raises(ValueError, match=r"'txt' names no known image format"):
        DataConfig(image_keys=("jpg", "txt"))
