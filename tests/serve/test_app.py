"""The serve config, the application builder, the Serve config writer and the request schema,
without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import Field

from imagen_ray.cli import main
from imagen_ray.config import ConfigError, SamplingConfig, ServeConfig, load_serve_config
from imagen_ray.serve.app import (
    IMPORT_PATH,
    build_app,
    check_cascade_dir,
    check_exposure,
    deployment_options,
    serve_deploy_config,
)
from imagen_ray.serve.auth import read_token, token_digest, token_matches
from imagen_ray.serve.schemas import GenerateRequest, StageSettings, optional_fields

ROOT = Path(__file__).resolve().parents[2]
SERVE_YAML = ROOT / "configs" / "tiny" / "serve.yaml"


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    cfg = load_cascade_config(ROOT / "configs" / "tiny" / "cascade.yaml")
    return Cascade.from_config(cfg).save(tmp_path_factory.mktemp("app") / "tiny")


def test_stage_entries_override_stage_defaults_field_by_field() -> None:
    cfg = load_serve_config(
        SERVE_YAML,
        ["serve.stages=[{name: sr64, num_cpus: 1.5, num_replicas: 2}]"],
        cascade="elsewhere",
    )
    assert cfg.cascade == "elsewhere"
    sr = cfg.stage_deployment("sr64")
    assert (sr.num_cpus, sr.num_replicas) == (1.5, 2)
    assert sr.max_batch_size == cfg.stage_defaults.max_batch_size == 16  # from the defaults
    assert cfg.stage_deployment("base") == cfg.stage_defaults
    with pytest.raises(ConfigError, match="names must be unique"):
        load_serve_config(SERVE_YAML, ["serve.stages=[{name: a}, {name: a}]"])
    with pytest.raises(ConfigError, match=r"serve\.stage_defaults\.max_batch_size"):
        load_serve_config(SERVE_YAML, ["serve.stage_defaults.max_batch_size=0"])


def test_missing_cascade_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--cascade DIR"):
        check_cascade_dir(load_serve_config(SERVE_YAML, ["serve.cascade="]))
    with pytest.raises(ConfigError, match="is not a directory"):
        check_cascade_dir(load_serve_config(SERVE_YAML, cascade=str(tmp_path / "nope")))


def test_serve_config_file_builds_the_same_application(
    cascade_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "serve_app.yaml"
    argv = ["serve", "-c", str(SERVE_YAML), "--cascade", str(cascade_dir)]
    assert main([*argv, "--set", "serve.port=8123", "--write-serve-config", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    written = yaml.safe_load(out.read_text())
    assert written == serve_deploy_config(
        load_serve_config(SERVE_YAML, ["serve.port=8123"], cascade=str(cascade_dir))
    )
    app = written["applications"][0]
    assert app["import_path"] == IMPORT_PATH and written["http_options"]["port"] == 8123
    assert app["args"]["serve"]["cascade"] == str(cascade_dir.resolve())
    # What `serve run` / `serve deploy` call with those args: the bound ingress application.
    built = build_app(app["args"])
    assert type(built).__name__ == "Application"
    with pytest.raises(ConfigError, match="unknown args"):
        build_app({"serve": {}, "cascad": "x"})
    with pytest.raises(ConfigError, match=r"serve.stages names \['sr256'\]"):
        build_app(
            {
                "config": str(SERVE_YAML),
                "cascade": str(cascade_dir),
                "set": ["serve.stages=[{name: sr256}]"],
            }
        )


def test_serve_command_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "-c", str(SERVE_YAML), "--cascade", "/nonexistent/cascade"]) == 2
    assert "is not a directory" in capsys.readouterr().err


FILE_TOKEN = "from-file-" + "f" * 30
ENV_TOKEN = "from-env-" + "e" * 30


def test_token_from_env_first_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "token"
    f.write_text(FILE_TOKEN + "\n")
    monkeypatch.delenv("IMAGEN_TEST_TOKEN", raising=False)
    assert read_token("IMAGEN_TEST_TOKEN", str(f)) == FILE_TOKEN
    monkeypatch.setenv("IMAGEN_TEST_TOKEN", ENV_TOKEN)
    assert read_token("IMAGEN_TEST_TOKEN", str(f)) == ENV_TOKEN
    monkeypatch.delenv("IMAGEN_TEST_TOKEN")
    with pytest.raises(ValueError, match="IMAGEN_TEST_TOKEN"):
        read_token("IMAGEN_TEST_TOKEN", None)
    with pytest.raises(ValueError, match="does not exist"):
        read_token("IMAGEN_TEST_TOKEN", str(tmp_path / "missing"))


def test_tokens_shorter_than_32_characters_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEN_TEST_TOKEN", "x" * 31)
    with pytest.raises(ValueError, match=r"31 characters, fewer than 32.*openssl rand"):
        read_token("IMAGEN_TEST_TOKEN", None)
    monkeypatch.setenv("IMAGEN_TEST_TOKEN", "x" * 32)
    assert read_token("IMAGEN_TEST_TOKEN", None) == "x" * 32


def test_the_ingress_compares_token_digests() -> None:
    digest = token_digest(ENV_TOKEN)
    assert len(digest) == 64 and ENV_TOKEN not in digest
    assert token_matches(ENV_TOKEN, digest)
    assert not token_matches(ENV_TOKEN + "x", digest) and not token_matches(None, digest)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "example.org"])
def test_an_exposed_host_without_auth_is_refused(host: str) -> None:
    cfg = ServeConfig(host=host)
    with pytest.raises(ConfigError, match=r"serve\.auth\.enabled=true.*allow_unauthenticated"):
        check_exposure(cfg)
    warning = check_exposure(ServeConfig(host=host, allow_unauthenticated=True))
    assert warning is not None and "WITHOUT auth" in warning
    assert check_exposure(ServeConfig(host=host, auth={"enabled": True})) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_auth(host: str) -> None:
    assert check_exposure(ServeConfig(host=host)) is None


def test_serve_command_refuses_an_exposed_host_before_starting_ray(
    cascade_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "-c", str(SERVE_YAML), "--cascade", str(cascade_dir)]
    assert main([*argv, "--set", "serve.host=0.0.0.0"]) == 2
    assert "serve.auth.enabled" in capsys.readouterr().err


def test_build_application_sets_bounded_queues(cascade_dir: Path) -> None:
    dep = ServeConfig().stage_defaults.model_copy(update={"max_queued_requests": 7})
    opts = deployment_options(dep, retry_after_s=3.0)
    assert opts["max_queued_requests"] == 7
    assert opts["backpressure_config"] == {"status_code": 503, "retry_after_s": 3.0}
    app = build_app(
        {
            "config": str(SERVE_YAML),
            "cascade": str(cascade_dir),
            "set": ["serve.max_queued_requests=5"],
        }
    )
    ingress = app._bound_deployment  # the ingress deployment, bound
    assert ingress._deployment_config.max_queued_requests == 5


def test_auth_on_without_a_token_fails_before_deploying(
    cascade_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGEN_RAY_TOKEN", raising=False)
    with pytest.raises(ValueError, match="no token was found"):
        build_app(
            {
                "config": str(SERVE_YAML),
                "cascade": str(cascade_dir),
                "set": ["serve.auth.enabled=true"],
            }
        )


def test_request_schema() -> None:
    req = GenerateRequest.model_validate({"prompts": "one", "stages": {"base": {"steps": 3}}})
    assert req.prompt_list() == ["one"] and req.seed is None
    for bad in (
        {"prompts": "a", "extra": 1},
        {"prompts": "a", "seed": 2**32},
        {"prompts": "a", "stages": {"base": {"guidance_scale": -1}}},
        {"prompts": "a", "format": "bmp"},
        {},
    ):
        with pytest.raises(ValueError):
            GenerateRequest.model_validate(bad)


def test_stage_settings_are_sampling_config_made_optional() -> None:
    """Every SamplingConfig field, with its type, range and description, and default None."""
    ours = StageSettings.model_json_schema()["properties"]
    theirs = SamplingConfig.model_json_schema()["properties"]
    assert list(ours) == list(theirs)
    for name, spec in theirs.items():
        allowed, none = ours[name]["anyOf"]
        assert none == {"type": "null"} and ours[name]["default"] is None
        assert ours[name]["description"].startswith(spec["description"])
        expected = {k: v for k, v in spec.items() if k not in ("default", "description", "title")}
        assert allowed == expected, name
    assert StageSettings().model_dump(exclude_none=True) == {}

    class Wider(SamplingConfig):
        churn: float = Field(0.0, ge=0.0, le=2.0, description="a new sampling field")

    derived = optional_fields(Wider, "Derived")
    assert derived.model_validate({"churn": 1.5}).model_dump()["churn"] == 1.5
    for bad in ({"churn": 3.0}, {"chrun": 1.0}):
        with pytest.raises(ValueError):
            derived.model_validate(bad)


def test_page_ships_with_the_package() -> None:
    from importlib import resources

    page = resources.files("imagen_ray.serve").joinpath("page.html").read_text()
    assert (
        "__ROOT_PATH__" in page
        and 'id="generate"' in page
        and "http" not in page.split("<script>")[1].replace("http.", "")
    )  # no CDN or external URL in the page's script


def test_every_returned_seed_is_a_valid_seed_again() -> None:
    from imagen_ray.cascade.plan import SEED_MAX, PlanError, prompt_seeds

    assert prompt_seeds(2, SEED_MAX - 1) == [SEED_MAX - 1, SEED_MAX]
    with pytest.raises(PlanError, match=f"seed of at most {SEED_MAX - 1}") as e:
        prompt_seeds(2, SEED_MAX)
    assert e.value.field == "seed"
    assert all(s <= SEED_MAX for _ in range(50) for s in prompt_seeds(256, None))


def test_text_that_is_not_valid_unicode_is_named_without_echoing_it() -> None:
    from imagen_ray.serve.problems import unicode_problem

    msg = unicode_problem("prompts[1]", "red \ud800 circle")
    assert msg is not None and "prompts[1]" in msg and "U+D800 at character 4" in msg
    msg.encode("utf-8")  # the answer itself encodes
    assert unicode_problem("prompts[0]", "a red circle 🙂") is None


def test_openai_images_request_maps_size_to_the_last_stage_with_that_size() -> None:
    from imagen_ray.serve.openai_images import ImagesRequest, to_generate_request
    from imagen_ray.serve.problems import RequestProblem

    stages = [("base", 32), ("sr64", 64)]
    req = ImagesRequest(prompt="a red circle", n=2, size="32x32", seed=5, steps=3)
    gen = to_generate_request(req, stages)
    assert gen.prompt_list() == ["a red circle"] * 2 and gen.until == "base"
    assert gen.seed == 5 and gen.stages["base"].steps == 3 and set(gen.stages) == {"base"}
    assert to_generate_request(ImagesRequest(prompt="a"), stages).until == "sr64"
    with pytest.raises(RequestProblem, match=r"'1024x1024'.*\['32x32', '64x64'\]") as e:
        to_generate_request(ImagesRequest(prompt="a", size="1024x1024"), stages)
    assert e.value.status == 400
    with pytest.raises(RequestProblem, match="b64_json"):
        to_generate_request(ImagesRequest(prompt="a", response_format="url"), stages)
