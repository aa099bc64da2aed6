"""Tests of imagen_ray.config.loading: YAML files, ``--set`` overrides, validation messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from imagen_ray.config import (
    CONFIG_FORMAT_VERSION,
    CascadeConfig,
    ConfigError,
    RunConfig,
    ServeFileConfig,
    load_any_config,
    load_cascade_config,
    load_run_config,
    parse_override,
    to_yaml,
)
from tests.config.conftest import (
    ALL_YAML,
    ALL_YAML_IDS,
    TINY_BASE,
    TINY_CASCADE,
    TINY_SR,
    config_error,
    write_yaml,
)

# --------------------------------------------------------------------------- every shipped file


def test_configs_directory_has_files() -> None:
    assert TINY_BASE in ALL_YAML
    assert TINY_CASCADE in ALL_YAML


@pytest.mark.parametrize("path", ALL_YAML, ids=ALL_YAML_IDS)
def test_every_config_file_loads(path: Path) -> None:
    cfg = load_any_config(path)
    assert isinstance(cfg, RunConfig | CascadeConfig | ServeFileConfig)
    assert cfg.version == CONFIG_FORMAT_VERSION
    raw = yaml.safe_load(path.read_text())
    # A file is a cascade exactly when it has a top-level ``stages`` key, a serve file exactly
    # when its only section is ``serve``.
    assert isinstance(cfg, CascadeConfig) == ("stages" in raw)
    assert isinstance(cfg, ServeFileConfig) == (set(raw) - {"version"} == {"serve"})
    if isinstance(cfg, ServeFileConfig):
        return
    stages = cfg.stages if isinstance(cfg, CascadeConfig) else (cfg.stage,)
    for stage in stages:
        assert stage.size % 2 ** (len(stage.unet.levels) - 1) == 0


@pytest.mark.parametrize("path", ALL_YAML, ids=ALL_YAML_IDS)
def test_round_trip_through_yaml_and_dicts(path: Path, tmp_path: Path) -> None:
    cfg = load_any_config(path)
    model = type(cfg)

    # to_yaml -> file -> load gives an equal config.
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(to_yaml(cfg))
    again = load_any_config(resolved)
    assert type(again) is model
    assert again == cfg

    # The Ray-boundary path: plain dicts (python and JSON mode) validate back to equal configs.
    assert model.model_validate(cfg.model_dump()) == cfg
    assert model.model_validate(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg


def test_tiny_cascade_resolves_stage_files() -> None:
    cascade = load_cascade_config(TINY_CASCADE)
    base, sr = load_run_config(TINY_BASE), load_run_config(TINY_SR)
    assert [s.name for s in cascade.stages] == [base.stage.name, sr.stage.name]
    assert cascade.stages == (base.stage, sr.stage)
    assert cascade.text == base.text == sr.text
    assert not cascade.stages[0].is_sr
    assert cascade.stages[1].is_sr
    assert cascade.stages[1].lowres_size == cascade.stages[0].size


# --------------------------------------------------------------------------- overrides


def test_override_sets_nested_value() -> None:
    cfg = load_run_config(TINY_BASE, ["stage.unet.channels=48"])
    assert cfg.stage.unet.channels == 48
    assert load_run_config(TINY_BASE).stage.unet.channels == 32  # file untouched


def test_override_list_index() -> None:
    before = load_run_config(TINY_BASE)
    assert before.stage.unet.levels[1].cross_attn is True
    cfg = load_run_config(TINY_BASE, ["stage.unet.levels.1.cross_attn=false"])
    assert cfg.stage.unet.levels[1].cross_attn is False
    # Only that list item changed.
    assert cfg.stage.unet.levels[0] == before.stage.unet.levels[0]
    assert cfg.stage.unet.levels[2] == before.stage.unet.levels[2]


def test_override_negative_list_index() -> None:
    cfg = load_run_config(TINY_BASE, ["stage.unet.levels.-1.res_blocks=3"])
    assert cfg.stage.unet.levels[-1].res_blocks == 3
    assert cfg.stage.unet.levels[0].res_blocks == 1


def test_override_values_are_yaml_typed() -> None:
    cfg = load_run_config(
        TINY_BASE,
        [
            "train.lr=1e-3",
            "train.steps=7",
            "stage.unet.mid_attn=false",
            "data.shards=/x/{0..3}.tar",
        ],
    )
    assert isinstance(cfg.train.lr, float)
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.train.steps == 7
    assert cfg.stage.unet.mid_attn is False
    assert cfg.data.shards == "/x/{0..3}.tar"


def test_parse_override_reads_yaml() -> None:
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override(" a.b =3") == (["a", "b"], 3)
    assert parse_override("a.b=") == (["a", "b"], "")
    assert parse_override("a=x=y") == (["a"], "x=y")  # only the first '=' splits


def test_override_whole_list() -> None:
    cfg = load_run_config(
        TINY_BASE, ["stage.unet.levels=[{mult: 1, res_blocks: 1}, {mult: 2, res_blocks: 2}]"]
    )
    assert len(cfg.stage.unet.levels) == 2
    assert cfg.stage.unet.levels[1].res_blocks == 2


def test_cascade_override_reaches_inline_stage() -> None:
    cfg = load_cascade_config(TINY_CASCADE, ["stages.1.sampling.steps=3"])
    assert cfg.stages[1].sampling.steps == 3
    assert cfg.stages[0].sampling.steps == load_run_config(TINY_BASE).stage.sampling.steps


# --------------------------------------------------------------------------- error messages


def test_unknown_key_names_path_and_valid_keys() -> None:
    msg = config_error(TINY_BASE, ["stage.unet.chanels=48"])
    assert "stage.unet.chanels" in msg
    assert "unknown key" in msg
    for valid in ("channels", "levels", "head_dim", "mid_blocks"):
        assert valid in msg


def test_unknown_key_inside_list_item() -> None:
    msg = config_error(TINY_BASE, ["stage.unet.levels.1.crossattn=true"])
    assert "stage.unet.levels.1.crossattn" in msg
    for valid in ("cross_attn", "self_attn", "res_blocks", "mult"):
        assert valid in msg


def test_unknown_top_level_key() -> None:
    msg = config_error(TINY_BASE, ["trian.lr=1"])
    assert "trian" in msg
    for valid in ("train", "stage", "text", "data", "wandb"):
        assert valid in msg
    assert "serve" not in msg  # serve settings have their own file type


def test_invalid_literal_names_the_options() -> None:
    msg = config_error(TINY_BASE, ["stage.sampling.sampler=euler"])
    assert "stage.sampling.sampler" in msg
    assert "euler" in msg
    for option in ("ddpm", "ddim", "dpmpp_2m"):
        assert option in msg


def test_type_error_names_the_value() -> None:
    msg = config_error(TINY_BASE, ["stage.size=big"])
    assert "stage.size" in msg
    assert "'big'" in msg


def test_out_of_range_value() -> None:
    msg = config_error(TINY_BASE, ["stage.sampling.steps=0"])
    assert "stage.sampling.steps" in msg
    assert "0" in msg


def test_adafactor_at_zero3_is_refused_with_the_fix() -> None:
    msg = config_error(TINY_BASE, ["train.optimizer=adafactor", "train.zero_stage=3"])
    assert "adafactor" in msg and "train.zero_stage=2" in msg and "train.optimizer=adamw" in msg
    assert load_run_config(TINY_BASE, ["train.optimizer=adafactor", "train.zero_stage=2"])


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("index", ["3", "7", "-4", "x", "-"])
def test_bad_list_index(index: str) -> None:
    with pytest.raises(ConfigError, match=r"list index in 0\.\.2") as info:
        load_run_config(TINY_BASE, [f"stage.unet.levels.{index}.mult=2"])
    assert repr(index) in str(info.value)


def test_bad_list_index_double_minus() -> None:
    with pytest.raises(ConfigError, match="list index"):
        load_run_config(TINY_BASE, ["stage.unet.levels.--1.mult=2"])


@pytest.mark.parametrize("item", ["stage.unet.channels", "=48", " =1", ""])
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_run_config(TINY_BASE, [item])


def test_override_below_a_value() -> None:
    with pytest.raises(ConfigError, match="inside a value"):
        load_run_config(TINY_BASE, ["stage.size.x=1"])
    with pytest.raises(ConfigError, match="not a section"):
        load_run_config(TINY_BASE, ["stage.size.x.y=1"])


def test_invalid_yaml_override_value() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_run_config(TINY_BASE, ["stage.size=[1, 2"])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_any_config(tmp_path / "nope.yaml")


def test_non_mapping_file(tmp_path: Path) -> None:
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_any_config(p)


@pytest.mark.parametrize("path", [TINY_BASE, TINY_CASCADE], ids=["run", "cascade"])
def test_unsupported_version(path: Path) -> None:
    msg = config_error(path, ["version=2"])
    assert "version 2" in msg
    assert f"version {CONFIG_FORMAT_VERSION}" in msg


# --------------------------------------------------------------------------- cascade + stage files


def _stage_file(path: Path, text: dict, stage: dict) -> Path:
    return write_yaml(path, {"text": text, "stage": stage})


TEXT = {"name": "minilm", "max_length": 24}
BASE_STAGE = {
    "name": "base",
    "size": 16,
    "unet": {"channels": 16, "levels": [{"mult": 1, "res_blocks": 1}]},
}
SR_STAGE = {
    "name": "sr",
    "size": 32,
    "lowres_size": 16,
    "unet": {"channels": 16, "levels": [{"mult": 1, "res_blocks": 1}], "mid_attn": False},
}


def test_cascade_of_stage_files(tmp_path: Path) -> None:
    _stage_file(tmp_path / "a.yaml", TEXT, BASE_STAGE)
    (tmp_path / "sub").mkdir()
    _stage_file(tmp_path / "sub" / "b.yaml", TEXT, SR_STAGE)
    cascade = write_yaml(tmp_path / "c.yaml", {"text": TEXT, "stages": ["a.yaml", "sub/b.yaml"]})
    cfg = load_any_config(cascade)
    assert isinstance(cfg, CascadeConfig)
    assert [s.name for s in cfg.stages] == ["base", "sr"]
    assert cfg.stages[1].lowres_size == 16


def test_cascade_mixes_inline_and_file_stages(tmp_path: Path) -> None:
    _stage_file(tmp_path / "a.yaml", TEXT, BASE_STAGE)
    cascade = write_yaml(tmp_path / "c.yaml", {"text": TEXT, "stages": ["a.yaml", SR_STAGE]})
    cfg = load_cascade_config(cascade)
    assert [s.name for s in cfg.stages] == ["base", "sr"]


@pytest.mark.parametrize(
    "stage_text",
    [
        {"name": "minilm", "max_length": 32},
        {"name": "google/t5-v1_1-xxl", "max_length": 24},
        {"name": "minilm", "max_length": 24, "dtype": "bfloat16"},
    ],
    ids=["max_length", "name", "dtype"],
)
def test_cascade_text_mismatch(tmp_path: Path, stage_text: dict) -> None:
    _stage_file(tmp_path / "a.yaml", TEXT, BASE_STAGE)
    _stage_file(tmp_path / "b.yaml", stage_text, SR_STAGE)
    cascade = write_yaml(tmp_path / "c.yaml", {"text": TEXT, "stages": ["a.yaml", "b.yaml"]})
    with pytest.raises(ConfigError) as info:
        load_cascade_config(cascade)
    msg = str(info.value)
    assert "stages[1]" in msg
    assert "b.yaml" in msg
    assert "must match" in msg


def test_cascade_text_defaults_must_also_match(tmp_path: Path) -> None:
    # The stage file sets no text section (defaults: max_length 64); the cascade uses 24.
    write_yaml(tmp_path / "a.yaml", {"stage": BASE_STAGE})
    cascade = write_yaml(tmp_path / "c.yaml", {"text": TEXT, "stages": ["a.yaml"]})
    with pytest.raises(ConfigError, match="must match"):
        load_cascade_config(cascade)


def test_cascade_missing_stage_file(tmp_path: Path) -> None:
    cascade = write_yaml(tmp_path / "c.yaml", {"text": TEXT, "stages": ["missing.yaml"]})
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_cascade_config(cascade)


def test_invalid_stage_file_in_cascade_names_that_file(tmp_path: Path) -> None:
    _stage_file(tmp_path / "a.yaml", TEXT, {**BASE_STAGE, "sizee": 16})
    cascade = write_yaml(tmp_path / "c.yaml", {"text": TEXT, "stages": ["a.yaml"]})
    with pytest.raises(ConfigError) as info:
        load_cascade_config(cascade)
    assert "a.yaml" in str(info.value)
    assert "stage.sizee" in str(info.value)
