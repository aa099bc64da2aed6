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
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def s3_server(*buckets: str) -> Iterator[str]:
    """Start moto's S3 server on a free port, create ``buckets``, set the AWS environment;
    yields the endpoint URL. The environment is restored and the server stopped on exit."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {**ENV, "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        for b in buckets:
            client.create_bucket(Bucket=b)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()
