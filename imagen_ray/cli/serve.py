"""``imagen-ray serve``: run the cascade behind HTTP in the foreground, or write a Serve config."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import add_overrides_argument, add_verbose_argument

EPILOG = """\
examples:
  imagen-ray init --config configs/tiny/cascade.yaml --out runs/tiny-random
  imagen-ray serve --config configs/tiny/serve.yaml --cascade runs/tiny-random
  imagen-ray serve --config configs/tiny/serve.yaml --set serve.port=8080 \\
      --set serve.auth.enabled=true          # token (>= 32 chars) from $IMAGEN_RAY_TOKEN
  IMAGEN_RAY_TOKEN=$(openssl rand -hex 32) imagen-ray serve -c configs/tiny/serve.yaml \
      --set serve.host=0.0.0.0 --set serve.auth.enabled=true   # exposed: auth required
  imagen-ray serve --config configs/tiny/serve.yaml --cascade /shared/cascade \\
      --write-serve-config serve_app.yaml    # then: serve deploy serve_app.yaml

then open http://127.0.0.1:8000/ or
  curl -s http://127.0.0.1:8000/v1/generate -H 'Content-Type: application/json' \\
      -d '{"prompts": "a red circle on the left", "seed": 1}'
"""


def register(sub: Any) -> None:
    """Add the ``serve`` subcommand to the ``imagen-ray`` parser."""
    p = sub.add_parser(
        "serve",
        help="serve a saved cascade over HTTP with Ray Serve (API + web page)",
        description="Deploy the cascade as Ray Serve deployments (FastAPI ingress -> text "
        "encoder -> one deployment per stage, each with dynamic batching) and serve "
        "POST /v1/generate, GET /v1/models, GET /healthz, the OpenAPI docs at /docs and a web "
        "page at /. Runs in the foreground until Ctrl-C, which shuts Serve and Ray down. "
        "With --write-serve-config it writes a Ray Serve config file for `serve run` / "
        "`serve deploy` / KubeRay instead and exits.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        "-c",
        required=True,
        metavar="YAML",
        help="config file with a `serve:` section (configs/tiny/serve.yaml)",
    )
    add_overrides_argument(p)
    p.add_argument(
        "--cascade", metavar="DIR", help="saved cascade to serve (replaces serve.cascade)"
    )
    p.add_argument(
        "--address",
        metavar="ADDR",
        help="Ray cluster to join (default: $RAY_ADDRESS, else start a local Ray)",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        metavar="N",
        help="logical CPUs of a local Ray (default: what the replicas reserve, at least the "
        "machine's cores)",
    )
    add_verbose_argument(p)
    p.add_argument(
        "--write-serve-config",
        metavar="FILE",
        help="write a Ray Serve config YAML (import path imagen_ray.serve.app:build_app) "
        "and exit without serving",
    )
    p.set_defaults(func=cmd_serve)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _write_serve_config(cfg: Any, out: Path, *, stages: int) -> None:
    """``--write-serve-config``: the Ray Serve config YAML of ``cfg``, with how to run it."""
    import yaml

    from imagen_ray.fs import atomic_write_text
    from imagen_ray.serve.app import serve_deploy_config

    head = (
        "# Ray Serve config written by `imagen-ray serve --write-serve-config`.\n"
        f"# Run: serve run {out}   Deploy to a running cluster: serve deploy {out}\n"
        "# serve.cascade must exist at this path on every node.\n"
    )
    atomic_write_text(out, head + yaml.safe_dump(serve_deploy_config(cfg), sort_keys=False))
    print(f"wrote {out} (application {cfg.app_name!r}, {stages} stages)")


def cmd_serve(args: argparse.Namespace) -> int:
    """``imagen-ray serve``: serve in the foreground, or write a Serve config and exit."""
    import os

    from imagen_ray.config import load_serve_config
    from imagen_ray.serve.app import check_cascade_dir, check_exposure
    from imagen_ray.serve.auth import read_token

    cfg = load_serve_config(args.config, args.overrides, args.cascade)
    dirs = check_cascade_dir(cfg)
    warning = check_exposure(cfg)  # an exposed host without auth stops here
    if args.write_serve_config:
        _write_serve_config(cfg, Path(args.write_serve_config), stages=len(dirs))
        return 0

    import ray
    from ray import serve

    from imagen_ray.cluster import ClusterTooSmall, check_demands, cluster_capacity, local_num_cpus
    from imagen_ray.runtime import init_ray, logs_hint
    from imagen_ray.serve.app import build_application, port_in_use, serve_demands, stop_app

    if cfg.auth.enabled:
        read_token(cfg.auth.token_env, cfg.auth.token_file)  # a missing or short token stops
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address and port_in_use(cfg.host, cfg.port):
        raise ValueError(
            f"{cfg.host}:{cfg.port} is already in use by another process (another imagen-ray "
            "serve?); stop it or choose another port with --set serve.port=PORT"
        )
    print(f"starting Ray ({'joining ' + address if address else 'local'})…", flush=True)
    demands = serve_demands(cfg)
    num_cpus = args.num_cpus
    if num_cpus is None and not address:  # a local cluster gets the replicas' CPUs
        num_cpus = local_num_cpus(demands)
    logs = init_ray(address=address, num_cpus=num_cpus, verbose=args.verbose)
    print(logs_hint(logs, args.verbose), flush=True)
    try:
        wait = check_demands(cluster_capacity(local=not address), demands)
    except ClusterTooSmall:
        ray.shutdown()
        raise
    if wait:
        print(wait, flush=True)
    # Ctrl-C, and SIGTERM (docker stop, systemd), shut down cleanly; SIGINT is set explicitly
    # because a process started in the background inherits it ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        serve.start(
            http_options={
                "host": cfg.host,
                "port": cfg.port,
                "request_timeout_s": cfg.request_timeout_s,
            }
        )
        print(f"deploying {len(dirs)} stages from {cfg.cascade}…", flush=True)
        t0 = time.perf_counter()
        serve.run(build_application(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
        url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        print(
            f"ready in {time.perf_counter() - t0:.0f} s: web page {url}/ · API {url}/v1/generate "
            f"· docs {url}/docs · auth {'on' if cfg.auth.enabled else 'off'}. Ctrl-C stops.",
            flush=True,
        )
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("shutting down…", file=sys.stderr, flush=True)
    finally:
        stop_app(cfg.app_name)  # a joined cluster's other applications go on running
        ray.shutdown()
    return 0
