"""The code paths that differ on a GPU, checked on the CPU: precision and autocast,
channels_last, the AdamW implementation, SDPA call layouts, FLOPs / MFU / peak memory."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from imagen_ray.cascade import Stage
from imagen_ray.config import RunConfig
from imagen_ray.train import perf as perf_mod
from imagen_ray.train.accel import TrainDevicePaths
from imagen_ray.train.deepspeed_config import (
    build_deepspeed_config,
    choose_adam,
    cpu_adam_builds,
)
from imagen_ray.train.perf import TrainPerf, count_flops_per_sample, peak_tflops
from tests.train.conftest import ROOT, TEXT_DIM, tiny_cfg


def _cfg(tmp_path: Path, *extra: str) -> RunConfig:
    return tiny_cfg(tmp_path, "gpu", *extra)


def _batch(cfg: RunConfig, b: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n, L = cfg.stage.size, cfg.text.max_length
    x0 = torch.rand(b, 3, n, n, generator=g) * 2 - 1  # (B, 3, S, S)
    emb = torch.randn(b, L, TEXT_DIM, generator=g)  # (B, L, D)
    return x0, emb, torch.ones(b, L, dtype=torch.bool)


# ------------------------------------------------------------------ precision, channels_last


def test_gpu_worker_gets_bf16_autocast_and_channels_last(tmp_path: Path) -> None:
    gpu = TrainDevicePaths.resolve(_cfg(tmp_path, "train.use_gpu=true").train, "cuda")
    assert (gpu.precision, gpu.autocast_dtype, gpu.channels_last) == (
        "bf16",
        torch.bfloat16,
        True,
    )
    fp16 = _cfg(tmp_path, "train.use_gpu=true", "train.precision=fp16")
    assert TrainDevicePaths.resolve(fp16.train, "cuda").autocast_dtype is torch.float16
    cpu = TrainDevicePaths.resolve(_cfg(tmp_path).train, "cpu")
    assert (cpu.precision, cpu.autocast_dtype, cpu.channels_last) == ("fp32", None, False)
    cfg = _cfg(tmp_path)
    assert cpu.prepare(Stage(cfg.stage, text_dim=TEXT_DIM)).train_autocast is None
    gpu_stage = gpu.prepare(Stage(cfg.stage, text_dim=TEXT_DIM))
    assert gpu_stage.train_autocast == ("cuda", torch.bfloat16)


def test_bf16_weights_need_autocast_and_train_with_it(tmp_path: Path) -> None:
    """DeepSpeed's bf16 mode casts the weights, not the float32 noise process: the U-Net
    refuses float32 x_t without autocast, and trains with the stage's own autocast, also when
    the caller turned autocast off around it (as DeepSpeed's engine does on CUDA)."""
    cfg = _cfg(tmp_path, "train.precision=bf16")
    paths = TrainDevicePaths.resolve(cfg.train, "cpu")
    torch.manual_seed(0)
    stage = Stage(cfg.stage, text_dim=TEXT_DIM).bfloat16()  # what DeepSpeed bf16 does
    x0, emb, mask = _batch(cfg)
    dev = torch.device("cpu")
    x0, emb = paths.image(x0, dev), paths.tokens(emb, dev)
    assert x0.dtype == emb.dtype == torch.float32
    with pytest.raises(RuntimeError, match="should be the same"):
        stage(x0, emb, mask)
    paths.prepare(stage)
    assert stage.train_autocast == ("cpu", torch.bfloat16)
    with torch.autocast("cpu", enabled=False):  # deepspeed.runtime.torch_autocast's off-switch
        loss = stage(x0, emb, mask, generator=torch.Generator().manual_seed(1)).float().mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in stage.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.bfloat16 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("sr", [False, True], ids=["base", "sr"])
def test_channels_last_reaches_the_unet(tmp_path: Path, sr: bool) -> None:
    extra = ("data.train_crop=16",) if sr else ()
    path = "configs/tiny/sr32_crops.yaml" if sr else "configs/tiny/base.yaml"
    from imagen_ray.config import load_run_config

    cfg = load_run_config(ROOT / path, ["stage.unet.channels=16", "text.max_length=8", *extra])
    paths = TrainDevicePaths.resolve(cfg.train.model_copy(update={"use_gpu": True}), "cuda")
    stage = paths.prepare(Stage(cfg.stage, text_dim=TEXT_DIM))
    assert stage.unet.init_conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen: list[torch.Tensor] = []
    stage.unet.init_conv.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    side = 16 if sr else cfg.stage.size
    x0 = paths.image(torch.rand(2, 3, side, side), torch.device("cpu"))
    assert x0.is_contiguous(memory_format=torch.channels_last) and not x0.is_contiguous()
    emb = torch.randn(2, cfg.text.max_length, TEXT_DIM)
    stage(x0, emb, torch.ones(2, cfg.text.max_length, dtype=torch.bool))
    # x_t (and, for SR, the concatenated low-res image) arrive channels_last
    assert seen[0].shape[1] == (6 if sr else 3)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    cpu = TrainDevicePaths.resolve(cfg.train, "cpu")
    assert cpu.image(torch.rand(2, 3, 8, 8), torch.device("cpu")).is_contiguous()


# ------------------------------------------------------------------ optimizer choice


def _ds_optimizer(tmp_path: Path, device_type: str, *extra: str, **kw: Any) -> dict[str, Any]:
    cfg = _cfg(tmp_path, *extra)
    ds = build_deepspeed_config(cfg.train, cfg.data, world_size=2, device_type=device_type, **kw)
    return ds.get("optimizer", {})


def _never() -> bool:
    raise AssertionError("CPU Adam probed without offload_optimizer")


def test_adamw_implementation_per_device_and_offload(tmp_path: Path) -> None:
    gpu = ("train.use_gpu=true",)
    off = (*gpu, "train.offload_optimizer=true")
    assert _ds_optimizer(tmp_path, "cuda", *gpu, cpu_adam_ok=_never)["params"] == {
        "lr": 1e-3,
        "betas": [0.9, 0.99],
        "weight_decay": 0.0,
        "torch_adam": True,
        "fused": True,
    }
    cpu = _ds_optimizer(tmp_path, "cpu", cpu_adam_ok=_never)["params"]
    assert cpu["torch_adam"] is True and "fused" not in cpu
    cpu_adam = _ds_optimizer(tmp_path, "cuda", *off, cpu_adam_ok=lambda: True)["params"]
    assert "torch_adam" not in cpu_adam and "fused" not in cpu_adam  # ZeRO-Offload: CPU Adam
    fallback = _ds_optimizer(tmp_path, "cuda", *off, cpu_adam_ok=lambda: False)["params"]
    assert fallback["torch_adam"] is True and "fused" not in fallback
    assert _ds_optimizer(tmp_path, "cuda", *gpu, "train.optimizer=adafactor") == {}
    t = _cfg(tmp_path, *off).train
    assert choose_adam(t, "cuda", lambda: True) == "cpu_adam"
    assert choose_adam(t, "cuda", lambda: False) == "torch"


def test_deepspeed_builds_what_the_config_asks(tmp_path: Path) -> None:
    """DeepSpeed 0.19's own selection, run on our optimizer params: torch_adam + fused gives
    torch.optim.AdamW(fused=True) (torch's fused kernel also runs on the CPU); without
    torch_adam under ZeRO-Offload, DeepSpeedCPUAdam."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from deepspeed.runtime.engine import DeepSpeedEngine

    def pick(params: dict[str, Any], offload: bool) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        fake = SimpleNamespace(
            zero_use_cpu_optimizer=lambda: offload,
            bf16_optimizer_states=lambda: False,
            zenflow=False,
        )
        p = dict(params)
        cls, kw = DeepSpeedEngine.get_optimizer_configuration(fake, p, True)  # type: ignore[arg-type]
        return cls, kw, p

    fused = _ds_optimizer(tmp_path, "cuda", "train.use_gpu=true", cpu_adam_ok=_never)["params"]
    cls, kw, rest = pick(fused, offload=False)
    assert cls is torch.optim.AdamW
    w = torch.nn.Parameter(torch.ones(4))
    opt = cls([w], **rest, **kw)
    assert opt.defaults["fused"] is True
    w.grad = torch.ones(4)
    opt.step()
    assert (w.detach() < 1).all()
    off = ("train.use_gpu=true", "train.offload_optimizer=true")
    cpu_adam = _ds_optimizer(tmp_path, "cuda", *off, cpu_adam_ok=lambda: True)["params"]
    assert pick(cpu_adam, offload=True)[0] is DeepSpeedCPUAdam


def test_cpu_adam_build_failure_falls_back_with_a_message(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from deepspeed.ops.op_builder import CPUAdamBuilder

    def broken(self: Any, *a: Any, **k: Any) -> None:
        raise RuntimeError("Error building extension 'cpu_adam'")

    monkeypatch.setattr(CPUAdamBuilder, "load", broken)
    with caplog.at_level(logging.WARNING, logger="imagen_ray.train.deepspeed_config"):
        assert cpu_adam_builds() is False
    assert "falls back to torch.optim.AdamW" in caplog.text
    assert "Error building extension 'cpu_adam'" in caplog.text
    monkeypatch.setattr(CPUAdamBuilder, "load", lambda self, *a, **k: object())
    assert cpu_adam_builds() is True


# ------------------------------------------------------------------ SDPA layouts


def test_attention_calls_sdpa_with_flash_compatible_layouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What CUDA's flash / memory-efficient kernels need of every SDPA call under bf16
    autocast: bf16 q/k/v with a unit-stride last dim and head_dim a multiple of 8 (<= 256);
    self-attention without a mask (flash), cross-attention with a boolean key mask
    broadcast over heads and queries (memory-efficient)."""
    cfg = _cfg(tmp_path, "train.precision=bf16")
    stage = Stage(cfg.stage, text_dim=TEXT_DIM)
    calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
    real = F.scaled_dot_product_attention

    def record(q: Any, k: Any, v: Any, attn_mask: Any = None, **kw: Any) -> Any:
        calls.append((q, k, v, attn_mask))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", record)
    x0, emb, mask = _batch(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stage(x0, emb, mask)
    assert calls
    self_calls = 0
    for q, k, v, m in calls:
        for t in (q, k, v):
            assert t.dtype == torch.bfloat16 and t.stride(-1) == 1 and t.dim() == 4
        d = q.shape[-1]
        assert d % 8 == 0 and d <= 256, d
        if m is None:
            self_calls += 1
            assert q.shape[2] == k.shape[2]  # self-attention over the cells
        else:
            assert m.dtype == torch.bool and m.shape == (q.shape[0], 1, 1, k.shape[2])
    assert self_calls >= 1


# ------------------------------------------------------------------ FLOPs, MFU, memory


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.05),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10G", 70.0),
        ("NVIDIA A10", 125.0),
        ("Tesla T4", None),
    ],
)
def test_peak_tflops_table(name: str, tflops: float | None) -> None:
    assert peak_tflops(name, env={}) == tflops


def test_peak_tflops_overrides() -> None:
    assert peak_tflops("Tesla T4", env={"IMAGEN_RAY_PEAK_TFLOPS": "65"}) == 65.0
    assert peak_tflops("NVIDIA H100 PCIe", 700.0, env={"IMAGEN_RAY_PEAK_TFLOPS": "65"}) == 700
    with pytest.raises(ValueError, match="IMAGEN_RAY_PEAK_TFLOPS='fast'"):
        peak_tflops("NVIDIA L4", env={"IMAGEN_RAY_PEAK_TFLOPS": "fast"})


def test_perf_metrics_arithmetic_on_cpu_and_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[int] = []

    def count() -> tuple[float, str]:
        counted.append(1)
        return 3e11, "fwd+bwd"

    cpu = TrainPerf(torch.device("cpu"), count, peak=None)
    m = cpu.metrics(examples=20, seconds=2.0)
    assert m == {"flops_per_sample": 3e11, "achieved_tflops": pytest.approx(3.0)}
    cpu.metrics(examples=1, seconds=1.0)
    assert len(counted) == 1  # counted once per run

    resets: list[Any] = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: resets.append(d))
    gpu = TrainPerf(torch.device("cuda", 0), count, peak=10.0)
    gpu.start_window()
    assert resets == [torch.device("cuda", 0)]  # each window starts a new peak
    m = gpu.metrics(examples=10, seconds=1.0)
    assert m["achieved_tflops"] == pytest.approx(3.0)
    assert m["mfu"] == pytest.approx(0.3)
    assert m["gpu_mem_peak_gib"] == pytest.approx(3.0)
    assert len(resets) == 1  # reading does not reset: report-time hooks see the same peak
    cpu.start_window()
    assert len(resets) == 1


def test_for_run_uses_the_micro_batch_and_the_gpu_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path, "train.use_gpu=true")
    seen: dict[str, Any] = {}

    def fake_count(stage_cfg: Any, text_dim: int, **kw: Any) -> tuple[float, str]:
        seen.update(kw, text_dim=text_dim)
        return 1.0, "fwd+bwd"

    monkeypatch.setattr(perf_mod, "count_flops_per_sample", fake_count)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 PCIe")
    p = TrainPerf.for_run(cfg, TEXT_DIM, torch.device("cuda", 0))
    assert p.peak == 756.0
    assert p.flops_per_sample == 1.0
    assert seen == {"batch": 4, "side": 32, "text_len": 8, "text_dim": TEXT_DIM}
    pinned = cfg.model_copy(update={"train": cfg.train.model_copy(update={"peak_tflops": 500})})
    assert TrainPerf.for_run(pinned, TEXT_DIM, torch.device("cuda", 0)).peak == 500
    assert TrainPerf.for_run(cfg, TEXT_DIM, torch.device("cpu")).peak is None


def test_flops_counted_on_meta_forward_and_backward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(tmp_path)
    kw = {"batch": 2, "side": cfg.stage.size, "text_len": cfg.text.max_length}
    full, how = count_flops_per_sample(cfg.stage, TEXT_DIM, **kw)
    assert how == "fwd+bwd"
    # per sample: independent of the micro batch it was counted at
    assert count_flops_per_sample(cfg.stage, TEXT_DIM, **{**kw, "batch": 4})[0] == full
    # gradient checkpointing's recomputation is not model FLOPs
    ckpt = cfg.stage.model_copy(
        update={"unet": cfg.stage.unet.model_copy(update={"grad_checkpointing": True})}
    )
    assert count_flops_per_sample(ckpt, TEXT_DIM, **kw)[0] == full

    def no_backward(self: torch.Tensor, *a: Any, **k: Any) -> None:
        raise RuntimeError("backward unavailable")

    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    fwd3, how = count_flops_per_sample(cfg.stage, TEXT_DIM, **kw)
    assert how == "3x fwd"
    assert 0.85 < fwd3 / full < 1.15  # backward ~ 2 x forward


# ------------------------------------------------------------------ bench/gpu.py


def test_bench_gpu_without_a_gpu_says_so_and_exits_0() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu.py"), "--no-sampling"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 0, out.stderr
    assert '"skipped": "no GPU (CUDA not available)"' in out.stdout
    assert "no GPU: nothing measured" in out.stderr


@pytest.mark.slow
def test_bench_gpu_quick_on_cpu_trains_bf16_at_zero_2_and_3(tmp_path: Path) -> None:
    """The bench's single-process DeepSpeed path (world size 1, bf16 + autocast) on the CPU."""
    import json
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu.py"), "--allow-cpu", "--quick", "--no-sampling"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    train = [r for r in rows if r.get("bench") == "gpu_train"]
    assert {(r["model"], r["zero"]) for r in train} == {
        (m, z) for m in ("tiny", "tiny-sr") for z in (2, 3)
    }
    for r in train:
        assert r["loss_finite"] and r["samples_per_s"] > 0 and r["flops_per_sample"] > 0
        assert r["mfu"] is None and r["peak_gib"] is None  # CPU: no peak, no GPU memory


@pytest.mark.slow
def test_bf16_run_on_ray_train_reports_flops_to_metrics_and_wandb(
    ray_cluster: None, tmp_path: Path
) -> None:
    """train.precision=bf16 through Ray Train + DeepSpeed ZeRO-2 (2 CPU workers): it trains
    (it failed at the first convolution before autocast), and every report carries the
    FLOPs metrics, in Ray's result and in the W&B history (no MFU on a CPU)."""
    from tests.train.conftest import fit, read_wandb_history, wandb_run_files

    cfg = _cfg(tmp_path, "train.precision=bf16", "train.steps=4", "train.log_every=2")
    res = fit(cfg)
    assert res.error is None
    m = res.metrics
    assert m["step"] == 4 and m["nonfinite_skipped"] == 0
    assert m["flops_per_sample"] > 0 and m["achieved_tflops"] > 0
    assert "mfu" not in m and "gpu_mem_peak_gib" not in m
    rows = [r for r in read_wandb_history(wandb_run_files(tmp_path / "gpu")[0]) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["flops_per_sample"] == m["flops_per_sample"] for r in rows)
