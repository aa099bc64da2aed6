"""A capacity and cost model of one training run per stage: ``imagen-ray plan``.

It puts together what is counted (FLOPs and activations on the meta device, the model state
DeepSpeed holds at each ZeRO stage), what is measured (decode rates per core, and on a CPU
this machine's own step and gradient-sync times) and what is assumed (MFU on GPUs where no
run measured it, prices, bandwidths), and labels each figure with its source
(:mod:`imagen_ray.plan.figures`). The global batch of the config (micro batch x
``grad_accum`` x ``num_workers``) is the recipe: another GPU count keeps it and changes the
micro batch and accumulation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from imagen_ray.config import ConfigError, RunConfig
from imagen_ray.plan.counts import (
    FP32,
    HALF,
    adafactor_state_elements,
    checkpoint_bytes,
    count_activations,
    model_state_bytes,
)
from imagen_ray.plan.figures import (
    ASSUMED_MFU,
    ASSUMED_NODE_LINK_GBPS,
    ASSUMED_UPLOAD_GBPS,
    DECODE_HOW,
    DECODE_RATES,
    ENCODER_PARAMS,
    GPUS,
    USABLE_MEMORY,
    DecodeRate,
    Figure,
    Source,
)

GB = 1e9
DATA_WAIT = 0.05  # the loaders keep the trainer waiting at most this share of its time


class PlanError(ConfigError):
    """The run does not fit as configured; the message names the fix."""


@dataclass(frozen=True)
class Hardware:
    """Where the run is planned.

    Args:
        gpu: a key of :data:`imagen_ray.plan.figures.GPUS`, or ``"cpu"`` (CPU workers, timed
            on this machine by :mod:`imagen_ray.plan.calibrate`).
        ranks: data-parallel workers (GPUs, or CPU workers).
        nodes: machines the ranks spread over (gradient sync crosses nodes when > 1).
        mfu, price_per_hour, upload_gbps, node_link_gbps: overrides of the assumed figures.
        cpu_step_s: on CPU, the measured time of one micro batch's step, gradient sync
            included (:func:`imagen_ray.plan.calibrate.calibrate`).
    """

    gpu: str
    ranks: int
    nodes: int = 1
    mfu: float | None = None
    price_per_hour: float | None = None
    upload_gbps: float | None = None
    node_link_gbps: float | None = None
    source_size: int = 512
    source_format: str = "jpg"
    cpu_step_s: Figure | None = None
    host_memory_gb: float | None = None


@dataclass
class StagePlan:
    """The plan of one stage's run: labelled figures, and the batch it runs at."""

    stage: str
    ranks: int
    micro_batch: int
    grad_accum: int
    figures: dict[str, Figure] = field(default_factory=dict)
    memory: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "ranks": self.ranks,
            "micro_batch": self.micro_batch,
            "grad_accum": self.grad_accum,
            "figures": {k: v.as_dict() for k, v in self.figures.items()},
            "memory_per_rank": {k: v.as_dict() for k, v in self.memory.items()},
            "notes": self.notes,
        }


def batch_split(cfg: RunConfig, ranks: int) -> tuple[int, int]:
    """(micro batch, accumulation) that keep the config's global batch on ``ranks`` ranks.

    Raises:
        PlanError: the global batch does not split evenly over the ranks.
    """
    micro, accum = cfg.data.batch_size, cfg.train.grad_accum
    total = micro * accum * cfg.train.num_workers
    if total % ranks:
        raise PlanError(
            f"the global batch {total} (data.batch_size {micro} x train.grad_accum {accum} x "
            f"train.num_workers {cfg.train.num_workers}) does not split over {ranks} ranks; "
            f"plan on a divisor of {total} ranks or change the batch"
        )
    per_rank = total // ranks
    micro = max(m for m in range(1, min(micro, per_rank) + 1) if per_rank % m == 0)
    return micro, per_rank // micro


def _decode_rate(fmt: str, source: int, target: int) -> DecodeRate | None:
    """The measured rate nearest to this source size and target (same format first)."""
    rows = [r for r in DECODE_RATES if r.fmt == fmt] or list(DECODE_RATES)
    if not rows:
        return None
    return min(rows, key=lambda r: (abs(math.log(r.source / source)), abs(r.target - target)))


def _encoder_params(cfg: RunConfig) -> float | None:
    name = cfg.text.name
    return ENCODER_PARAMS.get(name) or ENCODER_PARAMS.get(name.split("@")[0])


@dataclass(frozen=True)
class _Stage:
    """What every part of a stage's plan reads: the run, the hardware and the counts."""

    cfg: RunConfig
    run: RunConfig  # as it trains there (bf16 on GPUs under precision auto)
    hw: Hardware
    params: int
    flops: float
    micro: int
    accum: int
    text_dim: int

    @property
    def half(self) -> bool:
        return self.run.train.resolved_precision in ("bf16", "fp16")

    @property
    def on_gpu(self) -> bool:
        return self.hw.gpu != "cpu"


def plan_stage(cfg: RunConfig, hw: Hardware, *, text_dim: int) -> StagePlan:
    """Plan one stage's run on ``hw``.

    Raises:
        PlanError: a rank does not fit in the device's memory (the message names the fix),
            or the global batch does not split over the ranks.
    """
    import torch

    from imagen_ray.train.perf import count_flops_per_sample
    from imagen_ray.unet import EfficientUNet, count_parameters

    micro, accum = batch_split(cfg, hw.ranks)
    out = StagePlan(cfg.stage.name, hw.ranks, micro, accum)
    side = cfg.data.train_crop or cfg.stage.size
    with torch.device("meta"):
        params = count_parameters(
            EfficientUNet(cfg.stage.unet, text_dim=text_dim, lowres=cfg.stage.is_sr)
        )
    flops, method = count_flops_per_sample(
        cfg.stage, text_dim, batch=micro, side=side, text_len=cfg.text.max_length
    )
    out.figures["params"] = Figure(params, "parameters", "counted", "the U-Net on the meta device")
    out.figures["flops_per_sample"] = Figure(flops, "FLOP", "counted", f"FlopCounterMode, {method}")
    run = _gpu_run(cfg) if hw.gpu != "cpu" else cfg
    st = _Stage(cfg, run, hw, params, flops, micro, accum, text_dim)
    state = _memory(st, out)
    _speed(st, out)
    _data_and_encoder(st, out)
    _checkpoint_and_cost(st, out, state)
    return out


def _memory(st: _Stage, out: StagePlan) -> dict[str, float]:
    """Per-rank memory figures; refuses a rank that does not fit. The model state's bytes."""
    cfg, hw, micro = st.cfg, st.hw, st.micro
    ada = (
        adafactor_state_elements(cfg.stage, st.text_dim)
        if cfg.train.optimizer == "adafactor"
        else None
    )
    state = model_state_bytes(st.params, st.run, hw.ranks, adafactor_elements=ada)
    side = cfg.data.train_crop or cfg.stage.size
    acts = count_activations(
        cfg.stage, st.text_dim, batch=micro, side=side, text_len=cfg.text.max_length
    )
    act_scale = 0.5 if st.half else 1.0  # autocast: convolutions and matmuls in 16 bits
    ckpt_on = cfg.stage.unet.grad_checkpointing
    act = (acts.checkpointed if ckpt_on else acts.plain) * act_scale
    zero = f"ZeRO {cfg.train.zero_stage} on {hw.ranks} ranks, {'bf16' if st.half else 'fp32'}"
    m = out.memory
    for k in ("params", "grads", "optimizer", "master_weights", "ema"):
        m[k] = Figure(state[k] / GB, "GB", "counted", f"{zero} (imagen_ray.plan.counts)")
    if state["host"]:
        m["host_offload"] = Figure(state["host"] / GB, "GB", "counted", "in host memory")
    act_how = f"saved tensors at micro batch {micro}, counted on the meta device" + (
        "; x0.5 for 16-bit autocast (norms stay fp32: a lower bound)" if st.half else ""
    )
    m["activations"] = Figure(act / GB, "GB", "counted", act_how)
    other = (acts.plain if ckpt_on else acts.checkpointed) * act_scale
    m[f"activations_grad_checkpointing_{'off' if ckpt_on else 'on'}"] = Figure(
        other / GB, "GB", "counted", act_how
    )
    total = sum(state[k] for k in ("params", "grads", "optimizer", "master_weights", "ema")) + act
    m["total"] = Figure(total / GB, "GB", "counted", "model state + EMA + activations")
    _check_fits(cfg, hw, out, total, acts.checkpointed * act_scale, state)
    return state


def _speed(st: _Stage, out: StagePlan) -> None:
    """Step time (compute at an MFU + gradient sync on GPUs; timed on CPUs), samples/s and
    the time to ``train.steps``."""
    cfg, hw, f = st.cfg, st.hw, out.figures
    samples = st.micro * st.accum
    if st.on_gpu:
        gpu = GPUS[hw.gpu]
        mfu = Figure(hw.mfu, "fraction", "assumed", "--mfu") if hw.mfu else ASSUMED_MFU
        f["mfu"] = mfu
        compute = st.flops * samples / (gpu.peak_tflops * 1e12 * mfu.value)
        peak_src = "an estimate" if gpu.peak_assumed else "datasheet"
        f["compute_s_per_step"] = Figure(
            compute, "s", "assumed",
            f"FLOPs x {samples} samples / ({gpu.peak_tflops:g} TFLOPS {peak_src} x MFU); "
            "gradient checkpointing's recompute is inside the MFU",
        )  # fmt: skip
        link = _link(hw, gpu.link_gbps)
        w = HALF if st.half else FP32
        sync = _sync_bytes(st.params, w, cfg.train.zero_stage, hw.ranks, st.accum)
        sync /= link.value * GB
        f["sync_s_per_step"] = Figure(
            sync, "s", link.source,
            f"gradient sync at {link.value:g} GB/s ({link.how}), not overlapped: an upper bound",
        )  # fmt: skip
        step = compute + sync
    else:
        if hw.cpu_step_s is None:
            raise PlanError("a CPU plan needs this machine's step time: run it with --gpu cpu")
        # timed at the config's micro batch, gradient sync included; another split scales it
        step = hw.cpu_step_s.value * samples / cfg.data.batch_size
        f["compute_s_per_step"] = Figure(step, "s", "measured", hw.cpu_step_s.how)
    src = _weakest(*(f[k] for k in ("compute_s_per_step", "sync_s_per_step") if k in f))
    f["step_s"] = Figure(
        step, "s", src, "compute + gradient sync" if st.on_gpu else "the timed step"
    )
    global_batch = samples * hw.ranks
    f["samples_per_s"] = Figure(
        global_batch / step, "samples/s", src, f"global batch {global_batch} / step"
    )
    hours = cfg.train.steps * step / 3600
    f["train_hours"] = Figure(hours, "h", src, f"{cfg.train.steps} steps (train.steps)")


def _data_and_encoder(st: _Stage, out: StagePlan) -> None:
    """Data-loading CPUs from the measured decode rates; the text encoder's cost."""
    cfg, hw, f = st.cfg, st.hw, out.figures
    sps = f["samples_per_s"].value
    rate = _decode_rate(hw.source_format, hw.source_size, cfg.stage.size)
    if rate is not None:
        cpus = sps / (rate.per_core * (1 - DATA_WAIT))
        f["data_cpus"] = Figure(
            math.ceil(cpus), "CPUs", _weakest(f["samples_per_s"], Figure(0, "", "measured", "")),
            f"{sps:.4g} samples/s / {rate.per_core:.4g} per core ({rate.fmt} {rate.source} px "
            f"-> {rate.target} px, {DECODE_HOW}), data wait <= {DATA_WAIT:.0%}",
        )  # fmt: skip
    else:
        out.notes.append(f"no decode rate measured: run `{DECODE_HOW}`")
    enc = _encoder_params(cfg)
    if enc is None:
        out.notes.append(f"text encoder {cfg.text.name!r}: parameters not in the plan's table")
        return
    text_len = cfg.text.max_length
    enc_flops = 2 * enc * text_len
    f["encoder_flops_per_sample"] = Figure(
        enc_flops, "FLOP", "counted", f"2 x {enc:.3g} parameters x {text_len} tokens"
    )
    f["encoder_share_on_the_fly"] = Figure(
        enc_flops / st.flops, "fraction of U-Net FLOPs", "counted",
        "on the fly: every sample of every step runs the encoder; encoded once "
        "(`imagen-ray data encode`): one pass over the data, then 0",
    )  # fmt: skip
    if not st.on_gpu:
        return
    gpu = GPUS[hw.gpu]
    mfu = f["mfu"].value
    per_sample_h = enc_flops / (gpu.peak_tflops * 1e12 * mfu) / 3600  # forward only
    seen = cfg.train.steps * st.micro * st.accum * hw.ranks
    f["encoder_gpu_hours_on_the_fly"] = Figure(
        per_sample_h * seen,
        "GPU-h",
        "assumed",
        f"{seen:.3g} samples seen x encoder FLOPs at the MFU",
    )
    f["encoder_gpu_hours_per_100m_encoded_once"] = Figure(
        per_sample_h * 1e8, "GPU-h", "assumed", "one pass over 100M samples at the MFU"
    )


def _checkpoint_and_cost(st: _Stage, out: StagePlan, state: dict[str, float]) -> None:
    """Checkpoint size and upload time; GPU-hours and cost on GPUs."""
    cfg, hw, f = st.cfg, st.hw, out.figures
    ckpt = checkpoint_bytes(st.params, st.run, hw.ranks)
    copies = hw.ranks if cfg.train.zero_stage < 3 else 1
    if copies > 1:
        ema_gb = state["ema"] * copies / GB
        out.notes.append(
            f"at ZeRO {cfg.train.zero_stage} every rank writes its full fp32 EMA: {ema_gb:.3g} "
            f"GB of the {ckpt / GB:.3g} GB checkpoint; train.zero_stage: 3 writes one copy"
        )
    f["checkpoint_gb"] = Figure(
        ckpt / GB, "GB", "counted",
        f"weights, optimizer, master; the EMA {copies}x (every rank writes its own)",
    )  # fmt: skip
    up = (
        Figure(hw.upload_gbps, "GB/s", "assumed", "--upload-gbps")
        if hw.upload_gbps
        else ASSUMED_UPLOAD_GBPS
    )
    f["checkpoint_upload_s"] = Figure(ckpt / GB / up.value, "s", "assumed", f"at {up.value:g} GB/s")
    if not st.on_gpu:
        return
    hours, src = f["train_hours"].value, f["train_hours"].source
    f["gpu_hours"] = Figure(hours * hw.ranks, "GPU-h", src, f"{hw.ranks} x train hours")
    price = (
        Figure(hw.price_per_hour, "USD/GPU-h", "assumed", "--price-per-gpu-hour")
        if hw.price_per_hour
        else Figure(GPUS[hw.gpu].price_per_hour, "USD/GPU-h", "assumed", "on-demand list price")
    )
    f["price_per_gpu_hour"] = price
    f["cost_usd"] = Figure(hours * hw.ranks * price.value, "USD", "assumed", "GPU-hours x price")


def _gpu_run(cfg: RunConfig) -> RunConfig:
    """The run as it trains on GPUs (precision auto resolves to bf16 there)."""
    train = cfg.train.model_copy(update={"use_gpu": True})
    return cfg.model_copy(update={"train": train})


def _link(hw: Hardware, intra_gbps: float) -> Figure:
    if hw.ranks == 1:
        return Figure(intra_gbps, "GB/s", "counted", "one rank: nothing to sync")
    if hw.nodes > 1:
        if hw.node_link_gbps:
            return Figure(hw.node_link_gbps, "GB/s", "assumed", "--node-link-gbps")
        return ASSUMED_NODE_LINK_GBPS
    return Figure(intra_gbps, "GB/s", "datasheet", "GPU to GPU inside one node")


def _sync_bytes(params: int, w: int, zero: int, ranks: int, accum: int) -> float:
    """Bytes each rank sends per optimizer step (ring collectives move (N-1)/N of the data):
    ZeRO 0-1 all-reduce the gradients once a step (2x); ZeRO 2 reduce-scatters them every
    micro batch and all-gathers the updated parameters once; ZeRO 3 also gathers the
    parameters in every micro batch's forward and backward (3x per micro batch)."""
    if ranks == 1:
        return 0.0
    part = (ranks - 1) / ranks * params * w
    if zero <= 1:
        return 2 * part
    if zero == 2:
        return accum * part + part
    return 3 * accum * part


def _weakest(*figs: Figure) -> Any:
    order = ("assumed", "datasheet", "measured", "counted")
    return min((fig.source for fig in figs), key=order.index)


def _check_fits(
    cfg: RunConfig,
    hw: Hardware,
    out: StagePlan,
    total: float,
    checkpointed: float,
    state: dict[str, float],
) -> None:
    """Refuse, with the fix, a plan whose rank does not fit."""
    if hw.gpu == "cpu":
        cap = hw.host_memory_gb
        if cap is None:
            return
        what = f"{cap:g} GB of host memory per worker"
        usable = cap * GB
    else:
        gpu = GPUS[hw.gpu]
        usable = gpu.memory_gb * GB * USABLE_MEMORY.value
        what = f"{gpu.memory_gb:g} GB {hw.gpu} ({USABLE_MEMORY.value:.0%} usable)"
    src: Source = "measured" if hw.gpu == "cpu" else "datasheet"  # psutil's total / workers
    out.memory["usable"] = Figure(usable / GB, "GB", src, what)
    if total <= usable:
        return
    fixes = []
    if not cfg.stage.unet.grad_checkpointing:
        fixes.append(
            f"stage.unet.grad_checkpointing: true (activations -> {checkpointed / GB:.3g} GB)"
        )
    if cfg.train.zero_stage < 3:
        fixes.append("train.zero_stage: 3 (shards the parameters too)")
    if not cfg.train.offload_optimizer:
        fixes.append("train.offload_optimizer: true (optimizer states in host memory)")
    if out.micro_batch > 1:
        fixes.append(f"a smaller data.batch_size than {out.micro_batch} with more grad_accum")
    fixes.append("more GPUs (--gpus)")
    raise PlanError(
        f"stage {cfg.stage.name!r}: a rank needs {total / GB:.3g} GB (model state "
        f"{sum(v for k, v in state.items() if k != 'host') / GB:.3g} GB + activations) but "
        f"{what} holds {usable / GB:.3g} GB; try " + "; or ".join(fixes)
    )
