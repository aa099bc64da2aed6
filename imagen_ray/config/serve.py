"""The serve file: Ray Serve settings for one served cascade (``configs/tiny/serve.yaml``).

A serve file is its own file type, apart from run files: a top-level ``serve:`` mapping (and
an optional ``version``). The application is ingress -> text encoder -> one deployment per
cascade stage; each deployment has replicas, resources and dynamic batching.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from imagen_ray.config.base import CONFIG_FORMAT_VERSION, Strict, check_version
from imagen_ray.config.dtypes import InferenceDType, resolve_dtype
from imagen_ray.images import ImageFormat


class ServeAutoscalingConfig(Strict):
    """Ray Serve autoscaling of one deployment (replaces ``num_replicas`` when set)."""

    min_replicas: int = Field(1, ge=0, description="fewest replicas (0: scale to zero)")
    max_replicas: int = Field(2, ge=1, description="most replicas")
    target_ongoing_requests: float = Field(
        8.0, gt=0.0, description="requests in flight per replica that autoscaling aims for"
    )

    @model_validator(mode="after")
    def _order(self) -> ServeAutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas={self.min_replicas} is above max_replicas={self.max_replicas}"
            )
        return self


class ServeDeploymentConfig(Strict):
    """Replicas, resources and dynamic batching of one Ray Serve deployment."""

    num_replicas: int = Field(1, ge=1, description="replicas (ignored when autoscaling is set)")
    autoscaling: ServeAutoscalingConfig | None = Field(
        None, description="autoscale between min and max replicas instead of num_replicas"
    )
    num_cpus: float = Field(0.25, ge=0.0, description="CPUs reserved per replica (Ray resource)")
    num_gpus: float = Field(
        0.0, ge=0.0, description="GPUs per replica (fractions share one GPU); > 0 runs on cuda"
    )
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per replica")
    max_ongoing_requests: int = Field(
        32, ge=1, description="requests a replica accepts at once (>= max_batch_size to batch)"
    )
    max_queued_requests: int = Field(
        256,
        ge=-1,
        description="calls (one per prompt) waiting at each caller for a replica; more are "
        "answered 503 with Retry-After (-1: unbounded)",
    )
    max_batch_size: int = Field(
        8, ge=1, description="dynamic batching: most requests per forward pass (1: no batching)"
    )
    batch_wait_timeout_s: float = Field(
        0.02,
        ge=0.0,
        le=10.0,
        description="dynamic batching: how long a lone request waits for others while the "
        "model is idle (under load a batch is whatever queued while the model was busy)",
    )


class ServeIngressConfig(Strict):
    """The FastAPI ingress deployment (validation, fan-out, image encoding; no model)."""

    num_replicas: int = Field(1, ge=1, description="ingress replicas")
    num_cpus: float = Field(0.1, ge=0.0, description="CPUs reserved per ingress replica")
    max_ongoing_requests: int = Field(
        256, ge=1, description="HTTP requests an ingress replica handles at once"
    )


class ServeStageDefaultsConfig(ServeDeploymentConfig):
    """A stage deployment: replicas, resources, batching, and the U-Net's inference dtype."""

    dtype: InferenceDType = Field(
        "auto",
        description="U-Net inference dtype (auto: bfloat16 with num_gpus > 0, float32 on CPU); "
        "sampler state, guidance and thresholding stay float32",
    )


class ServeStageDeploymentConfig(ServeStageDefaultsConfig):
    """Per-stage deployment settings; fields set here replace ``serve.stage_defaults``."""

    name: str = Field(description="the cascade stage these settings are for")


class ServeAuthConfig(Strict):
    """Bearer-token auth of every API route (401 without the token); the token has at least
    32 characters (``openssl rand -hex 32``)."""

    enabled: bool = Field(False, description="require `Authorization: Bearer <token>`")
    token_env: str = Field(
        "IMAGEN_RAY_TOKEN", description="environment variable holding the token (read first)"
    )
    token_file: str | None = Field(
        None, description="file holding the token (used when the variable is unset)"
    )


class ServeConfig(Strict):
    """Ray Serve: ingress -> text encoder -> one deployment per cascade stage."""

    cascade: str = Field(
        "", description="saved/exported cascade directory to serve (`--cascade` overrides)"
    )
    host: str = Field(
        "127.0.0.1",
        description="HTTP bind address; one other than loopback (0.0.0.0 exposes it) needs "
        "serve.auth.enabled (or serve.allow_unauthenticated)",
    )
    allow_unauthenticated: bool = Field(
        False,
        description="serve a non-loopback host without auth anyway (logged as a warning)",
    )
    port: int = Field(8000, ge=1, le=65535, description="HTTP port")
    app_name: str = Field(
        "imagen", pattern=r"^[A-Za-z0-9_-]+$", description="Ray Serve application name"
    )
    route_prefix: str = Field("/", pattern=r"^/", description="URL prefix of the application")
    max_prompts: int = Field(8, ge=1, le=256, description="most prompts per request")
    max_prompt_chars: int = Field(
        1000, ge=1, description="longer prompts get 422 (token overflow is truncated + warned)"
    )
    max_steps: int = Field(
        100, ge=1, le=1000, description="most sampler steps per stage per request"
    )
    max_body_bytes: int = Field(65536, ge=1024, description="larger request bodies get 413")
    max_upload_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="most bytes of an uploaded image or mask (edits, variations); larger get "
        "413 (the edit routes' body limit allows an image and a mask of this size)",
    )
    max_upload_pixels: int = Field(
        4096 * 4096,
        ge=64 * 64,
        description="most width x height of an uploaded image or mask, read from its header "
        "before decoding (as data.max_pixels is in training); larger get 422",
    )
    upload_formats: tuple[ImageFormat, ...] = Field(
        ("png", "jpeg", "webp"), min_length=1, description="image formats uploads may use"
    )
    default_format: ImageFormat = Field("png", description="image format when a request has none")
    max_queued_requests: int = Field(
        64,
        ge=-1,
        description="HTTP requests waiting for an ingress replica; more are answered 503 "
        "with Retry-After (-1: unbounded)",
    )
    retry_after_s: float = Field(
        2.0, ge=0.0, description="Retry-After (seconds) of the 503 answered under overload"
    )
    request_timeout_s: float = Field(
        600.0, gt=0.0, description="HTTP requests running longer are cancelled (Serve proxy)"
    )
    auth: ServeAuthConfig = Field(default_factory=ServeAuthConfig)
    ingress: ServeIngressConfig = Field(default_factory=ServeIngressConfig)
    encoder: ServeDeploymentConfig = Field(
        default_factory=ServeDeploymentConfig, description="the text-encoder deployment"
    )
    stage_defaults: ServeStageDefaultsConfig = Field(
        default_factory=ServeStageDefaultsConfig, description="every stage deployment"
    )
    stages: tuple[ServeStageDeploymentConfig, ...] = Field(
        (), description="per-stage settings by name, over `stage_defaults`"
    )

    @model_validator(mode="after")
    def _unique_stages(self) -> ServeConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"serve.stages names must be unique, got {names}")
        return self

    def stage_deployment(self, name: str) -> ServeStageDefaultsConfig:
        """The deployment settings of stage ``name``: ``stage_defaults`` + its entry."""
        for s in self.stages:
            if s.name == name:
                update = {k: getattr(s, k) for k in s.model_fields_set - {"name"}}
                return self.stage_defaults.model_copy(update=update)
        return self.stage_defaults

    def stage_dtype(self, name: str) -> str:
        """The dtype stage ``name``'s replicas run in (``auto`` resolved: bfloat16 on a GPU)."""
        d = self.stage_deployment(name)
        return resolve_dtype(d.dtype, "cuda" if d.num_gpus > 0 else "cpu")


class ServeFileConfig(Strict):
    """A serve file (``imagen-ray serve --config serve.yaml``): its ``serve:`` section."""

    version: int = Field(CONFIG_FORMAT_VERSION, description="config format version")
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        return check_version(v)
