"""The error a route raises for a request it refuses (answered as ``{"detail": ...}``)."""

from __future__ import annotations

from typing import Any


class RequestProblem(ValueError):
    """A request that is well-formed JSON but asks for something this server will not do.

    Also raised by a deployment for a prompt its model rejects (the tokenizer), so that the
    ingress answers that request, and only it, with a 4xx. Survives pickling across Ray.

    Args:
        message: what is wrong, naming the field, the value and what is allowed.
        status: the HTTP status of the answer (422 unless told).
        headers: extra response headers (``Retry-After`` of a 503).
    """

    def __init__(
        self, message: str, status: int = 422, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message, status, headers)
        self.message = message
        self.status = status
        self.headers = headers or {}

    def __str__(self) -> str:
        return self.message


def unicode_problem(field: str, text: str) -> str | None:
    """Why ``text`` is not valid Unicode text (a lone surrogate, e.g. JSON ``"\\ud800"``), or
    None when it is. The message never echoes the text (it could not be encoded either)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"{field}: not valid Unicode text (a lone surrogate U+{ord(text[e.start]):04X} at "
            f"character {e.start}); send UTF-8 text, with surrogate pairs only in pairs"
        )
    return None


def readable_errors(errors: list[dict[str, Any]]) -> str:
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
