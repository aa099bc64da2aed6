"""The run side of a config: one training run of one cascade stage.

A run file (``configs/tiny/base.yaml``) holds ``text`` and ``stage`` (the model, see
:mod:`imagen_ray.config.model`) plus how to train it: ``data`` (the Ray Data pipeline),
``train`` (Ray Train + DeepSpeed) and ``wandb`` (tracking). Serve settings live in their own
file (:mod:`imagen_ray.config.serve`).
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from imagen_ray.config.base import CONFIG_FORMAT_VERSION, Strict, check_version
from imagen_ray.config.dtypes import InferenceDType
from imagen_ray.config.grammar import check_caption_key, parse_filter
from imagen_ray.config.model import StageConfig, TextEncoderConfig
from imagen_ray.images import formats_for

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
    train_crop: int | None = Field(
        None,
        ge=4,
        description="SR stages: train on random train_crop px crops of the stage.size image, "
        "with the aligned crop of the low-res input (Imagen's 256 -> 1024 stage: 256 px "
        "crops); sampling stays at full size; needs a U-Net without self-attention",
    )
    caption_key: str = Field(
        "txt",
        description="where captions come from: an entry extension (txt) or json:FIELD, a "
        "field of the json entry (json:caption, json:meta.alt)",
    )
    filters: tuple[str, ...] = Field(
        (),
        description="keep samples whose json entry passes every `FIELD OP VALUE` (ops < <= "
        "> >= == !=), e.g. 'punsafe < 0.1', 'width >= 256'; drops count as filter:...",
    )
    max_pixels: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="drop images with more pixels (width x height from the header, never "
        "decoded): decompression bombs",
    )
    max_member_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1,
        description="drop samples with a tar entry larger than this (checked from the tar "
        "header, never read)",
    )
    background: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB that transparent pixels are composited on"
    )

    @field_validator("caption_key")
    @classmethod
    def _check_caption_key(cls, v: str) -> str:
        return check_caption_key(v)

    @field_validator("filters")
    @classmethod
    def _check_filters(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for text in v:
            parse_filter(text)
        return v

    @field_validator("image_keys")
    @classmethod
    def _check_image_keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        formats_for(v)
        return v

    @field_validator("background")
    @classmethod
    def _check_background(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if not all(0 <= c <= 255 for c in v):
            raise ValueError(f"data.background {list(v)} must be three values in 0..255")
        return v

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
    # 512 rows: memory = buffer x decoded sample size, per worker. A 64 px base sample with
    # T5-XXL embeddings (128 x 4096 fp16 = 1 MiB) holds ~0.5 GiB; tiny/demo rows (16-64 px,
    # MiniLM 64 x 384 fp16 = 48 KiB) ~30 MiB. Shard order is shuffled per epoch as well.
    shuffle_buffer: int = Field(
        512,
        ge=0,
        description="local shuffle buffer (rows) per worker, seeded per epoch; 0 = off, else "
        ">= batch_size; memory = rows x decoded sample size (image + embedding)",
    )
    prefetch_batches: int = Field(2, ge=0, description="batches prefetched by each worker")
    seed: int = Field(0, description="seed of random crops and shuffling (mixed with the epoch)")
    shuffle_shards: bool = Field(
        True, description="read the shards in a new order each epoch (seeded by data.seed)"
    )
    preserve_order: bool = Field(
        False,
        description="emit blocks in shard order, not as parallel tasks finish: the exact "
        "sample order repeats for a seed, at some throughput cost",
    )
    caption_cache_mb: float = Field(
        256.0,
        ge=0.0,
        description="per encoder actor: embeddings of recently seen captions, in MiB (0 = off); "
        "a T5-XXL row at 128 tokens is 1 MiB, a MiniLM row at 64 tokens 48 KiB",
    )

    @model_validator(mode="after")
    def _shuffle_holds_a_batch(self) -> DataConfig:
        if self.shuffle_buffer and self.shuffle_buffer < self.batch_size:
            raise ValueError(
                f"data.shuffle_buffer={self.shuffle_buffer} must be 0 (off) or >= "
                f"data.batch_size={self.batch_size}"
            )
        return self


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
    peak_tflops: float | None = Field(
        None,
        gt=0.0,
        description="one GPU's dense bf16 peak for the mfu metric (default: from the GPU's name "
        "or IMAGEN_RAY_PEAK_TFLOPS)",
    )
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
    sample_dtype: InferenceDType = Field(
        "auto", description="U-Net dtype of the sample grids (sampled on the CPU: auto = float32)"
    )
    checkpoint_every: int = Field(100, ge=1, description="checkpoint every N steps")
    keep_checkpoints: int = Field(2, ge=1, description="checkpoints kept by Ray Train")
    max_failures: int = Field(1, ge=-1, description="worker-group restarts (-1: unlimited)")
    upload_retry_s: float = Field(
        600.0,
        ge=0.0,
        # the other ranks wait for the slowest copy in a collective, which times out after
        # Ray Train's 30 min (TorchConfig.timeout_s): retries must end well before
        le=1200.0,
        description="how long a checkpoint's copy to object storage is retried (backoff 1, 2, "
        "4 ... 30 s) before it is given up: the last complete checkpoint stays the latest "
        "and training goes on (at most 1200: the ranks' collectives time out at 1800)",
    )
    nan_patience: int = Field(
        5, ge=1, description="stop after this many non-finite losses or gradients in a row"
    )
    storage_path: str = Field("runs", description="checkpoint root: a directory or a URI")
    name: str | None = Field(None, description="run name (default: <stage name>)")
    seed: int = Field(0, description="seed of weights, noise and data order")
    init_from: str | None = Field(
        None,
        description="warm start: an exported stage directory, a checkpoint_* directory or a "
        "run directory (its latest checkpoint's EMA weights); a new run from step 0 with a "
        "fresh optimizer and schedule, its EMA starting from these weights; the model keys "
        "must match (checked before any worker starts)",
    )

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
        if self.optimizer == "adafactor" and self.zero_stage == 3:
            # DeepSpeed 0.19's ZeRO-3 pads each rank's parameter and gradient partitions with
            # uninitialised memory (torch.empty); Adafactor's step size (the RMS of the whole
            # tensor) and its update clipping read that padding, so steps are not reproducible.
            raise ValueError(
                "optimizer adafactor does not run at zero_stage 3 (ZeRO-3's partition padding "
                "is uninitialised memory, which Adafactor's whole-tensor RMS reads); set "
                "train.zero_stage=2 (the paper recipe's) or train.optimizer=adamw"
            )
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
    group: str | None = Field(
        None,
        description="W&B group (default: the absolute train.storage_path, which the stages "
        "of one cascade share); job_type is the stage name",
    )
    dir: str | None = Field(None, description="where run files go (default: the run dir)")


class RunConfig(Strict):
    """One training run = one cascade stage (``imagen-ray train --config base.yaml``)."""

    version: int = Field(CONFIG_FORMAT_VERSION, description="config format version")
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    stage: StageConfig = Field(default_factory=StageConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        return check_version(v)

    @model_validator(mode="after")
    def _check_train_crop(self) -> RunConfig:
        if self.data.train_crop is not None:
            check_train_crop(self.stage, self.data.train_crop)
        return self


def check_train_crop(stage: StageConfig, crop: int) -> None:
    """Refuse ``data.train_crop`` where a crop-trained stage would not sample at full size.

    A fully convolutional U-Net (text cross-attention only, as Imagen's 256 -> 1024 model)
    computes the same function on a crop as on the full image away from the borders, so it
    can train on crops and sample at full size. Self-attention (at a level or in the middle
    block) mixes every position with every other, so it sees a different context at the two
    sizes; ``pos_emb`` and ``text_layout`` encode positions relative to the whole map, which
    a crop stretches. The crop must be a whole number of low-res pixels (``size /
    lowres_size`` apart) and of U-Net downsampling steps.
    """
    key = f"data.train_crop={crop}"
    if stage.lowres_size is None:
        raise ValueError(
            f"{key} is for super-resolution stages, but stage {stage.name!r} is a base stage "
            "(stage.lowres_size is null); remove data.train_crop"
        )
    if crop > stage.size:
        raise ValueError(
            f"{key} is larger than stage.size={stage.size}; use a crop <= {stage.size} "
            "(or remove data.train_crop to train at full size)"
        )
    if stage.size % stage.lowres_size:
        raise ValueError(
            f"{key} needs stage.size={stage.size} to be a whole multiple of "
            f"stage.lowres_size={stage.lowres_size}, so that the low-res crop is aligned"
        )
    factor = stage.size // stage.lowres_size
    downs = 2 ** (len(stage.unet.levels) - 1)
    step = math.lcm(factor, downs)
    if crop % step:
        raise ValueError(
            f"{key} must be a multiple of {step}: of the upsampling factor stage.size / "
            f"stage.lowres_size = {factor} (the low-res crop is train_crop / {factor} px) and "
            f"of the U-Net's downsampling 2**{len(stage.unet.levels) - 1} = {downs}; e.g. "
            f"data.train_crop={max(step, crop // step * step)}"
        )
    unet = stage.unet
    attn = [f"stage.unet.levels[{i}].self_attn" for i, lv in enumerate(unet.levels) if lv.self_attn]
    if unet.mid_attn and unet.mid_blocks > 0:
        attn.append("stage.unet.mid_attn")
    if attn:
        raise ValueError(
            f"{key} needs a U-Net without self-attention (global attention sees a different "
            f"context on a crop than on the full image), but {', '.join(attn)} is on; set "
            f"{' and '.join(a + '=false' for a in attn)} or remove data.train_crop"
        )
    pos = [f"stage.unet.{k}" for k in ("pos_emb", "text_layout") if getattr(unet, k)]
    if pos:
        raise ValueError(
            f"{key} cannot train {', '.join(pos)}: their position features span the whole "
            f"feature map, which a crop stretches; set {' and '.join(p + '=false' for p in pos)} "
            "or remove data.train_crop"
        )
