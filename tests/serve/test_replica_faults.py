"""Replicas that die under load: 32 clients keep sending valid requests while a stage replica
and the encoder replica are killed, each both with ``ray.kill`` and with ``SIGKILL`` of its
process (:data:`KILLS`). Requests
in flight get a 503 with Retry-After, never a 500 and never a hang; Serve starts new
replicas, and every request after the recovery gets a 200. The printed summary gives the
requests that failed and the time to recover from each kill."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import ray
import requests
from ray import serve

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
FAST = {"base": {"steps": 2}, "sr64": {"steps": 1}}
CLIENTS = 32
# Each replica kind killed both ways, one after the other recovered: Ray's kill, SIGKILL.
KILLS = (
    ("Stage-sr64", "ray.kill"),
    ("TextEncoderDeployment", "SIGKILL"),
    ("Stage-base", "SIGKILL"),
    ("TextEncoderDeployment", "ray.kill"),
)


def _replica(deployment: str) -> tuple[Any, int]:
    """(actor handle, pid) of the one live replica of a deployment of the app."""
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and f"#{deployment}#" in a["name"]
    ]
    live: list[tuple[Any, int]] = []
    for name in names:
        with contextlib.suppress(Exception):  # a replica being replaced
            actor = ray.get_actor(name, namespace="serve")
            live.append((actor, ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))))
    assert len(live) == 1, names
    return live[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config, load_serve_config
    from imagen_ray.serve.app import build_application, free_port

    cascade = Cascade.from_config(load_cascade_config(ROOT / "configs/tiny/cascade.yaml"))
    path = cascade.save(tmp_path_factory.mktemp("faults") / "tiny")
    port = free_port()
    cfg = load_serve_config(
        ROOT / "configs/tiny/serve.yaml",
        [
            "serve.stage_defaults.num_cpus=0.2",
            "serve.encoder.num_cpus=0.2",
            "serve.retry_after_s=2",
            "serve.request_timeout_s=60",
            f"serve.port={port}",
        ],
        cascade=str(path),
    )
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_application(cfg), name=cfg.app_name, route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    ray.shutdown()


def test_killed_replicas_cost_503s_with_retry_after_and_come_back(server: str) -> None:
    # (sent, answered: s since the start, status, Retry-After)
    answers: list[tuple[float, float, int, str | None]] = []
    lock = threading.Lock()
    stop = threading.Event()
    t0 = time.perf_counter()

    def client() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                start = time.perf_counter() - t0
                try:
                    r = s.post(
                        f"{server}/v1/generate",
                        json={"prompts": "a red circle", "stages": FAST},
                        timeout=90,
                    )
                    code, retry = r.status_code, r.headers.get("Retry-After")
                except requests.RequestException:
                    code, retry = 0, None  # no answer: a hang or a dropped connection
                with lock:
                    answers.append((start, time.perf_counter() - t0, code, retry))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(8)
    killed: list[tuple[str, float]] = []
    for deployment, how in KILLS:
        actor, pid = _replica(deployment)
        killed.append((f"{deployment} ({how})", time.perf_counter() - t0))
        if how == "ray.kill":
            ray.kill(actor, no_restart=False)
        else:
            os.kill(pid, signal.SIGKILL)
        # the next kill once a request sent after this one got a 200 (a new replica answers
        # 9-16 s after a kill on a quiet 2-core machine), and 8 s of answers after that
        at, deadline = killed[-1][1], time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if any(t > at and c == 200 for t, _, c, _ in answers):
                    break
            time.sleep(0.5)
        time.sleep(8)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a client hung"

    codes = Counter(code for _, _, code, _ in answers)
    failed = [(round(t, 2), c, r) for t, _, c, r in answers if c != 200]
    print({"clients": CLIENTS, "answers": dict(codes), "failed": failed})  # for the log
    assert set(codes) <= {200, 503}, codes  # never a 500, never no answer
    assert all(r is not None and int(r) >= 1 for _, c, r in failed if c == 503)

    def recovery(at: float) -> float:
        """Seconds from a kill to the first 200 answered to a request sent after it."""
        ends = [end for t, end, c, _ in answers if t > at and c == 200]
        assert ends, f"no request sent after the kill at {at:.1f} s got a 200"
        return min(ends) - at

    back = {what: round(recovery(at), 1) for what, at in killed}
    print({"recovery_s": back})
    assert all(s < 45 for s in back.values()), back  # within serve.request_timeout_s
    for what, at in killed:  # sent after each recovery, answered before the next kill: 200
        recovered = at + back[what]
        nxt = min([k for _, k in killed if k > at], default=float("inf"))
        after = [c for t, end, c, _ in answers if recovered < t and end < nxt]
        assert after and set(after) == {200}, (what, Counter(after))


@pytest.mark.parametrize(
    "make, died",
    [
        (lambda: ray.exceptions.RayActorError(), True),
        (
            lambda: ray.serve.exceptions.RayServeException(
                "Request to deployment 'Stage-base' failed because an upstream actor died "
                "before finishing a dependent task."
            ),
            True,
        ),
        (lambda: ray.serve.exceptions.RayServeException("the app is being deleted"), False),
        (lambda: ValueError("bad input"), False),
    ],
)
def test_which_errors_mean_a_replica_died(make: Any, died: bool) -> None:
    """Without a cluster: the errors answered 503 (the one seen under a SIGKILLed encoder
    is Serve's own exception, carrying the ActorDiedError as text), alone or as a cause."""
    from imagen_ray.serve.ingress import _replica_died

    err = make()
    assert _replica_died(err) is died
    outer = RuntimeError("wrapped")
    outer.__cause__ = err
    assert _replica_died(outer) is died
