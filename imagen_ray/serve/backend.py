"""What the HTTP routes need of the ingress replica, as a protocol: the routes
(:mod:`imagen_ray.serve.api`, :mod:`imagen_ray.serve.edit_api`) are tested against a fake."""

from __future__ import annotations

from typing import Any, Protocol

from imagen_ray.serve.schemas import GenerateRequest, GenerateResponse


class Backend(Protocol):
    """What the routes need of the ingress replica (:class:`imagen_ray.serve.ingress.Ingress`).

    Attributes:
        names: the cascade's stage names, base first.
        token_digest: SHA-256 (hex) of the bearer token requests must send, or None when
            auth is off.
        max_body_bytes: the largest request body accepted (``serve.max_body_bytes``).
        stage_sizes: (name, output size) per stage, base first.
        cfg: the serve config (``max_upload_bytes``, ``max_upload_pixels``,
            ``upload_formats`` bound uploads).
    """

    names: list[str]
    token_digest: str | None
    max_body_bytes: int
    stage_sizes: list[tuple[str, int]]
    cfg: Any

    def models(self) -> dict[str, Any]: ...

    async def stats(self) -> dict[str, Any]: ...

    async def generate(
        self, req: GenerateRequest, edit: dict[str, Any] | None = None
    ) -> GenerateResponse: ...
