"""Bearer-token auth of the HTTP API: where the server's token comes from."""

from __future__ import annotations

import os
from pathlib import Path


def read_token(env: str, file: str | None) -> str:
    """The bearer token: the environment variable ``env`` if set, else the file's contents.

    Raises:
        ValueError: the file does not exist, or neither gives a token.
    """
    token = os.environ.get(env, "").strip()
    if not token and file:
        p = Path(file).expanduser()
        if not p.is_file():
            raise ValueError(
                f"serve.auth.token_file={file!r} does not exist; write the token there or set "
                f"the environment variable {env}"
            )
        token = p.read_text().strip()
    if not token:
        raise ValueError(
            f"serve.auth.enabled is true but no token was found: set the environment variable "
            f"{env} (serve.auth.token_env) or serve.auth.token_file, or set "
            "serve.auth.enabled=false"
        )
    return token
