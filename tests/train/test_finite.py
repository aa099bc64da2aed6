"""Non-finite guards beyond the loss (fast): the checks on tensors, and an export of a
checkpoint whose EMA holds NaN is refused with nothing written."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from imagen_ray.train.export import export_checkpoint
from imagen_ray.train.finite import (
    NonFiniteWeights,
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
