"""Bearer-token auth of the HTTP API: where the server's token comes from, and how it is
checked without the token itself travelling to the replicas.

The driver (``imagen-ray serve`` or the ``build_app`` builder) reads the token once; the ingress
replicas get only its SHA-256 and compare the digest of each request's token with it in
constant time (:func:`token_matches`), so no replica reads the environment or a token file.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from pathlib import Path

MIN_TOKEN_CHARS = 32  # e.g. `openssl rand -hex 32` (64 characters)


def read_token(env: str, file: str | None) -> str:
    """The bearer token: the environment variable ``env`` if set, else the file's contents.

    Raises:
        ValueError: the file does not exist, neither gives a token, or the token is shorter
            than :data:`MIN_TOKEN_CHARS` characters.
    """
    token = os.environ.get(env, "").strip()
    source = f"the environment variable {env}"
    if not token and file:
        p = Path(file).expanduser()
        if not p.is_file():
            raise ValueError(
                f"serve.auth.token_file={file!r} does not exist; write the token there or set "
                f"the environment variable {env}"
            )
        token = p.read_text().strip()
        source = f"serve.auth.token_file={file!r}"
    if not token:
        raise ValueError(
            f"serve.auth.enabled is true but no token was found: set the environment variable "
            f"{env} (serve.auth.token_env) or serve.auth.token_file, or set "
            "serve.auth.enabled=false"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"the token from {source} has {len(token)} characters, fewer than "
            f"{MIN_TOKEN_CHARS}; make a longer one, e.g. `openssl rand -hex 32`"
        )
    return token


def token_digest(token: str) -> str:
    """SHA-256 of the token (hex): what the ingress replicas get instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(sent: str | None, digest: str) -> bool:
    """Whether a request's bearer token has the server token's digest (constant time)."""
    if sent is None:
        return False
    return hmac.compare_digest(token_digest(sent), digest)


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds only the local machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
