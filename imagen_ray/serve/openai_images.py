"""``POST /v1/images/generations``: the OpenAI Images API in front of ``/v1/generate``.

Existing clients (the official ``openai`` package, and tools built on it) call
``client.images.generate(prompt=..., n=..., size="32x32", response_format="b64_json")``.
A request is translated into a :class:`GenerateRequest`: ``size`` picks the last stage whose
output has that size (the stages after it do not run), ``n`` images of one prompt use seeds
``seed + i``. Extra fields (``seed``, ``negative_prompt``, ``steps``; the client's
``extra_body``) go to every stage that runs. Errors answer in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``, so clients raise their typed exceptions
(400 ``BadRequestError``, 401 ``AuthenticationError``) with the server's message.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from imagen_ray.cascade.plan import SEED_MAX
from imagen_ray.serve.problems import RequestProblem
from imagen_ray.serve.schemas import GenerateRequest, GenerateResponse

ROUTE = "/v1/images/generations"
EDITS_ROUTE = "/v1/images/edits"
VARIATIONS_ROUTE = "/v1/images/variations"
ROUTES = (ROUTE, EDITS_ROUTE, VARIATIONS_ROUTE)  # errors answer in OpenAI's shape on these

# OpenAI error types by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class ImagesRequest(BaseModel):
    """The OpenAI Images API request (fields this server understands; others are refused)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="the prompt of every image")
    n: int = Field(1, ge=1, description="images to make (at most serve.max_prompts)")
    size: str | None = Field(
        None, description="WxH of a stage's output, e.g. 32x32 (default: the last stage's)"
    )
    response_format: Literal["b64_json", "url"] = Field(
        "b64_json", description="b64_json only: this server keeps no image store to link to"
    )
    model: str | None = Field(None, description="accepted and ignored: one cascade is served")
    user: str | None = Field(None, description="accepted and ignored")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="seed of image 0 (i: seed+i)")
    negative_prompt: str | None = Field(None, description="unconditional text of guidance")
    steps: int | None = Field(None, ge=1, description="sampler steps of every stage that runs")


def openai_error(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    code = {401: "invalid_api_key", 413: "request_too_large", 503: "overloaded"}.get(status)
    return {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def to_generate_request(req: ImagesRequest, stages: list[tuple[str, int]]) -> GenerateRequest:
    """The ``/v1/generate`` request for an Images API request.

    Args:
        req: the parsed Images API request.
        stages: (name, output size) of each cascade stage, base first.

    Raises:
        RequestProblem: (400) ``response_format=url`` or a size no stage makes.
    """
    if req.response_format != "b64_json":
        raise RequestProblem(
            "response_format: 'url' is not supported (this server stores no images); "
            "send response_format='b64_json'",
            400,
        )
    sizes = [f"{size}x{size}" for _, size in stages]
    if req.size is None:
        last = len(stages) - 1
    elif req.size in sizes:
        last = max(i for i, s in enumerate(sizes) if s == req.size)
    else:
        raise RequestProblem(
            f"size: {req.size!r} is not an output size of this cascade; sizes are "
            f"{sorted(set(sizes), key=sizes.index)}",
            400,
        )
    names = [name for name, _ in stages[: last + 1]]
    overrides = {name: {"steps": req.steps} for name in names} if req.steps else {}
    return GenerateRequest.model_validate(
        {
            "prompts": [req.prompt] * req.n,
            "negative_prompt": req.negative_prompt,
            "seed": req.seed,
            "until": names[-1],
            "stages": overrides,
            "format": "png",
        }
    )


def theirs(e: RequestProblem) -> RequestProblem:
    """A problem of the generated request, named in the Images API's fields."""
    msg = str(e)
    for ours, their in (("prompts[", "prompt["), ("prompts:", "n:"), ("until", "size")):
        msg = msg.replace(ours, their)
    return RequestProblem(msg, e.status, e.headers)


def to_images_response(out: GenerateResponse) -> dict[str, Any]:
    """OpenAI's ImagesResponse (``created``, ``data[].b64_json``) plus this server's
    ``seed`` per image and ``settings`` to reproduce them."""
    return {
        "created": int(time.time()),
        "data": [
            {"b64_json": im.image, "revised_prompt": im.prompt, "seed": im.seed}
            for im in out.images
        ],
        "output_format": "png",
        "settings": out.settings,
    }
