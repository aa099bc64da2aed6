"""The serving soak (``python bench/serve.py --soak``): many concurrent clients, valid requests
mixed with every kind of invalid one, against one server with auth on.

Each of ``clients`` threads sends requests back to back until ``requests`` have been sent in
all; request k is of kind ``KINDS[k % len(KINDS)]``. Valid kinds must never get a 5xx; every
invalid kind must get its 4xx. Reported (one JSON object): counts per kind and status, the
5xx of valid requests, the invalid requests that did not get a 4xx, p50/p99 latency of the
valid requests, and the resident memory (RSS) of this driver's Serve processes (controller,
proxy, replicas) after a warm-up vs at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

TOKEN_ENV = "IMAGEN_RAY_SOAK_TOKEN"
MAX_BODY = 16384
FAST = {"base": {"steps": 2}, "sr64": {"steps": 1}}

# kind -> (method path, body: dict (JSON), str/bytes (raw), headers override, expected class)
# expected: "ok" (2xx, never 5xx) or the exact 4xx status.
Request = tuple[str, Any, dict[str, str], int | str]


def kinds(token: str) -> dict[str, Request]:
    """Every kind of request the soak sends, valid ones first."""
    auth = {"Authorization": f"Bearer {token}"}
    raw = {**auth, "Content-Type": "application/json"}
    gen = "/v1/generate"
    return {
        "valid_base": (gen, {"prompts": "a circle", "until": "base", "stages": FAST}, auth, "ok"),
        "valid_cascade": (gen, {"prompts": ["a square", "a tree"], "stages": FAST}, auth, "ok"),
        "valid_openai": (
            "/v1/images/generations",
            {"prompt": "a green triangle", "size": "32x32", "steps": 2},
            auth,
            "ok",
        ),
        "malformed_json": (gen, '{"prompts": "a", ', raw, 400),
        "wrong_type": (gen, {"prompts": 5, "seed": "seven"}, auth, 422),
        "nan": (gen, '{"prompts": "a", "stages": {"base": {"guidance_scale": NaN}}}', raw, 422),
        "huge_number": (gen, '{"prompts": "a", "seed": 1e400}', raw, 422),
        "huge_steps": (gen, {"prompts": "a", "stages": {"base": {"steps": 10**30}}}, auth, 422),
        "seed_overflow": (gen, {"prompts": ["a", "b"], "seed": 2**32 - 1}, auth, 422),
        "surrogate": (gen, {"prompts": ["\ud800 red"], "until": "base"}, auth, 422),
        "surrogate_negative": (gen, {"prompts": "a", "negative_prompt": "\udfff"}, auth, 422),
        "oversized_body": (gen, json.dumps({"prompts": "x" * (MAX_BODY + 10)}), raw, 413),
        "wrong_token": (gen, {"prompts": "a"}, {"Authorization": "Bearer " + "0" * 64}, 401),
        "no_token": (gen, {"prompts": "a"}, {}, 401),
        "openai_bad_size": ("/v1/images/generations", {"prompt": "a", "size": "7x7"}, auth, 400),
    }


def serve_rss_mb() -> dict[str, float]:
    """RSS (MiB) of the Serve processes started under this driver, by process title."""
    import psutil

    out: dict[str, float] = defaultdict(float)
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            rss = p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for key in ("ServeController", "ProxyActor", "ServeReplica"):
            if key in title:
                # "ray::ProxyActor.receive_asgi_messages" -> "ProxyActor" (the title names
                # the method running now)
                name = title.split("ray::", 1)[-1].split()[0] if "ray::" in title else key
                name = name.split(".")[0]
                out[name] += rss / 2**20
    return {k: round(v, 1) for k, v in sorted(out.items())}


def soak(
    base_url: str,
    token: str,
    requests_total: int,
    clients: int,
    log: Callable[[str], None] = lambda m: None,
    *,
    minutes: float | None = None,
    sample_every_s: float = 30.0,
) -> dict[str, Any]:
    """Run the soak against a server (auth on with ``token``, ``max_body_bytes=MAX_BODY``):
    ``requests_total`` requests, or with ``minutes`` for that long, the Serve processes'
    RSS sampled every ``sample_every_s`` (:func:`memory_over_time`)."""
    import requests

    table = kinds(token)
    names = list(table)
    statuses: dict[str, Counter[int]] = {k: Counter() for k in names}
    latencies: list[float] = []
    timed: list[tuple[float, float]] = []  # (seconds since the start, latency) of valid ones
    lock = threading.Lock()
    counter = iter(range(requests_total if minutes is None else 2**62))
    deadline: float | None = None  # set when the clients start, after the warm-up

    def client(_: int) -> None:
        with requests.Session() as s:
            while True:
                with lock:
                    k = next(counter, None)
                if k is None or (deadline is not None and time.perf_counter() > deadline):
                    return
                kind = names[k % len(names)]
                path, body, headers, _expected = table[kind]
                t0 = time.perf_counter()
                try:
                    if isinstance(body, (dict, list)):
                        r = s.post(base_url + path, json=body, headers=headers, timeout=300)
                    else:
                        r = s.post(base_url + path, data=body, headers=headers, timeout=300)
                    code = r.status_code
                except requests.RequestException:
                    code = 0  # no answer at all counts as a failure
                dt = time.perf_counter() - t0
                with lock:
                    statuses[kind][code] += 1
                    if table[kind][3] == "ok":
                        latencies.append(dt)
                        timed.append((time.perf_counter() - start, dt))

    # Warm-up (lazy kernels, first batches), then the memory at the start.
    for kind in ("valid_base", "valid_cascade", "valid_openai"):
        path, body, headers, _ = table[kind]
        requests.post(base_url + path, json=body, headers=headers, timeout=300)
    rss_start = serve_rss_mb()
    what = f"{minutes:g} min" if minutes is not None else f"{requests_total} requests"
    log(f"soak: {what} from {clients} clients, {len(names)} kinds")
    start = time.perf_counter()
    if minutes is not None:
        deadline = start + 60 * minutes
    samples: list[tuple[float, float]] = [(0.0, sum(rss_start.values()))]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(sample_every_s):
            samples.append((time.perf_counter() - start, sum(serve_rss_mb().values())))
            log(f"soak: {samples[-1][0] / 60:.1f} min, Serve RSS {samples[-1][1]:.0f} MiB")

    watch = threading.Thread(target=sampler, daemon=True)
    watch.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    stop.set()
    watch.join()
    wall = time.perf_counter() - start
    rss_end = serve_rss_mb()
    samples.append((wall, sum(rss_end.values())))
    requests_total = sum(sum(c.values()) for c in statuses.values())

    valid_5xx = sum(
        n for k in names if table[k][3] == "ok" for code, n in statuses[k].items() if code >= 500
    )
    valid_not_2xx = sum(
        n
        for k in names
        if table[k][3] == "ok"
        for code, n in statuses[k].items()
        if not 200 <= code < 300
    )
    invalid_wrong = {
        k: dict(statuses[k])
        for k in names
        if table[k][3] != "ok" and set(statuses[k]) != {table[k][3]}
    }
    total_start, total_end = sum(rss_start.values()), sum(rss_end.values())
    return {
        "soak": True,
        "requests": requests_total,
        "clients": clients,
        "wall_s": round(wall, 2),
        "statuses": {k: {str(c): n for c, n in sorted(v.items())} for k, v in statuses.items()},
        "expected": {k: table[k][3] for k in names},
        "valid_requests": len(latencies),
        "valid_5xx": valid_5xx,
        "valid_not_2xx": valid_not_2xx,
        "invalid_requests": requests_total - len(latencies),
        "invalid_not_their_4xx": invalid_wrong,
        "latency_valid_p50_s": round(float(np.percentile(latencies, 50)), 4) if latencies else None,
        "latency_valid_p99_s": round(float(np.percentile(latencies, 99)), 4) if latencies else None,
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_mb_total_start": round(total_start, 1),
        "rss_mb_total_end": round(total_end, 1),
        "rss_growth_pct": round(100 * (total_end - total_start) / total_start, 1)
        if total_start
        else None,
        **({} if minutes is None else {"over_time": memory_over_time(samples, timed, wall)}),
    }


def memory_over_time(
    samples: list[tuple[float, float]], timed: list[tuple[float, float]], wall: float
) -> dict[str, Any]:
    """A timed soak's memory and latency over time: warm-up (the first 30 %, minutes 0-3 of
    10) apart from the steady state (the rest). ``samples``: (s, total Serve RSS MiB);
    ``timed``: (s, latency) of the valid requests."""
    warm = 0.3 * wall

    def rss_at(t: float) -> float:  # the sample nearest to t
        return min(samples, key=lambda x: abs(x[0] - t))[1]

    def p99(lo: float, hi: float) -> float | None:
        xs = [d for t, d in timed if lo <= t < hi]
        return round(float(np.percentile(xs, 99)), 4) if xs else None

    steady_start, end = rss_at(warm), samples[-1][1]
    minute = min(60.0, wall / 3)  # the short CI form: thirds instead of minutes
    return {
        "samples": [(round(t, 1), round(m, 1)) for t, m in samples],
        "warmup_s": round(warm, 1),
        "rss_mb_warmup_growth_pct": round(100 * (steady_start - samples[0][1]) / samples[0][1], 2),
        "rss_mb_steady_start": round(steady_start, 1),
        "rss_mb_steady_end": round(end, 1),
        "rss_steady_growth_pct": round(100 * (end - steady_start) / steady_start, 2),
        "window_s": round(minute, 1),
        "p99_third_window_s": p99(2 * minute, 3 * minute),
        "p99_last_window_s": p99(wall - minute, wall + 1),
    }


def run_soak(
    cascade: str,
    config: str,
    overrides: list[str],
    port: int,
    requests_total: int,
    clients: int,
    num_cpus: int,
    log: Callable[[str], None] = lambda m: None,
    *,
    minutes: float | None = None,
    sample_every_s: float = 30.0,
) -> dict[str, Any]:
    """Start Ray + Serve with auth on, serve ``cascade``, soak it, shut down."""
    import ray
    from ray import serve

    from imagen_ray.config import load_serve_config
    from imagen_ray.serve.app import build_application, free_port, port_in_use

    token = secrets.token_hex(32)
    os.environ[TOKEN_ENV] = token  # the driver reads it; replicas get only its digest
    if port_in_use("127.0.0.1", port):  # Serve would share it (SO_REUSEPORT)
        port = free_port()
    cfg = load_serve_config(
        config,
        [
            *overrides,
            "serve.auth.enabled=true",
            f"serve.auth.token_env={TOKEN_ENV}",
            f"serve.max_body_bytes={MAX_BODY}",
            f"serve.port={port}",
        ],
        cascade=cascade,
    )
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_application(cfg), name=cfg.app_name, route_prefix="/")
        return soak(
            f"http://127.0.0.1:{port}", token, requests_total, clients, log,
            minutes=minutes, sample_every_s=sample_every_s,
        )  # fmt: skip
    finally:
        # ray.shutdown() ends a local cluster's Serve too (see imagen_ray.serve.app.stop_app)
        ray.shutdown()
        os.environ.pop(TOKEN_ENV, None)
