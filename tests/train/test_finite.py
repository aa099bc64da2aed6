"""Non-finite guards (fast): the checks on tensors, the skip streak, the guarded optimizer
step, and an export of a checkpoint whose EMA holds NaN is refused with nothing written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imagen_ray.train.export import export_checkpoint
from imagen_ray.train.finite import (
    NonFiniteLoss,
    NonFiniteStreak,
    NonFiniteWeights,
    guarded_step,
    local_grads_finite,
    nonfinite_names,
    optimizer_skips_nonfinite,
    require_finite,
)
from tests.train.conftest import tiny_cfg
from tests.train.test_warmstart import fake_checkpoint, tiny_stage


def test_nonfinite_names_lists_nan_and_inf_tensors_in_order() -> None:
    t = {
        "ok": torch.ones(3),
        "nan": torch.tensor([1.0, float("nan")]),
        "ints": torch.arange(3),
        "inf": torch.tensor([float("-inf")]),
        "empty": torch.empty(0),
    }
    assert nonfinite_names(t) == ["nan", "inf"]
    assert nonfinite_names(list(t.items())[:1]) == []
    with pytest.raises(NonFiniteWeights, match=r"run X: 2 tensors hold NaN/inf \(e.g. nan, inf\)"):
        require_finite(t, what="run X", fix="do Y")
    require_finite({"ok": torch.zeros(2)}, what="run X", fix="do Y")


def test_local_grads_cover_param_grads_and_zero_partitions() -> None:
    model = nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    plain = SimpleNamespace(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1))
    assert local_grads_finite(plain) and not optimizer_skips_nonfinite(plain)
    assert model.bias.grad is not None
    model.bias.grad[0] = float("inf")
    assert not local_grads_finite(plain)
    model.bias.grad[0] = 0.0
    # ZeRO 1/2 keep the rank's gradient partition on the optimizer, not in param.grad
    zero = SimpleNamespace(averaged_gradients={0: [torch.tensor([float("nan")])]}, overflow=False)
    wrapped = SimpleNamespace(module=model, optimizer=zero)
    assert not local_grads_finite(wrapped) and optimizer_skips_nonfinite(wrapped)


def test_export_refuses_nonfinite_ema_and_writes_nothing(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "a")
    ema = tiny_stage(cfg).unet.state_dict()
    name = next(iter(ema))
    ema[name] = ema[name].clone().fill_(float("nan"))
    fake_checkpoint(tmp_path / "run", cfg, ema, step=7)
    with pytest.raises(NonFiniteWeights, match=rf"ema weights, step 7\): 1 tensors .*{name}"):
        export_checkpoint(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_streak_stops_at_patience_in_a_row_and_resets_on_a_good_batch() -> None:
    streak = NonFiniteStreak(patience=3)
    streak.skipped("loss", step=1)
    streak.skipped("loss", step=1)
    streak.reset()
    streak.skipped("gradient", step=4)
    streak.skipped("gradient", step=4)
    with pytest.raises(
        NonFiniteLoss,
        match="gradient was non-finite for 3 micro batches in a row, the last at step 5;",
    ):
        streak.skipped("gradient", step=5)


class _Engine:
    """The parts of a DeepSpeed engine ``guarded_step`` uses; ``step`` counts, and skips
    like DeepSpeed's fp16 optimizer when ``overflows``."""

    def __init__(self, optimizer: object, *, overflows: bool = False) -> None:
        self.module = nn.Linear(2, 2)
        self.module(torch.ones(1, 2)).sum().backward()
        self.optimizer = optimizer
        self.overflows = overflows
        self.skipped_steps = 0
        self.calls: list[str] = []

    def step(self) -> None:
        self.calls.append("step")
        self.skipped_steps += self.overflows

    def zero_grad(self) -> None:
        self.calls.append("zero_grad")


def test_guarded_step_steps_skips_or_lets_deepspeed_discard() -> None:
    cpu = torch.device("cpu")
    plain = _Engine(torch.optim.SGD([torch.zeros(1)], lr=1))
    assert guarded_step(plain, cpu, boundary=True, check_grads=True) == "stepped"
    assert plain.calls == ["step"]
    assert plain.module.bias.grad is not None
    plain.module.bias.grad[0] = float("nan")
    # a plain optimizer would apply the NaNs: zero_grad instead of the step
    assert guarded_step(plain, cpu, boundary=True, check_grads=True) == "gradient"
    assert plain.calls == ["step", "zero_grad"]
    # between boundaries nothing is checked (the gradients are still accumulating)
    assert guarded_step(plain, cpu, boundary=False, check_grads=True) == "stepped"
    # DeepSpeed's own optimizers discard a non-finite step inside step()
    zero = _Engine(SimpleNamespace(overflow=False))
    assert zero.module.bias.grad is not None
    zero.module.bias.grad[0] = float("inf")
    assert guarded_step(zero, cpu, boundary=True, check_grads=True) == "gradient"
    assert zero.calls == ["step"]
    # fp16: gradients unchecked, DeepSpeed's loss scale skips the step by itself
    fp16 = _Engine(SimpleNamespace(overflow=True), overflows=True)
    assert guarded_step(fp16, cpu, boundary=True, check_grads=False) == "overflow"
    assert guarded_step(fp16, cpu, boundary=False, check_grads=False) == "stepped"
    assert fp16.calls == ["step", "step"]
