"""The edit routes of the HTTP API: ``POST /v1/edit`` (JSON, base64 images, every knob)
and OpenAI's multipart ``POST /v1/images/edits`` and ``/v1/images/variations``. Uploads are
bounded and decoded by :mod:`imagen_ray.serve.uploads`; :func:`imagen_ray.serve.api.create_app`
adds these routes beside the others and gives them the larger body limit."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, File, Form, UploadFile
from pydantic import ValidationError

from imagen_ray.cascade.plan import default_strength
from imagen_ray.serve.backend import Backend
from imagen_ray.serve.openai_images import (
    EDITS_ROUTE,
    VARIATIONS_ROUTE,
    ImagesRequest,
    theirs,
    to_generate_request,
    to_images_response,
)
from imagen_ray.serve.problems import RequestProblem, readable_errors
from imagen_ray.serve.schemas import EditRequest, GenerateResponse, Problem
from imagen_ray.serve.uploads import UploadLimits, alpha_mask, from_base64, read_image, read_mask

EDIT_ROUTE = "/v1/edit"


async def _read_upload(
    upload: UploadFile | bytes, field: str, limits: UploadLimits
) -> tuple[bytes, Any]:
    """(raw bytes, (H, W, 3) uint8) of an uploaded image, decoded off the event loop."""
    import asyncio

    raw = upload if isinstance(upload, bytes) else await upload.read()
    return raw, await asyncio.to_thread(read_image, raw, field, limits)


def add_edit_routes(app: FastAPI, ingress: Backend, guarded: list[Any]) -> None:
    """``POST /v1/edit`` (JSON, every knob) and OpenAI's multipart ``/v1/images/edits`` and
    ``/v1/images/variations``; uploads bounded by :mod:`imagen_ray.serve.uploads`."""
    _add_json_edit_route(app, ingress, guarded)
    _add_openai_edit_routes(app, ingress, guarded)


def _images_request(**fields: Any) -> ImagesRequest:
    """The Images API request of a multipart form (unset fields left out), or a 400."""
    try:
        return ImagesRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:  # pydantic's errors, in OpenAI's shape
        raise RequestProblem(readable_errors([dict(x) for x in e.errors()]), 400) from None


async def _run_images_edit(
    ingress: Backend, req: ImagesRequest, edit: dict[str, Any]
) -> dict[str, Any]:
    """An Images API edit through the ingress, answered and named in OpenAI's shape."""
    gen = to_generate_request(req, ingress.stage_sizes)
    try:
        return to_images_response(await ingress.generate(gen, edit))
    except RequestProblem as e:
        raise theirs(e) from None


def _add_json_edit_route(app: FastAPI, ingress: Backend, guarded: list[Any]) -> None:
    """``POST /v1/edit``: base64 image and mask, every knob of the edit."""
    import asyncio

    limits = UploadLimits.of(ingress.cfg)

    @app.post(
        EDIT_ROUTE,
        response_model=GenerateResponse,
        summary="edit one image for every prompt: inpainting, image-to-image, upscaling",
        responses={
            413: {"model": Problem, "description": "a file over serve.max_upload_bytes"},
            422: {"model": Problem, "description": "a bad image, mask or value"},
        },
        dependencies=guarded,
    )
    async def edit(req: EditRequest) -> GenerateResponse:
        _, image = await _read_upload(from_base64(req.image, "image"), "image", limits)
        mask = None
        if req.mask is not None:
            raw = from_base64(req.mask, "mask")
            mask = await asyncio.to_thread(read_mask, raw, "mask", limits, image)
        return await ingress.generate(req, {
            "image": image, "mask": mask, "strength": req.strength, "start": req.start,
            "resample_times": req.resample_times,
        })  # fmt: skip


def _add_openai_edit_routes(app: FastAPI, ingress: Backend, guarded: list[Any]) -> None:
    """OpenAI's multipart ``/v1/images/edits`` and ``/v1/images/variations``."""
    import asyncio

    limits = UploadLimits.of(ingress.cfg)

    @app.post(
        EDITS_ROUTE,
        summary="OpenAI Images API: repaint the masked (transparent) region of an image",
        dependencies=guarded,
    )
    async def images_edits(
        image: UploadFile = File(..., description="the image (PNG, JPEG or WebP)"),  # noqa: B008
        prompt: str = Form(..., description="what the edited image shows"),
        mask: UploadFile | None = File(None, description="fully transparent pixels repaint"),  # noqa: B008
        n: int | None = Form(None),
        size: str | None = Form(None),
        response_format: str | None = Form(None),
        model: str | None = Form(None),
        user: str | None = Form(None),
        seed: int | None = Form(None),
        negative_prompt: str | None = Form(None),
        steps: int | None = Form(None),
    ) -> dict[str, Any]:
        req = _images_request(prompt=prompt, n=n, size=size, response_format=response_format,
                             model=model, user=user, seed=seed,
                             negative_prompt=negative_prompt, steps=steps)  # fmt: skip
        raw, pixels = await _read_upload(image, "image", limits)
        repaint: Any = None
        if mask is not None:
            repaint = await asyncio.to_thread(read_mask, await mask.read(), "mask", limits, pixels)
        else:
            repaint = await asyncio.to_thread(alpha_mask, raw, "image", limits)
            if repaint is None:
                raise RequestProblem(
                    "mask: send a mask, or an image whose fully transparent pixels mark the "
                    "region to repaint", 400,
                )  # fmt: skip
        edit = {"image": pixels, "mask": repaint, "strength": 1.0, "start": None,
                "resample_times": 1}  # fmt: skip
        return await _run_images_edit(ingress, req, edit)

    @app.post(
        VARIATIONS_ROUTE,
        summary="OpenAI Images API: variations of an image (image-to-image, no prompt)",
        dependencies=guarded,
    )
    async def images_variations(
        image: UploadFile = File(..., description="the image (PNG, JPEG or WebP)"),  # noqa: B008
        n: int | None = Form(None),
        size: str | None = Form(None),
        response_format: str | None = Form(None),
        model: str | None = Form(None),
        user: str | None = Form(None),
        seed: int | None = Form(None),
        prompt: str | None = Form(None, description="steers the variations (default: none)"),
        strength: float | None = Form(None, description="in (0, 1]: 0.6 unless given"),
        steps: int | None = Form(None),
    ) -> dict[str, Any]:
        req = _images_request(prompt=prompt or "", n=n, size=size,
                             response_format=response_format, model=model, user=user,
                             seed=seed, steps=steps)  # fmt: skip
        if strength is not None and not 0 < strength <= 1:
            raise RequestProblem(f"strength: {strength} is outside (0, 1]", 400)
        _, pixels = await _read_upload(image, "image", limits)
        edit = {"image": pixels, "mask": None, "start": None,
                "strength": default_strength(False) if strength is None else strength,
                "resample_times": 1}  # fmt: skip
        return await _run_images_edit(ingress, req, edit)
