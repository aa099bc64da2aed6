"""The model-state byte counter behind bench/train.py's ZeRO memory figures (no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from imagen_ray.train.memory import model_state_bytes


def _stepped(module: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    module(torch.randn(2, 8)).sum().backward()
    opt.step()
    module(torch.randn(2, 8)).sum().backward()  # live gradients again, as between bwd/step
    return opt


def test_replicated_model_counts_params_grads_and_adam_moments() -> None:
    module = nn.Linear(8, 16)  # 144 parameters
    opt = _stepped(module)
    got = model_state_bytes(SimpleNamespace(module=module, optimizer=opt))
    steps = sum(s["step"].untyped_storage().nbytes() for s in opt.state.values())
    # params are the optimizer's own params here (ZeRO 0): not counted twice
    assert got == {
        "params": 144 * 4,
        "grads": 144 * 4,
        "optimizer": 2 * 144 * 4 + steps,  # Adam's two moments (+ step counters)
        "master_weights": 0,  # AdamW steps the parameters themselves
        "buffers": 0,
    }


def test_partitioned_model_counts_only_this_ranks_slices_once() -> None:
    """A ZeRO-like wrapper: the module's parameters are views into one flat buffer, the
    inner optimizer steps an fp32 master partition, gradient partitions are views of a flat
    gradient buffer, and a bucket that is none of these goes to ``buffers``."""
    module = nn.Linear(8, 16)
    flat = torch.cat([p.detach().reshape(-1) for p in module.parameters()])  # (144,)
    offset = 0
    for p in module.parameters():
        p.data = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    master = nn.Parameter(flat[:72].clone())  # this rank's half, a separate fp32 copy
    inner = torch.optim.AdamW([master], lr=1e-3)
    master.grad = torch.zeros(72)
    inner.step()
    master.grad = None
    grad_flat = torch.zeros(72)
    wrapper = SimpleNamespace(
        optimizer=inner,
        averaged_gradients={0: [grad_flat[:40], grad_flat[40:]]},
        ipg_bucket=torch.zeros(10),
    )
    got = model_state_bytes(SimpleNamespace(module=module, optimizer=wrapper))
    step = inner.state[master]["step"].untyped_storage().nbytes()
    assert got == {
        "params": 144 * 4,  # the flat buffer, once, though two parameters view it
        "grads": 72 * 4,  # two views of one partition buffer
        "optimizer": 2 * 72 * 4 + step,  # Adam moments of the partition
        "master_weights": 72 * 4,  # the separate fp32 partition the optimizer steps
        "buffers": 10 * 4,
    }
    # a ZeRO-3 parameter: only its partition (ds_tensor) counts
    for p in module.parameters():
        p.ds_tensor = p.data.reshape(-1)[: p.numel() // 2].clone()
    got3 = model_state_bytes(SimpleNamespace(module=module, optimizer=wrapper))
    assert got3["params"] == 72 * 4


def test_adafactor_factors_matrices_but_not_flat_partitions() -> None:
    """Why the optimizer_memory figures differ by ZeRO stage: Adafactor keeps a row and a
    column vector for a matrix, but a full second moment for the flat 1-D partitions that
    ZeRO 1-3 hand it (AdamW keeps two full moments either way)."""

    def optimizer_bytes(params: list[nn.Parameter], opt_cls: type) -> int:
        opt = opt_cls(params, lr=1e-3)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        module = nn.Module()
        return model_state_bytes(SimpleNamespace(module=module, optimizer=opt))["optimizer"]

    n = 64 * 128
    matrix = [nn.Parameter(torch.randn(128, 64))]
    flat = [nn.Parameter(torch.randn(n))]
    adam_flat = optimizer_bytes(flat, torch.optim.AdamW)
    assert adam_flat >= 2 * 4 * n
    assert optimizer_bytes(matrix, torch.optim.Adafactor) < 4 * (128 + 64) + 64
    assert 4 * n <= optimizer_bytes(flat, torch.optim.Adafactor) < 0.6 * adam_flat
