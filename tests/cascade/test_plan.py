"""The generation plan: seeds, stages up to ``until``, resolved sampling, generators."""

from __future__ import annotations

import pytest
import torch

from imagen_ray.cascade import SEED_MAX, PlanError, plan_generation, plan_sampling
from imagen_ray.cascade.plan import prompt_seeds, stage_generators
from imagen_ray.config import ConfigError, SamplingConfig, StageConfig

UNET = {
    "channels": 16,
    "groups": 4,
    "head_dim": 8,
    "levels": [{"mult": 1, "res_blocks": 1}, {"mult": 2, "res_blocks": 1}],
}
STAGES = [
    StageConfig(name="base", size=16, unet=UNET, sampling={"steps": 3}),
    StageConfig(name="sr", size=32, lowres_size=16, unet=UNET, sampling={"steps": 2}),
]


def test_seeds_per_prompt() -> None:
    assert prompt_seeds(3, 5) == [5, 6, 7]
    assert prompt_seeds(2, [9, 1]) == [9, 1]
    drawn = prompt_seeds(2, None)
    assert 0 <= drawn[0] <= SEED_MAX and drawn[1] == drawn[0] + 1
    with pytest.raises(PlanError, match="got 1 seeds for 2 prompts") as e:
        prompt_seeds(2, [1])
    assert e.value.field == "seed"
    with pytest.raises(PlanError, match=r"seed: -1 is outside \[0, 4294967295\]"):
        prompt_seeds(1, -1)
    with pytest.raises(PlanError, match=r"seed\[1\]: 4294967296 is outside"):
        prompt_seeds(2, [0, 2**32])


def test_until_and_overrides_resolve_the_stages_that_run() -> None:
    plan = plan_generation(
        STAGES, ["a", "b"], seed=4, until="base", sampling={"base": {"steps": 5}, "sr": {}}
    )
    assert plan.stages == ("base",) and plan.last == 0 and plan.seeds == (4, 5)
    assert plan.sampling[0] == SamplingConfig(steps=5)  # the rest from SamplingConfig defaults
    assert plan.sampling_json()[0]["steps"] == 5
    full = plan_generation(STAGES, ["a"], until=1)
    assert full.stages == ("base", "sr") and [s.steps for s in full.sampling] == [3, 2]
    assert list(plan_sampling(STAGES)) == ["base", "sr"]
    given = SamplingConfig(steps=7, sampler="ddim")
    assert plan_sampling(STAGES, sampling={"sr": given})["sr"] is given


def test_bad_requests_name_the_field() -> None:
    with pytest.raises(PlanError, match="until: unknown stage 'nope'; stages are") as e:
        plan_generation(STAGES, ["a"], until="nope")
    assert e.value.field == "until"
    with pytest.raises(PlanError, match=r"until: stage index 2 out of range 0\.\.1"):
        plan_generation(STAGES, ["a"], until=2)
    with pytest.raises(PlanError, match=r"sampling: overrides for unknown stages \['sr2'\]"):
        plan_generation(STAGES, ["a"], sampling={"sr2": {"steps": 1}})
    with pytest.raises(ConfigError, match=r"sampling\.sr(.|\n)*steps"):
        plan_generation(STAGES, ["a"], sampling={"sr": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"sampling\.base(.|\n)*sampler"):
        plan_generation(STAGES, ["a"], sampling={"base": {"sampler": "euler"}})
    with pytest.raises(PlanError, match="prompts: the list is empty"):
        plan_generation(STAGES, [])
    with pytest.raises(TypeError):
        plan_generation(STAGES, "one string")


def test_generators_depend_on_seed_and_stage_only() -> None:
    plan = plan_generation(STAGES, ["a", "b"], seed=[3, 4])
    draw = [torch.randn(4, generator=g) for g in plan.generators(1, "cpu")]
    again = [torch.randn(4, generator=g) for g in stage_generators([4], 1, "cpu")]
    other_stage = [torch.randn(4, generator=g) for g in stage_generators([4], 0, "cpu")]
    assert torch.equal(draw[1], again[0])  # prompt 1 alone gets the same noise
    assert not torch.equal(draw[1], other_stage[0])
    assert not torch.equal(draw[0], draw[1])
