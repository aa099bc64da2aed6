"""The stage deployments' inference dtype: resolved per stage and reported by /v1/models."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagen_ray.config import ConfigError, ServeConfig, validate

ROOT = Path(__file__).resolve().parents[2]


def serve_cfg(**data: object) -> ServeConfig:
    return validate(ServeConfig, data, "test")


def test_dtype_is_per_stage_and_auto_follows_the_device() -> None:
    cfg = serve_cfg(
        stage_defaults={"num_gpus": 0.5},
        stages=[{"name": "sr64", "dtype": "float32"}, {"name": "cpu", "num_gpus": 0.0}],
    )
    assert cfg.stage_dtype("base") == "bfloat16"  # auto on a GPU
    assert cfg.stage_dtype("sr64") == "float32"
    assert cfg.stage_dtype("cpu") == "float32"  # auto on CPU
    with pytest.raises(ConfigError, match=r"encoder\.dtype: unknown key"):
        serve_cfg(encoder={"dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="bfloat16"):
        serve_cfg(stage_defaults={"dtype": "bf16"})


def test_models_reports_each_stages_dtype(tmp_path: Path) -> None:
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config
    from imagen_ray.serve.ingress import Ingress

    cascade_dir = Cascade.from_config(
        load_cascade_config(ROOT / "configs" / "tiny" / "cascade.yaml"), seed=0
    ).save(tmp_path / "tiny")
    cfg = serve_cfg(cascade=str(cascade_dir), stages=[{"name": "sr64", "dtype": "bfloat16"}])
    # The class as written (Serve wraps it for ASGI): its models() is what /v1/models returns.
    cls = Ingress.func_or_class.__mro__[1]
    ingress = cls(None, [None, None], cfg.model_dump(mode="json"), str(cascade_dir))
    models = ingress.models()
    assert [(s["name"], s["dtype"]) for s in models["stages"]] == [
        ("base", "float32"),
        ("sr64", "bfloat16"),
    ]
