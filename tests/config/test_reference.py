"""Tests of imagen_ray.config.reference: the generated key tables of run and serve files."""

from __future__ import annotations

from imagen_ray.config import RunConfig, ServeFileConfig, config_reference_markdown
from imagen_ray.config.reference import config_reference


def _keys(rows: list[str]) -> list[str]:
    return [r.split("`")[1] for r in rows]


def test_reference_has_a_run_table_and_a_serve_table() -> None:
    text = config_reference_markdown()
    run_part, serve_part = text.split("## Serve file", 1)
    assert run_part.startswith("## Run file")
    assert "| `stage.sampling.guidance_scale` |" in run_part
    assert "| `train.lr` |" in run_part
    assert "`serve." not in run_part  # serve settings are not part of a run file
    assert "| `serve.port` | int | `8000` |" in serve_part
    assert "| `serve.stage_defaults.max_batch_size` |" in serve_part
    assert "|  |" not in text  # every key has a meaning
    assert text.count("| key | type | default | meaning |") == 2
    assert text.endswith("|\n")


def test_reference_covers_every_leaf_key() -> None:
    run_keys = _keys(config_reference(RunConfig))
    serve_keys = _keys(config_reference(ServeFileConfig))
    assert len(run_keys) == len(set(run_keys)) and len(serve_keys) == len(set(serve_keys))
    for key in ("version", "text.name", "stage.unet.levels", "stage.unet.levels[i].mult"):
        assert key in run_keys
    assert "data.shards" in run_keys and "wandb.mode" in run_keys
    assert {"version", "serve.auth.enabled", "serve.stages", "serve.stages[i].name"} <= set(
        serve_keys
    )
    text = config_reference_markdown()
    for key in run_keys + serve_keys:
        assert f"| `{key}` |" in text


def test_literal_types_list_their_options() -> None:
    rows = {k: r for k, r in zip(_keys(config_reference()), config_reference(), strict=True)}
    assert "`ddpm` \\| `ddim` \\| `dpmpp_2m`" in rows["stage.sampling.sampler"]
    assert "`cosine` \\| `linear`" in rows["stage.diffusion.schedule"]
