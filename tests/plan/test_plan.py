"""``imagen-ray plan``: the counts it is built from, its refusals and its output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from imagen_ray.cli import main
from imagen_ray.config import load_run_config
from imagen_ray.plan.counts import count_activations, model_state_bytes
from imagen_ray.plan.figures import GPUS
from imagen_ray.plan.model import Hardware, PlanError, batch_split, plan_stage

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "configs/paper/base.yaml"
TINY = ROOT / "configs/tiny/base.yaml"
SOURCES = {"measured", "counted", "datasheet", "assumed"}


def _real_saved_bytes(cfg_path: Path, batch: int) -> int:
    """Bytes autograd really keeps for the tiny stage's loss on the CPU, each storage once."""
    from imagen_ray.cascade import Stage

    cfg = load_run_config(cfg_path, [])
    torch.manual_seed(0)
    stage = Stage(cfg.stage, text_dim=384).train()
    n = cfg.text.max_length
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        seen[s.data_ptr()] = max(seen.get(s.data_ptr(), 0), s.nbytes())
        return t

    x0 = torch.randn(batch, 3, cfg.stage.size, cfg.stage.size)
    emb, mask = torch.randn(batch, n, 384), torch.ones(batch, n, dtype=torch.bool)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        stage(x0, emb, mask).mean()
    return sum(seen.values())


def test_activations_counted_on_the_meta_device_match_the_real_ones() -> None:
    """The meta-device count (no memory) is within 25 % of what a real forward keeps; with
    gradient checkpointing it is a fraction of it."""
    cfg = load_run_config(TINY, [])
    acts = count_activations(cfg.stage, 384, batch=4, side=cfg.stage.size, text_len=24)
    real = _real_saved_bytes(TINY, 4)
    assert 0.75 <= acts.plain / real <= 1.25, (acts.plain, real)
    assert 0 < acts.checkpointed < acts.plain / 2


def test_model_state_follows_zero_as_deepspeed_holds_it() -> None:
    """fp32 AdamW on 2 ranks, per rank, in parameter-sized units: the table of
    docs/benchmarks.md#training (ZeRO 0: 1 + 1 + 2; ZeRO 2: 1 + 1/2 + 1 + 1/2 master;
    ZeRO 3: 1/2 + 1/2 + 1, no master); bf16 halves the weights and adds fp32 masters."""
    p = 1000
    units = {}
    for z in (0, 1, 2, 3):
        cfg = load_run_config(TINY, [f"train.zero_stage={z}"])
        s = model_state_bytes(p, cfg, 2)
        units[z] = tuple(s[k] / (4 * p) for k in ("params", "grads", "optimizer", "master_weights"))
    assert units[0] == (1, 1, 2, 0)
    assert units[1] == (1, 1, 1, 0.5)
    assert units[2] == (1, 0.5, 1, 0.5)
    assert units[3] == (0.5, 0.5, 1, 0)
    bf16 = load_run_config(TINY, ["train.zero_stage=3", "train.precision=bf16"])
    s = model_state_bytes(p, bf16, 2)
    assert s["params"] == p * 2 / 2 and s["master_weights"] == p * 4 / 2
    for z, grads in ((0, p * (2 + 4)), (1, p * (2 + 4 / 2)), (2, p * (2 + 4) / 2)):
        cfg = load_run_config(TINY, [f"train.zero_stage={z}", "train.precision=bf16"])
        assert model_state_bytes(p, cfg, 2)["grads"] == grads, z  # fp32 grads: the partition
    off = load_run_config(
        TINY, ["train.zero_stage=2", "train.offload_optimizer=true", "train.use_gpu=true"]
    )
    s = model_state_bytes(p, off, 2)
    assert s["optimizer"] == 0 and s["host"] == p * 4 * (1 + 0.5)


def test_the_global_batch_is_kept_on_any_number_of_ranks() -> None:
    cfg = load_run_config(PAPER, [])  # 32 x 8 accum x 8 workers = 2048
    assert batch_split(cfg, 8) == (32, 8)
    assert batch_split(cfg, 64) == (32, 1)
    assert batch_split(cfg, 256) == (8, 1)
    with pytest.raises(PlanError, match=r"global batch 2048 .* does not split over 48 ranks"):
        batch_split(cfg, 48)


def test_the_papers_base_plan_labels_every_figure_and_scales_with_gpus() -> None:
    cfg = load_run_config(PAPER, [])
    plans = {n: plan_stage(cfg, Hardware("h100", n, nodes=n // 8), text_dim=4096) for n in (8, 64)}
    for plan in plans.values():
        figs = [*plan.figures.values(), *plan.memory.values()]
        assert figs and all(f.source in SOURCES and f.how for f in figs)
        assert plan.figures["flops_per_sample"].source == "counted"
        assert plan.figures["mfu"].source == "assumed"  # no GPU training run measured yet
    f8, f64 = plans[8].figures, plans[64].figures
    # 8x the GPUs: faster, but the gradient sync between nodes costs more than it saves
    assert 1 < f64["samples_per_s"].value / f8["samples_per_s"].value < 8
    assert f64["gpu_hours"].value > f8["gpu_hours"].value
    assert plans[64].memory["optimizer"].value < plans[8].memory["optimizer"].value  # ZeRO 2


def test_a_rank_that_does_not_fit_is_refused_with_the_fix() -> None:
    cfg = load_run_config(PAPER, ["stage.unet.grad_checkpointing=false"])
    with pytest.raises(PlanError) as err:
        plan_stage(cfg, Hardware("l4", 8), text_dim=4096)
    msg = str(err.value)
    assert "a rank needs" in msg and f"{GPUS['l4'].memory_gb:g} GB l4" in msg
    assert "grad_checkpointing: true" in msg and "train.zero_stage: 3" in msg


def test_the_cli_prints_json_and_explains_itself(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "-c", str(PAPER), "--gpus", "64", "--price-per-gpu-hour", "2", "--json"]
    assert main(args) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    stage, totals = lines[0], lines[-1]["totals"]
    assert stage["stage"] == "base" and stage["ranks"] == 64
    cost = stage["figures"]["cost_usd"]
    assert cost["source"] == "assumed"
    assert cost["value"] == pytest.approx(stage["figures"]["gpu_hours"]["value"] * 2)
    assert totals["cost_usd"] == pytest.approx(cost["value"])

    assert main(["plan", "-c", str(PAPER), "--gpus", "64"]) == 0
    text = capsys.readouterr().out
    assert "samples_per_s" in text and "counted" in text and "assumed" in text

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    assert "imagen-ray plan -c configs/paper/base.yaml --gpus 64" in capsys.readouterr().out
    assert main(["plan", "-c", str(PAPER), "--mfu", "1.5"]) == 2
    assert "--mfu is a fraction" in capsys.readouterr().err


def _documented_zero_memory() -> dict[int, dict[str, float]]:
    """The measured ZeRO memory table of docs/benchmarks.md#training (MB per rank)."""
    lines = (ROOT / "docs/benchmarks.md").read_text().splitlines()
    head = next(i for i, x in enumerate(lines) if x.startswith("| ZeRO | params | grads |"))
    rows = {}
    for line in lines[head + 2 : head + 5]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        num = [float(c.split()[0]) for c in cells[1:5]]
        rows[int(cells[0])] = dict(
            zip(("params", "grads", "optimizer", "master_weights"), num, strict=True)
        )
    return rows


def test_the_plan_predicts_the_documented_zero_memory_of_the_27m_unet() -> None:
    """configs/bench/unet27m.yaml, fp32 AdamW, 2 ranks: every part within 25 % of what
    bench/train.py --only zero_memory measured (docs/benchmarks.md), and the total within 5 %."""
    from imagen_ray.unet import EfficientUNet, count_parameters

    doc = _documented_zero_memory()
    assert set(doc) == {0, 2, 3}
    for z, measured in doc.items():
        cfg = load_run_config(ROOT / "configs/bench/unet27m.yaml", [f"train.zero_stage={z}"])
        with torch.device("meta"):
            params = count_parameters(EfficientUNet(cfg.stage.unet, text_dim=384))
        plan = model_state_bytes(params, cfg, 2)
        for part, mb in measured.items():
            assert plan[part] / 1e6 == pytest.approx(mb, rel=0.25, abs=0.01), (z, part)
        total = sum(plan[k] for k in measured) / 1e6
        assert total == pytest.approx(sum(measured.values()), rel=0.05), z
