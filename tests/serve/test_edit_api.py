"""The edit routes without Ray: /v1/edit (JSON, base64) and OpenAI's multipart
/v1/images/edits and /variations, through the fake ingress of test_api.py. Uploads are
bounded and decoded as training data is; every refusal names the field."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.serve.test_api import AUTH, client


def _png(a: np.ndarray, mode: str | None = None, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, fmt, **kw) if mode else Image.fromarray(a).save(
        buf, fmt, **kw
    )
    return buf.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


PICTURE = np.tile(np.arange(48, dtype=np.uint8)[None, :, None], (32, 1, 3))  # 32 x 48 RGB
MASK = np.zeros((32, 48), np.uint8)
MASK[:, 24:] = 255  # white: repaint the right half


def test_json_edit_hands_the_ingress_the_decoded_image_and_mask() -> None:
    c, fake = client()
    body = {"prompts": ["a red circle", ""], "image": _b64(_png(PICTURE)),
            "mask": _b64(_png(MASK)), "resample_times": 2, "start": "base"}  # fmt: skip
    r = c.post("/v1/edit", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    edit = fake.edits[-1]
    assert np.array_equal(edit["image"], PICTURE)
    assert (
        edit["mask"].dtype == bool and edit["mask"][:, 24:].all() and not edit["mask"][:, :24].any()
    )
    assert edit["strength"] is None and edit["resample_times"] == 2 and edit["start"] == "base"
    # a data: URL works too
    body = {"prompts": "x", "image": "data:image/png;base64," + _b64(_png(PICTURE))}
    assert c.post("/v1/edit", json=body, headers=AUTH).status_code == 200


def test_uploads_are_decoded_as_training_data_is() -> None:
    c, fake = client()
    # EXIF orientation 6 (rotate 90): a 32 x 48 JPEG comes out 48 x 32
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _png(PICTURE, fmt="JPEG", exif=exif.tobytes())
    assert (
        c.post("/v1/edit", json={"prompts": "x", "image": _b64(jpeg)}, headers=AUTH).status_code
        == 200
    )
    assert fake.edits[-1]["image"].shape == (48, 32, 3)
    # CMYK JPEG and 16-bit greyscale PNG: 8-bit RGB
    buf = io.BytesIO()
    Image.fromarray(PICTURE).convert("CMYK").save(buf, "JPEG")
    assert (
        c.post(
            "/v1/edit", json={"prompts": "x", "image": _b64(buf.getvalue())}, headers=AUTH
        ).status_code
        == 200
    )
    assert (
        fake.edits[-1]["image"].shape == (32, 48, 3) and fake.edits[-1]["image"].dtype == np.uint8
    )
    grey16 = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 40
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    assert (
        c.post(
            "/v1/edit", json={"prompts": "x", "image": _b64(buf.getvalue())}, headers=AUTH
        ).status_code
        == 200
    )
    assert fake.edits[-1]["image"].max() > 200  # scaled, not clipped to white or black
    # an RGBA mask: fully transparent pixels repaint (OpenAI's convention)
    rgba = np.zeros((32, 48, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:8, :8, 3] = 0
    body = {"prompts": "x", "image": _b64(_png(PICTURE)), "mask": _b64(_png(rgba))}
    assert c.post("/v1/edit", json=body, headers=AUTH).status_code == 200
    assert fake.edits[-1]["mask"].sum() == 64 and fake.edits[-1]["mask"][:8, :8].all()


@pytest.mark.parametrize(
    ("change", "status", "match"),
    [
        ({"image": "not base64!"}, 422, "image: not valid base64"),
        ({"image": ""}, 422, "image: the file is empty"),
        ({"image": _b64(b"GIF89a" + b"\0" * 40)}, 422, "image: GIF images are not accepted"),
        ({"image": _b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)}, 422, "image: not a readable image"),
        ({"image": _b64(_png(np.zeros((300, 300, 3), np.uint8)))}, 422, "max_upload_pixels=65536"),
        ({"image": _b64(bytes(70_000))}, 413, "image: 70000 bytes, over serve.max_upload_bytes"),
        ({"mask": _b64(_png(np.zeros((32, 32), np.uint8)))}, 422, "mask: the mask is 32x32"),
        ({"strength": 0}, 422, "strength"),
        ({"resample_times": 50}, 422, "resample_times"),
    ],
)
def test_bad_uploads_are_refused_naming_the_field(change: dict, status: int, match: str) -> None:
    c, fake = client()
    body = {"prompts": "x", "image": _b64(_png(PICTURE)), **change}
    r = c.post("/v1/edit", json=body, headers=AUTH)
    assert r.status_code == status and match in r.json()["detail"], r.text
    assert fake.edits == []


def test_the_edit_routes_take_bigger_bodies_but_still_bounded() -> None:
    c, _ = client()
    big = _b64(_png(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)))
    assert len(big) > 4096  # over max_body_bytes: /v1/generate would refuse it
    assert c.post("/v1/edit", json={"prompts": "x", "image": big}, headers=AUTH).status_code == 200
    huge = {"prompts": "x", "image": "A" * 300_000}
    r = c.post("/v1/edit", json=huge, headers=AUTH)
    assert r.status_code == 413 and "serve.max_upload_bytes" in r.json()["detail"]
    r = c.post("/v1/generate", json={"prompts": "x" * 5000}, headers=AUTH)
    assert r.status_code == 413 and "serve.max_body_bytes; send fewer" in r.json()["detail"]


def test_openai_edits_take_a_mask_or_the_images_transparency() -> None:
    c, fake = client()
    files = {"image": ("in.png", _png(PICTURE), "image/png"),
             "mask": ("m.png", _png(MASK), "image/png")}  # fmt: skip
    data = {"prompt": "a cat", "n": "2", "size": "32x32", "seed": "3"}
    r = c.post("/v1/images/edits", files=files, data=data, headers=AUTH)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 2
    req, edit = fake.seen[-1], fake.edits[-1]
    assert req.prompt_list() == ["a cat", "a cat"] and req.until == "base" and req.seed == 3
    assert edit["strength"] == 1.0 and edit["mask"][:, 24:].all()
    rgba = np.dstack([PICTURE, np.full((32, 48), 255, np.uint8)])
    rgba[:4, :, 3] = 0  # the top rows transparent: repaint them
    files = {"image": ("in.png", _png(rgba, "RGBA"), "image/png")}
    r = c.post("/v1/images/edits", files=files, data={"prompt": "x"}, headers=AUTH)
    assert r.status_code == 200 and fake.edits[-1]["mask"].sum() == 4 * 48
    for no_mask in (PICTURE, np.dstack([PICTURE, np.full((32, 48), 255, np.uint8)])):
        files = {"image": ("in.png", _png(no_mask), "image/png")}  # no transparent pixel
        r = c.post("/v1/images/edits", files=files, data={"prompt": "x"}, headers=AUTH)
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("mask: send")
    files["mask"] = ("m.png", _png(MASK), "image/png")
    r = c.post("/v1/images/edits", files=files, data={"prompt": "x", "size": "7x7"}, headers=AUTH)
    assert r.status_code == 400 and "size" in r.json()["error"]["message"]
    r = c.post("/v1/images/edits", data={"prompt": "x"}, headers=AUTH)
    assert r.status_code == 400 and "image" in r.json()["error"]["message"]


def test_openai_variations_are_image_to_image_without_a_prompt() -> None:
    c, fake = client()
    files = {"image": ("in.png", _png(PICTURE), "image/png")}
    r = c.post("/v1/images/variations", files=files, data={"n": "3"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert fake.seen[-1].prompt_list() == ["", "", ""] and fake.edits[-1]["strength"] == 0.6
    assert fake.edits[-1]["mask"] is None
    r = c.post("/v1/images/variations", files=files, data={"strength": "2"}, headers=AUTH)
    assert r.status_code == 400 and "strength: 2.0 is outside" in r.json()["error"]["message"]
    r = c.post("/v1/images/variations", files=files)
    assert r.status_code == 401
