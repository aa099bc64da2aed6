"""A real S3 API on 127.0.0.1 for the remote-storage tests: moto's server mode, in a thread.

Clients find it the way they find AWS: the standard environment variables
(``AWS_ENDPOINT_URL`` and dummy credentials), which pyarrow (Ray Train's checkpoint uploads,
Ray Data's reads, :mod:`imagen_ray.storage`) and boto3 both read. Ray workers started after
:func:`s3_server` get them from the driver's environment (a local cluster's processes inherit
it) and, for training workers, through the launcher's forwarded variables.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask 169.254.169.254 for credentials
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server on 127.0.0.1:``port``, which a test can stop and start again on the
    same port (the buckets live in this process, so they survive a restart)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self._server: Any = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def outage_on(
        self, ask: Path | Callable[[], bool], down: Path | None, seconds: float
    ) -> Outage:
        """A thread that waits for ``ask`` (a file to exist, or a callable to return True),
        stops the server, writes ``down`` (when given), and starts the server again
        ``seconds`` later (see :class:`Outage`)."""
        when = ask if callable(ask) else ask.exists
        out = Outage(self, when, down, seconds)
        out.start()
        return out


class Outage(threading.Thread):
    """:meth:`S3Server.outage_on`'s thread; ``stopped_at`` / ``started_at`` (monotonic)
    record when the server went down and came back."""

    def __init__(
        self, server: S3Server, when: Callable[[], bool], down: Path | None, seconds: float
    ) -> None:
        super().__init__(daemon=True)
        self.server, self.when, self.down, self.seconds = server, when, down, seconds
        self.stopped_at: float | None = None
        self.started_at: float | None = None
        self._cancel = threading.Event()

    def run(self) -> None:
        while not self.when():
            if self._cancel.wait(0.05):
                return
        self.server.stop()
        self.stopped_at = time.monotonic()
        if self.down is not None:
            self.down.write_text("down\n")
        self._cancel.wait(self.seconds)
        self.server.start()
        self.started_at = time.monotonic()

    def cancel(self) -> None:
        self._cancel.set()


@contextmanager
def s3_service(*buckets: str) -> Iterator[S3Server]:
    """Start moto's S3 server on a free port, create ``buckets``, set the AWS environment;
    yields the server. The environment is restored and the server stopped on exit."""
    import boto3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    server = S3Server(free_port())
    server.start()
    env = {**ENV, "AWS_ENDPOINT_URL": server.endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=server.endpoint)
        for b in buckets:
            client.create_bucket(Bucket=b)
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@contextmanager
def s3_server(*buckets: str) -> Iterator[str]:
    """:func:`s3_service`, yielding the endpoint URL."""
    with s3_service(*buckets) as server:
        yield server.endpoint
