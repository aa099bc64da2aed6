"""The HTTP API (FastAPI), built per ingress replica around its config and handles.

Routes: ``POST /v1/generate``, ``POST /v1/images/generations`` (the OpenAI Images API,
:mod:`imagen_ray.serve.openai_images`), the edit routes (:mod:`imagen_ray.serve.edit_api`),
``GET /healthz``, ``GET /v1/models``, ``GET /v1/stats``, the web page at ``/``, OpenAPI docs
at ``/docs``. With auth on, every route but ``/healthz`` and the page needs the bearer token
(``/docs`` and ``/openapi.json`` too).
Bad input is answered with a 4xx whose ``detail`` names the field, the value and the limit:
400 for a body that is not JSON, 401 without the bearer token, 406 for an image ``Accept``
with several prompts, 413 for a body over ``serve.max_body_bytes``, 422 for values out of
range, unknown fields or text that is not valid Unicode; 503 with ``Retry-After`` when a
queue is full. A request that fails on the server gets a 500 of its own."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagen_ray.serve.auth import token_matches
from imagen_ray.serve.backend import Backend
from imagen_ray.serve.edit_api import EDIT_ROUTE, add_edit_routes
from imagen_ray.serve.openai_images import (
    EDITS_ROUTE,
    ROUTES,
    VARIATIONS_ROUTE,
    ImagesRequest,
    openai_error,
    theirs,
    to_generate_request,
    to_images_response,
)
from imagen_ray.serve.openai_images import ROUTE as OPENAI_ROUTE
from imagen_ray.serve.problems import RequestProblem, readable_errors
from imagen_ray.serve.schemas import MEDIA_TYPES, GenerateRequest, GenerateResponse, Problem

UPLOAD_ROUTES = (EDIT_ROUTE, EDITS_ROUTE, VARIATIONS_ROUTE)  # their body limit holds 2 files

ASGIApp = Any
log = logging.getLogger("ray.serve")


class BodyLimit:
    """ASGI middleware: answer 413 to request bodies over ``limit`` bytes.

    Written here because neither Starlette, FastAPI nor Ray Serve's proxy limits body size.
    A declared ``Content-Length`` over the limit is refused before the body is read; a
    chunked body is counted as it arrives and the app's answer is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: int, upload_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit or limit  # the routes of UPLOAD_ROUTES

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        limit = self.upload_limit if path.endswith(UPLOAD_ROUTES) else self.limit
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(send, int(length), limit)
            return
        seen = 0
        over = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, over
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        refused = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal refused
            if over:
                if not refused:
                    refused = True
                    await self._refuse(send, seen, limit)
                return
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Any, size: int, limit: int) -> None:
        why = (
            "serve.max_body_bytes; send fewer or shorter prompts"
            if limit == self.limit
            else "serve.max_body_bytes + two files of serve.max_upload_bytes, base64-encoded; "
            "send smaller images"
        )
        body = json.dumps(
            {"detail": f"request body is {size} bytes or more, over the limit of {limit} "
                       f"bytes ({why})"}
        ).encode()  # fmt: skip
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _safe(text: str) -> str:
    """``text`` that encodes as UTF-8 (a lone surrogate from the request shown escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def create_app(ingress: Backend) -> FastAPI:
    """The FastAPI application of one ingress replica.

    With auth on, every API route, ``/docs`` and ``/openapi.json`` need the bearer token;
    ``/healthz`` (liveness probes) and the web page (which asks for the token) stay open.
    """
    auth_on = ingress.token_digest is not None
    app = FastAPI(
        title="imagen-ray",
        description="Text-to-image generation with an Imagen cascade served by Ray Serve. "
        "`POST /v1/generate` takes prompts and per-stage settings and returns base64 images "
        "(or, with `Accept: image/png` and one prompt, the image itself); "
        "`POST /v1/images/generations` speaks the OpenAI Images API.",
        version="1",
        docs_url=None if auth_on else "/docs",
        openapi_url=None if auth_on else "/openapi.json",
    )
    uploads = 2 * (4 * -(-ingress.cfg.max_upload_bytes // 3) + 4096)  # base64 / multipart
    app.add_middleware(
        BodyLimit, limit=ingress.max_body_bytes, upload_limit=ingress.max_body_bytes + uploads
    )
    _add_error_handlers(app)
    guarded = [Depends(_authorizer(ingress))]
    if auth_on:  # the docs follow the same switch as the API
        _add_guarded_docs(app, guarded)
    _add_page(app)
    _add_meta_routes(app, ingress, guarded)
    _add_generate_route(app, ingress, guarded)
    _add_openai_route(app, ingress, guarded)
    add_edit_routes(app, ingress, guarded)
    return app


def _answer(
    request: Request, message: str, status: int, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error as ``{"detail": ...}``, or as an OpenAI error on the Images API's route."""
    message = _safe(message)
    if request.url.path.endswith(ROUTES):
        # OpenAI answers invalid requests with 400 (the client's BadRequestError).
        status = 400 if status in (406, 422) else status
        return JSONResponse(openai_error(message, status), status, headers=headers)
    return JSONResponse({"detail": message}, status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Invalid bodies (400/422), request problems (their own status) and server failures
    (500), each answered in the route's error format."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return _answer(
                request, f"request body is not valid JSON: {readable_errors(errors)}", 400
            )
        return _answer(request, readable_errors(errors), 422)

    @app.exception_handler(RequestProblem)
    async def problem(request: Request, exc: RequestProblem) -> JSONResponse:
        return _answer(request, str(exc), exc.status, exc.headers or None)

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        log.error("request %s failed: %r", request.url.path, exc)
        return _answer(
            request,
            f"generation failed on the server ({type(exc).__name__}); other requests are "
            "unaffected; the server log has the details",
            500,
        )


def _authorizer(ingress: Backend) -> Callable[..., None]:
    """The dependency that refuses a request without the bearer token (401) when auth is on."""
    bearer = HTTPBearer(auto_error=False, description="serve.auth: the server's token")

    # FastAPI's default-argument form: an Annotated[...] naming the local `bearer` would be a
    # string here (postponed annotations) that FastAPI cannot resolve.
    def authorize(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if ingress.token_digest is None:
            return
        if not token_matches(None if creds is None else creds.credentials, ingress.token_digest):
            raise RequestProblem(
                "missing or wrong bearer token: send `Authorization: Bearer <token>`", 401
            )

    return authorize


def _add_guarded_docs(app: FastAPI, guarded: list[Any]) -> None:
    """``/openapi.json`` and ``/docs`` behind the bearer token."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=guarded)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=guarded)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="openapi.json", title="imagen-ray")


def _add_page(app: FastAPI) -> None:
    """The web page at ``/``, told the root path it is served under."""
    page = resources.files("imagen_ray.serve").joinpath("page.html").read_text()

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        root = json.dumps(request.scope.get("root_path", "").rstrip("/"))
        return HTMLResponse(page.replace("__ROOT_PATH__", root))


def _add_meta_routes(app: FastAPI, ingress: Backend, guarded: list[Any]) -> None:
    """``/healthz`` (open), ``/v1/models`` and ``/v1/stats``."""

    @app.get("/healthz", summary="liveness: the ingress answers and knows its stages")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "stages": ingress.names}

    @app.get(
        "/v1/models",
        summary="stages, sizes, text encoder, sampling defaults, limits",
        dependencies=guarded,
    )
    async def models() -> dict[str, Any]:
        return ingress.models()

    @app.get(
        "/v1/stats",
        summary="batch sizes formed by the encoder and stage replicas",
        dependencies=guarded,
    )
    async def stats() -> dict[str, Any]:
        return await ingress.stats()


def _add_generate_route(app: FastAPI, ingress: Backend, guarded: list[Any]) -> None:
    """``POST /v1/generate``: JSON with base64 images, or one image when ``Accept`` asks."""

    @app.post(
        "/v1/generate",
        response_model=GenerateResponse,
        summary="generate images for one or more prompts",
        responses={
            200: {"content": {m: {} for m in MEDIA_TYPES}},
            400: {"model": Problem, "description": "the body is not JSON"},
            401: {"model": Problem, "description": "auth on and no valid bearer token"},
            406: {"model": Problem, "description": "image Accept with several prompts"},
            413: {"model": Problem, "description": "body over serve.max_body_bytes"},
            422: {"model": Problem, "description": "a value out of range or an unknown field"},
            503: {"model": Problem, "description": "overloaded: retry after Retry-After s"},
        },
        dependencies=guarded,
    )
    async def generate(req: GenerateRequest, request: Request) -> Any:
        accept = request.headers.get("accept", "").split(",")[0].split(";")[0].strip().lower()
        wanted = MEDIA_TYPES.get(accept)
        if wanted is not None:
            if len(req.prompt_list()) != 1:
                raise RequestProblem(
                    f"Accept: {accept} returns one image; send one prompt, or ask for JSON "
                    "(Accept: application/json) to get several",
                    406,
                )
            if req.format is not None and req.format != wanted:
                raise RequestProblem(
                    f"format={req.format!r} contradicts Accept: {accept}; drop one of them", 406
                )
            req = req.model_copy(update={"format": wanted})
        out = await ingress.generate(req)
        if wanted is None:
            return out
        import base64

        img = out.images[0]
        return Response(
            base64.b64decode(img.image),
            media_type=accept,
            headers={
                "X-Imagen-Seed": str(img.seed),
                "X-Imagen-Settings": json.dumps(out.settings, separators=(",", ":")),
            },
        )


def _add_openai_route(app: FastAPI, ingress: Backend, guarded: list[Any]) -> None:
    """``POST /v1/images/generations``: the OpenAI Images API over the same generation."""

    @app.post(
        OPENAI_ROUTE,
        summary="OpenAI Images API: n images of one prompt, size = a stage's output size",
        dependencies=guarded,
    )
    async def images_generations(req: ImagesRequest) -> dict[str, Any]:
        gen = to_generate_request(req, ingress.stage_sizes)
        try:
            out = await ingress.generate(gen)
        except RequestProblem as e:  # name the Images API's fields, not /v1/generate's
            raise theirs(e) from None
        return to_images_response(out)
