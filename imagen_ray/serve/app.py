"""Building the Serve application from a ``serve:`` config and a saved cascade.

``build_app`` is the application builder named in generated Serve config files
(``import_path: imagen_ray.serve.app:build_app``), so ``serve run serve_app.yaml`` and
``serve deploy serve_app.yaml`` build exactly what ``imagen-ray serve`` runs.

The cascade directory must be readable at the same path on every node that runs a replica
(a shared filesystem, or the same files baked into the image).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from imagen_ray.cluster import Demand
from imagen_ray.config import (
    ConfigError,
    ServeConfig,
    ServeDeploymentConfig,
    load_serve_config,
    validate,
)

IMPORT_PATH = "imagen_ray.serve.app:build_app"
log = logging.getLogger(__name__)


def check_cascade_dir(cfg: ServeConfig) -> list[Path]:
    """The stage directories of ``cfg.cascade``; a clear error when it is unset or unusable."""
    from imagen_ray.cascade.io import read_cascade_manifest
    from imagen_ray.publish.assemble import check_stages

    if not cfg.cascade:
        raise ConfigError(
            "no cascade to serve: set serve.cascade in the config or pass --cascade DIR (a "
            "directory written by `imagen-ray init`, `imagen-ray cascade assemble` or "
            "`Cascade.save`, or one exported stage directory)"
        )
    if not Path(cfg.cascade).is_dir():
        raise ConfigError(
            f"serve.cascade={cfg.cascade!r} is not a directory; create one with "
            "`imagen-ray init --config configs/tiny/cascade.yaml --out DIR` or point at an "
            "exported cascade"
        )
    dirs = read_cascade_manifest(cfg.cascade)  # a single stage directory is a 1-stage cascade
    check_stages(dirs)  # one text encoder, sizes chain: fail here, not in a replica
    return dirs


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port``.

    Ray Serve's proxy binds with SO_REUSEPORT, so a second Serve instance on the same port
    does not fail: the kernel silently splits connections between the two servers. Check
    first (a plain bind, without SO_REUSEPORT, fails while anyone listens).
    """
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_exposure(cfg: ServeConfig) -> str | None:
    """Refuse to serve a non-loopback host without auth unless told so explicitly.

    Returns:
        A warning to log when ``serve.allow_unauthenticated`` lets an open server through,
        else None.

    Raises:
        ConfigError: ``serve.host`` is not loopback, auth is off and not explicitly allowed.
    """
    from imagen_ray.serve.auth import is_loopback

    if cfg.auth.enabled or is_loopback(cfg.host):
        return None
    if not cfg.allow_unauthenticated:
        raise ConfigError(
            f"serve.host={cfg.host!r} exposes the server beyond this machine with auth off: "
            "set serve.auth.enabled=true (token from $IMAGEN_RAY_TOKEN or "
            "serve.auth.token_file), or, to serve without auth on purpose, "
            "serve.allow_unauthenticated=true"
        )
    return (
        f"serving on {cfg.host} WITHOUT auth (serve.allow_unauthenticated=true): anyone who "
        "reaches this port can generate images; set serve.auth.enabled=true to require a token"
    )


def _backpressure(retry_after_s: float) -> dict[str, Any]:
    return {"status_code": 503, "retry_after_s": retry_after_s}


def deployment_options(d: ServeDeploymentConfig, retry_after_s: float = 2.0) -> dict[str, Any]:
    """``Deployment.options(...)`` for one deployment's settings."""
    opts: dict[str, Any] = {
        "max_ongoing_requests": d.max_ongoing_requests,
        "max_queued_requests": d.max_queued_requests,
        "backpressure_config": _backpressure(retry_after_s),
        "ray_actor_options": {"num_cpus": d.num_cpus, "num_gpus": d.num_gpus},
    }
    if d.autoscaling is not None:
        opts["autoscaling_config"] = d.autoscaling.model_dump()
    else:
        opts["num_replicas"] = d.num_replicas
    return opts


def serve_demands(cfg: ServeConfig) -> list[Demand]:
    """What the application's replicas hold once deployed (autoscaled deployments at their
    ``min_replicas``), for :func:`imagen_ray.cluster.check_demands`."""
    from imagen_ray.cascade.io import read_stage_meta

    def demand(what: str, d: ServeDeploymentConfig) -> Demand:
        n = d.autoscaling.min_replicas if d.autoscaling is not None else d.num_replicas
        return Demand(
            f"{what} ({n} x num_cpus {d.num_cpus:g}, num_gpus {d.num_gpus:g})",
            {"CPU": d.num_cpus, "GPU": d.num_gpus},
            n,
            fix=f"lower the {what}'s num_replicas, num_cpus or num_gpus, or add nodes",
        )

    names = [read_stage_meta(d)["stage"]["name"] for d in check_cascade_dir(cfg)]
    ing = cfg.ingress
    return [
        Demand(
            f"serve.ingress ({ing.num_replicas} x num_cpus {ing.num_cpus:g})",
            {"CPU": ing.num_cpus},
            ing.num_replicas,
            fix="lower serve.ingress.num_replicas or num_cpus",
        ),
        demand("serve.encoder", cfg.encoder),
        *(demand(f"stage {n!r} deployment", cfg.stage_deployment(n)) for n in names),
    ]


def build_application(cfg: ServeConfig) -> Any:
    """Bind the deployments: ``Ingress(TextEncoder, [Stage(base), Stage(sr), ...])``."""
    from imagen_ray.cascade.io import read_stage_meta
    from imagen_ray.serve.auth import read_token, token_digest
    from imagen_ray.serve.deployments import StageDeployment, TextEncoderDeployment
    from imagen_ray.serve.ingress import Ingress

    dirs = check_cascade_dir(cfg)
    metas = [read_stage_meta(d) for d in dirs]
    names = [m["stage"]["name"] for m in metas]
    unknown = sorted({s.name for s in cfg.stages} - set(names))
    if unknown:
        raise ConfigError(f"serve.stages names {unknown} are not stages of the cascade {names}")
    warning = check_exposure(cfg)
    if warning:
        log.warning(warning)
    # Read once here, in the driver; the ingress replicas get only the digest.
    digest = (
        token_digest(read_token(cfg.auth.token_env, cfg.auth.token_file))
        if cfg.auth.enabled
        else None
    )
    encoder = TextEncoderDeployment.options(  # type: ignore[attr-defined]
        **deployment_options(cfg.encoder, cfg.retry_after_s)
    ).bind(metas[0]["text"], cfg.encoder.model_dump())
    stages = []
    for i, (d, name) in enumerate(zip(dirs, names, strict=True)):
        dep = cfg.stage_deployment(name)
        stages.append(
            StageDeployment.options(  # type: ignore[attr-defined]
                name=f"Stage-{name}", **deployment_options(dep, cfg.retry_after_s)
            ).bind(str(Path(d).resolve()), i, dep.model_dump())
        )
    ing = cfg.ingress
    return Ingress.options(  # type: ignore[attr-defined]
        num_replicas=ing.num_replicas,
        max_ongoing_requests=ing.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        backpressure_config=_backpressure(cfg.retry_after_s),
        ray_actor_options={"num_cpus": ing.num_cpus},
    ).bind(encoder, stages, cfg.model_dump(mode="json"), str(Path(cfg.cascade).resolve()), digest)


def stop_app(name: str) -> None:
    """Stop serving application ``name``: its replicas finish the requests they hold and stop.

    Serve's controller and HTTP proxies stay: on a joined cluster they go on serving its
    other applications, and a local cluster's stop with ``ray.shutdown()``. Not
    ``serve.shutdown()``: in Ray 2.60 it waits on the controller's ``graceful_shutdown`` call,
    which ends when the controller kills itself; the controller retries its calls without
    limit, so the driver reports that call as failed and retried, and the console shows the
    raylet line "Task ServeController.graceful_shutdown failed … killed by `ray.kill`".
    """
    from ray import serve
    from ray.serve.exceptions import RayServeException

    with contextlib.suppress(RayServeException):  # Serve never started: nothing to stop
        serve.delete(name)


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for Serve config files.

    Args (all optional, applied in this order):
        config: path of a YAML file with a ``serve:`` section.
        serve: the ``serve:`` section inline (a mapping); replaces ``config``.
        set: list of ``serve.key=value`` overrides.
        cascade: cascade directory (replaces ``serve.cascade``).
    """
    from imagen_ray.config import apply_overrides

    known = {"config", "serve", "set", "cascade"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"build_app: unknown args {unknown}; valid args: {sorted(known)}")
    overrides = list(args.get("set") or [])
    if "serve" in args:
        data = apply_overrides({"serve": dict(args["serve"])}, overrides)
        cfg = validate(ServeConfig, data["serve"], "build_app args.serve")
    elif "config" in args:
        cfg = load_serve_config(args["config"], overrides)
    else:
        cfg = validate(ServeConfig, apply_overrides({"serve": {}}, overrides)["serve"], "args")
    if args.get("cascade"):
        cfg = cfg.model_copy(update={"cascade": str(args["cascade"])})
    return build_application(cfg)


def serve_deploy_config(cfg: ServeConfig) -> dict[str, Any]:
    """A Ray Serve config (``serve run`` / ``serve deploy`` / KubeRay ``serveConfigV2``)
    that builds this application through :func:`build_app`; checked against Ray's schema."""
    from ray.serve.schema import ServeDeploySchema

    serve_section = cfg.model_dump(mode="json")
    if cfg.cascade:
        serve_section["cascade"] = str(Path(cfg.cascade).resolve())
    out = {
        "proxy_location": "EveryNode",
        "http_options": {
            "host": cfg.host,
            "port": cfg.port,
            "request_timeout_s": cfg.request_timeout_s,
        },
        "applications": [
            {
                "name": cfg.app_name,
                "route_prefix": cfg.route_prefix,
                "import_path": IMPORT_PATH,
                "args": {"serve": serve_section},
            }
        ],
    }
    ServeDeploySchema.model_validate(out)
    return out
