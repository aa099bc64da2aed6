"""Remote writes retried through an outage (imagen_ray.storage.write_bytes_retrying), against
moto's S3 server stopped and started again by the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagen_ray import storage
from tests.s3server import s3_service

BUCKET = "retry-bucket"


@pytest.fixture(scope="module")
def s3():
    with s3_service(BUCKET) as server:
        yield server


@pytest.mark.slow
def test_a_write_waits_out_an_outage(s3) -> None:
    said: list[str] = []
    waits: list[float] = []

    def wait(s: float) -> None:  # the outage lasts through two waits
        waits.append(s)
        if len(waits) == 2:
            s3.start()

    path = f"s3://{BUCKET}/a/image.png"
    s3.stop()
    try:
        storage.write_bytes_retrying(path, b"png", retry_s=300, say=said.append, sleep=wait)
    finally:
        if len(waits) < 2:
            s3.start()
    assert waits == [1.0, 2.0]
    assert len(said) == 2 and "attempt 1" in said[0] and "retrying in 2 s" in said[1]
    assert storage.read_bytes(path) == b"png"


@pytest.mark.slow
def test_a_write_that_keeps_failing_names_the_path_and_the_wait(s3) -> None:
    waits: list[float] = []
    path = f"s3://{BUCKET}/b/image.png"
    s3.stop()
    try:
        with pytest.raises(storage.StorageUnavailable) as err:
            storage.write_bytes_retrying(path, b"png", retry_s=2, say=lambda s: None,
                                         sleep=waits.append)  # fmt: skip
    finally:
        s3.start()
    assert waits == [1.0]  # 1 s, then 2 more would pass retry_s=2
    assert path in str(err.value) and "retried for 1 s" in str(err.value)
    assert not storage.exists(path)


def test_a_local_write_is_tried_once(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where a directory should be")
    waits: list[float] = []
    with pytest.raises(OSError):
        storage.write_bytes_retrying(blocked / "x.png", b"png", retry_s=300, sleep=waits.append)
    assert waits == []
    storage.write_bytes_retrying(tmp_path / "ok.png", b"png", retry_s=0)
    assert (tmp_path / "ok.png").read_bytes() == b"png"
