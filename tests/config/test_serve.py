"""Tests of the serve file type (imagen_ray.config.serve) and of telling the three file types
apart (``load_any_config``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imagen_ray.config import (
    CascadeConfig,
    ConfigError,
    RunConfig,
    ServeConfig,
    ServeFileConfig,
    file_kind,
    load_any_config,
    load_model_config,
    load_run_config,
    load_serve_config,
    read_yaml,
    to_yaml,
)
from tests.config.conftest import (
    TINY_BASE,
    TINY_CASCADE,
    TINY_SERVE,
    config_error,
    write_yaml,
)


@pytest.mark.parametrize(
    ("path", "model", "kind"),
    [
        (TINY_BASE, RunConfig, "run"),
        (TINY_CASCADE, CascadeConfig, "cascade"),
        (TINY_SERVE, ServeFileConfig, "serve"),
    ],
    ids=["run", "cascade", "serve"],
)
def test_load_any_config_tells_the_three_file_types_apart(
    path: Path, model: type, kind: str
) -> None:
    assert file_kind(read_yaml(path)) == kind
    cfg = load_any_config(path)
    assert type(cfg) is model


def test_serve_file_loads_its_serve_section() -> None:
    raw = yaml.safe_load(TINY_SERVE.read_text())["serve"]
    cfg = load_serve_config(TINY_SERVE)
    assert isinstance(cfg, ServeConfig)
    assert cfg.port == raw["port"] == 8000
    assert cfg.cascade == raw["cascade"]
    assert cfg.encoder.max_batch_size == raw["encoder"]["max_batch_size"]
    whole = load_any_config(TINY_SERVE)
    assert isinstance(whole, ServeFileConfig) and whole.serve == cfg


def test_serve_file_overrides_and_cascade(tmp_path: Path) -> None:
    cfg = load_serve_config(TINY_SERVE, ["serve.port=8123", "serve.auth.enabled=true"])
    assert cfg.port == 8123 and cfg.auth.enabled
    assert load_serve_config(TINY_SERVE).port == 8000  # file untouched
    cfg = load_serve_config(TINY_SERVE, ["serve.cascade=elsewhere"], cascade=str(tmp_path))
    assert cfg.cascade == str(tmp_path)  # the cascade argument wins over the file and --set


def test_resolved_serve_file_round_trips(tmp_path: Path) -> None:
    """``imagen-ray config -c serve.yaml`` prints this; it loads back as the same serve file."""
    text = to_yaml(load_any_config(TINY_SERVE, ["serve.port=9000"]))
    data = yaml.safe_load(text)
    assert set(data) == {"version", "serve"}
    assert data["serve"]["port"] == 9000
    again = load_any_config(write_yaml(tmp_path / "resolved.yaml", data))
    assert isinstance(again, ServeFileConfig)
    assert again.serve.port == 9000
    assert again == load_any_config(TINY_SERVE, ["serve.port=9000"])


def test_empty_serve_section_gives_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "serve.yaml", {"serve": {}})
    assert load_serve_config(path) == ServeConfig()


def test_run_file_with_a_serve_section_is_refused(tmp_path: Path) -> None:
    data = {**read_yaml(TINY_BASE), "serve": {"port": 8080}}
    path = write_yaml(tmp_path / "base.yaml", data)
    assert file_kind(data) == "run"
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    msg = str(info.value)
    assert "  serve: unknown key" in msg
    assert "serve settings live in their own file" in msg
    assert "serve.yaml" in msg
    # The same through load_any_config and through a --set on a run file.
    assert "serve settings live in their own file" in config_error(path, [])
    assert "serve settings live in their own file" in config_error(TINY_BASE, ["serve.port=1"])


def test_run_sections_in_a_serve_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_serve_config(TINY_BASE)
    msg = str(info.value)
    for key in ("text", "stage"):
        assert f"  {key}: unknown key: a serve file holds only `serve:`" in msg
        assert f"{key} belongs in a run file" in msg


def test_serve_file_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    msg = config_error(TINY_SERVE, ["serve.prot=1"])
    assert "serve.prot: unknown key" in msg
    for valid in ("port", "host", "cascade", "stage_defaults"):
        assert valid in msg
    msg = config_error(TINY_SERVE, ["serve.encoder.max_batch=1"])
    assert "serve.encoder.max_batch: unknown key" in msg
    assert "max_batch_size" in msg


def test_serve_file_values_are_validated() -> None:
    msg = config_error(TINY_SERVE, ["serve.port=0"])
    assert "serve.port" in msg and "(got 0)" in msg
    msg = config_error(TINY_SERVE, ["serve.default_format=gif"])
    assert "serve.default_format" in msg
    for option in ("png", "jpeg", "webp"):
        assert option in msg
    msg = config_error(TINY_SERVE, ["version=2"])
    assert "version 2" in msg


def test_load_model_config_refuses_a_serve_file() -> None:
    assert isinstance(load_model_config(TINY_BASE), RunConfig)
    assert isinstance(load_model_config(TINY_CASCADE), CascadeConfig)
    with pytest.raises(ConfigError, match="is a serve file"):
        load_model_config(TINY_SERVE)


def test_run_config_has_no_serve_section() -> None:
    assert "serve" not in RunConfig.model_fields
    assert "serve" not in RunConfig().model_dump()
