"""imagen_ray.cluster: what a cluster can provide, and the checks train/generate/serve run
before anything starts (no Ray here: capacities are built by hand)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from imagen_ray.batch.config import GenerateConfig
from imagen_ray.batch.worker import check_cluster
from imagen_ray.cluster import (
    Capacity,
    ClusterTooSmall,
    Demand,
    NodeType,
    _types_from_autoscaling_config,
    check_demands,
    local_num_cpus,
)
from imagen_ray.config import load_run_config
from imagen_ray.train.launcher import LaunchError, check_resources, run_demands

ROOT = Path(__file__).resolve().parents[1]
HEAD_ONLY = [{"CPU": 0.0, "memory": 1e9}]  # a head that runs nothing, as cluster/aws-gpu.yaml
AUTOSCALING = Capacity(HEAD_ONLY, [NodeType("cpu.worker", {"CPU": 4.0}, 2)], autoscaler=True)


def demo_cfg(*overrides: str):
    return load_run_config(ROOT / "configs/demo/base.yaml", list(overrides))


def test_a_run_above_the_cluster_now_but_within_its_node_types_waits_for_the_autoscaler() -> None:
    wait = check_demands(AUTOSCALING, [Demand("2 workers", {"CPU": 1.0}, 2)])
    assert wait is not None and "waiting for the autoscaler" in wait and "2 CPU (has 0)" in wait
    assert "cpu.worker x2 (CPU 4)" in wait
    # what fits now starts without a word
    assert check_demands(Capacity([{"CPU": 4.0}]), [Demand("w", {"CPU": 1.0}, 4)]) is None


def test_a_bundle_no_node_type_can_hold_is_refused_with_the_reason() -> None:
    gpu = Demand("train.num_workers=1 + 1 GPU", {"CPU": 1.0, "GPU": 1.0}, fix="set use_gpu")
    with pytest.raises(ClusterTooSmall, match=r"needs a node with CPU 1, GPU 1, and no node") as e:
        check_demands(AUTOSCALING, [gpu])
    assert "cpu.worker x2 (CPU 4)" in str(e.value) and str(e.value).endswith("set use_gpu")
    # a bundle larger than any one node, though the total would fit
    with pytest.raises(ClusterTooSmall, match="needs a node with CPU 5"):
        check_demands(AUTOSCALING, [Demand("big", {"CPU": 5.0})])


def test_more_than_the_node_types_can_ever_add_is_refused_with_the_numbers() -> None:
    assert AUTOSCALING.most("CPU") == 8.0
    with pytest.raises(ClusterTooSmall, match=r"needs 9 CPU at once .* at most 8"):
        check_demands(AUTOSCALING, [Demand("w", {"CPU": 1.0}, 9)])
    unlimited = Capacity(HEAD_ONLY, [NodeType("w", {"CPU": 4.0}, -1)], autoscaler=True)
    assert unlimited.most("CPU") == math.inf
    assert check_demands(unlimited, [Demand("w", {"CPU": 1.0}, 100)]) is not None


def test_a_cluster_without_an_autoscaler_has_what_it_has_and_an_unknown_one_may_grow() -> None:
    fixed = Capacity([{"CPU": 2.0}, {"CPU": 2.0}])
    with pytest.raises(ClusterTooSmall, match=r"at most 4 \(CPU 4, GPU 0 now; no autoscaler\)"):
        check_demands(fixed, [Demand("w", {"CPU": 1.0}, 5)])
    unknown = Capacity([{"CPU": 2.0}], None, autoscaler=True)
    wait = check_demands(unknown, [Demand("w", {"CPU": 1.0, "GPU": 1.0}, 5)])
    assert wait is not None and "does not say what it can add" in wait


def test_the_data_pipeline_cpus_are_part_of_the_train_check() -> None:
    """The 2-core case: 2 workers x 1 CPU took both CPUs and the read tasks never ran."""
    cfg = demo_cfg()
    two_cores = Capacity([{"CPU": 2.0}])
    with pytest.raises(LaunchError) as e:
        check_resources([cfg], two_cores, local=True)
    msg = str(e.value)
    assert "needs 2.5 CPU at once (2 for train.num_workers=2 x train.cpus_per_worker=1" in msg
    assert "0.25 for one read task" in msg and "0.25 for one decode task" in msg
    assert "--num-cpus 3" in msg and "at most 2" in msg
    # --data memory has no pipeline: the workers alone fit
    assert check_resources([cfg], two_cores, pipeline=False, local=True) is None
    # a local cluster sized from the demands runs it
    demands = run_demands(cfg, local=True)
    assert local_num_cpus(demands) >= 3
    assert check_resources([cfg], Capacity([{"CPU": 3.0}]), local=True) is None
    # on the fly encoding adds the encoder actors
    on_the_fly = run_demands(demo_cfg("data.precomputed=false"))
    assert sum(d.total("CPU") for d in on_the_fly) == 2.0 + 0.25 + 0.25 + 0.5
    # a joined cluster's fix does not mention --num-cpus
    with pytest.raises(LaunchError, match=r"add nodes, or lower train\.num_workers") as e:
        check_resources([cfg], two_cores)
    assert "--num-cpus" not in str(e.value)


def test_runs_of_one_command_are_checked_together() -> None:
    a, b = demo_cfg("train.name=a"), demo_cfg("train.name=b")
    four = Capacity([{"CPU": 4.0}])
    assert check_resources([a], four) is None
    with pytest.raises(LaunchError, match="needs 5 CPU at once"):
        check_resources([a, b], four)


def test_generate_pool_check() -> None:
    cfg = GenerateConfig(replicas=2, num_cpus=1.0, num_gpus=1.0)
    with pytest.raises(ClusterTooSmall, match=r"--replicas 2 .* needs a node with CPU 1, GPU 1"):
        check_cluster(cfg, AUTOSCALING)
    wait = check_cluster(GenerateConfig(replicas=2, num_cpus=1.0), AUTOSCALING)
    assert wait is not None and "waiting for the autoscaler" in wait


def test_node_types_are_read_from_a_cluster_launcher_config_with_rays_schema(
    tmp_path: Path,
) -> None:
    """As the head's ``~/ray_bootstrap_config.yaml``: the launcher's config with defaults."""
    import yaml
    from ray.autoscaler._private.util import fillout_defaults

    aws = fillout_defaults(yaml.safe_load((ROOT / "cluster/aws-gpu.yaml").read_text()))
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(aws))
    types = _types_from_autoscaling_config(path)
    assert types is not None and types, "no worker node types read"
    head = aws["head_node_type"]
    assert head not in {t.name for t in types}
    for t in types:
        spec = aws["available_node_types"][t.name]
        assert dict(t.resources) == {k: float(v) for k, v in spec["resources"].items()}
        assert t.max_count == min(spec["max_workers"], aws["max_workers"])
    path.write_text("available_node_types: 3\n")  # not a valid Ray cluster config
    assert _types_from_autoscaling_config(path) is None


def test_serve_checks_every_deployments_replicas(tmp_path: Path) -> None:
    from imagen_ray.cli import main
    from imagen_ray.config import load_serve_config
    from imagen_ray.serve.app import serve_demands

    assert (
        main(["init", "-c", str(ROOT / "configs/tiny/cascade.yaml"), "--out", str(tmp_path / "c")])
        == 0
    )
    cfg = load_serve_config(ROOT / "configs/tiny/serve.yaml", [], str(tmp_path / "c"))
    demands = serve_demands(cfg)
    assert [d.what.split(" (")[0] for d in demands] == [
        "serve.ingress",
        "serve.encoder",
        "stage 'base' deployment",
        "stage 'sr64' deployment",
    ]
    assert check_demands(Capacity([{"CPU": 2.0}]), demands) is None
    gpu = load_serve_config(
        ROOT / "configs/tiny/serve.yaml", ["serve.stage_defaults.num_gpus=1"], str(tmp_path / "c")
    )
    with pytest.raises(ClusterTooSmall, match=r"stage 'base' deployment .* needs a node with"):
        check_demands(AUTOSCALING, serve_demands(gpu))
