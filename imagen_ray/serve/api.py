"""The HTTP API (FastAPI), built per ingress replica around its config and handles.

Routes: ``POST /v1/generate``, ``GET /healthz``, ``GET /v1/models``, ``GET /v1/stats``, the web
page at ``/``, OpenAPI docs at ``/docs``. Bad input is answered with a 4xx whose ``detail``
names the field, the value and the limit: 400 for a body that is not JSON, 401 without the
bearer token (when auth is on), 406 for an image ``Accept`` with several prompts, 413 for a
body over ``serve.max_body_bytes``, 422 for values out of range or unknown fields.
"""

from __future__ import annotations

import json
import secrets
from importlib import resources
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagen_ray.serve.problems import RequestProblem
from imagen_ray.serve.schemas import MEDIA_TYPES, GenerateRequest, GenerateResponse, Problem

ASGIApp = Any


class Backend(Protocol):
    """What the routes need of the ingress replica (:class:`imagen_ray.serve.ingress.Ingress`).

    Attributes:
        names: the cascade's stage names, base first.
        token: the bearer token requests must send, or None when auth is off.
        max_body_bytes: the largest request body accepted (``serve.max_body_bytes``).
    """

    names: list[str]
    token: str | None
    max_body_bytes: int

    def models(self) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def generate(self, req: GenerateRequest) -> GenerateResponse: ...


class BodyLimit:
    """ASGI middleware: answer 413 to request bodies over ``limit`` bytes.

    Written here because neither Starlette, FastAPI nor Ray Serve's proxy limits body size.
    A declared ``Content-Length`` over the limit is refused before the body is read; a
    chunked body is counted as it arrives and the app's answer is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await self._refuse(send, int(length))
            return
        seen = 0
        over = False

        async def counting_receive() -> dict[str, Any]:
            nonlocal seen, over
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        refused = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal refused
            if over:
                if not refused:
                    refused = True
                    await self._refuse(send, seen)
                return
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, send: Any, size: int) -> None:
        body = json.dumps(
            {
                "detail": f"request body is {size} bytes or more, over the limit of "
                f"{self.limit} bytes (serve.max_body_bytes); send fewer or shorter prompts"
            }
        ).encode()
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


def _readable(errors: list[dict[str, Any]]) -> str:
    """Pydantic errors as one line per field: ``stages.base.steps: Input should be ...``."""
    lines = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        shown = "" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})"
        lines.append(f"{where}: {msg}{shown}"[:300])
    return "; ".join(lines)


def create_app(ingress: Backend) -> FastAPI:
    """The FastAPI application of one ingress replica."""
    app = FastAPI(
        title="imagen-ray",
        description="Text-to-image generation with an Imagen cascade served by Ray Serve. "
        "`POST /v1/generate` takes prompts and per-stage settings and returns base64 images "
        "(or, with `Accept: image/png` and one prompt, the image itself).",
        version="1",
    )
    app.add_middleware(BodyLimit, limit=ingress.max_body_bytes)
    bearer = HTTPBearer(auto_error=False, description="serve.auth: the server's token")
    page = resources.files("imagen_ray.serve").joinpath("page.html").read_text()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(
                {"detail": f"request body is not valid JSON: {_readable(errors)}"}, 400
            )
        return JSONResponse({"detail": _readable(errors)}, 422)

    @app.exception_handler(RequestProblem)
    async def problem(request: Request, exc: RequestProblem) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, exc.status)

    # FastAPI's default-argument form: an Annotated[...] naming the local `bearer` would be a
    # string here (postponed annotations) that FastAPI cannot resolve.
    def authorize(
        creds: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if ingress.token is None:
            return
        if creds is None or not secrets.compare_digest(
            creds.credentials.encode(), ingress.token.encode()
        ):
            raise RequestProblem(
                "missing or wrong bearer token: send `Authorization: Bearer <token>`", 401
            )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(request: Request) -> HTMLResponse:
        root = json.dumps(request.scope.get("root_path", "").rstrip("/"))
        return HTMLResponse(page.replace("__ROOT_PATH__", root))

    @app.get("/healthz", summary="liveness: the ingress answers and knows its stages")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "stages": ingress.names}

    @app.get("/v1/models", summary="stages, sizes, text encoder, sampling defaults, limits")
    async def models() -> dict[str, Any]:
        return ingress.models()

    @app.get("/v1/stats", summary="batch sizes formed by the encoder and stage replicas")
    async def stats() -> dict[str, Any]:
        return await ingress.stats()

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
        },
        dependencies=[Depends(authorize)],
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

    return app
