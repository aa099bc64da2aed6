"""``imagen-ray plan`` against the CPU runs it predicts (``bench/plan.py``): the tiny stage at
ZeRO 0 / 2 / 3, the demo stage and the SR stage on crops, each trained for real with 2 Ray
Train + DeepSpeed workers. Samples/s, per-rank model state and the checkpoint's bytes must
be within 25 % of the plan; the printed rows say by how much. Samples/s, a timing on a shared
machine, is measured up to three times before a miss counts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import plan as bench_plan

pytestmark = pytest.mark.cluster  # five training runs: with the multi-run tests (.ci/run)
TOLERANCE = 0.25


@pytest.mark.parametrize("case", list(bench_plan.CASES))
def test_the_plan_is_within_25_percent_of_the_run(
    case: str, ray_cluster: None, tmp_path: Path
) -> None:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/torch_extensions"))
    row = bench_plan.check(case, tmp_path / "1", steps=20, workers=2, text_dim=384)
    print(row)  # the figures, for the log
    for key in ("model_state_bytes_per_rank", "checkpoint_bytes"):
        ratio = row[key]["ratio"]
        assert ratio is not None and abs(ratio - 1) <= TOLERANCE, (key, row[key])
    for attempt in (2, 3):  # a timing on a shared machine: measured again before a miss
        if abs(row["samples_per_s"]["ratio"] - 1) <= TOLERANCE:
            break
        row = bench_plan.check(case, tmp_path / str(attempt), steps=20, workers=2, text_dim=384)
        print(f"attempt {attempt}:", row)
    assert abs(row["samples_per_s"]["ratio"] - 1) <= TOLERANCE, row["samples_per_s"]
