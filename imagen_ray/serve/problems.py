"""The error a route raises for a request it refuses (answered as ``{"detail": ...}``)."""

from __future__ import annotations


class RequestProblem(ValueError):
    """A request that is well-formed JSON but asks for something this server will not do.

    Args:
        message: what is wrong, naming the field, the value and what is allowed.
        status: the HTTP status of the answer (422 unless told).
    """

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status
