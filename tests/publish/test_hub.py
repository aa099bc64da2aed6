"""publish.from_pretrained (a directory, a repo id in the Hugging Face cache, offline) and
publish.push_to_hub (against a recording stand-in for HfApi): no network."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagen_ray.cascade import Cascade, CheckpointError
from imagen_ray.publish import from_pretrained, push_to_hub
from tests.cascade.test_cascade import FakeEncoder, cascade_config, perturb

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    c = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=2)
    perturb(c)
    return c


def hub_cache(tmp_path: Path, repo_id: str, cascade_dir: Path) -> Path:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    cache = tmp_path / "hf-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(cascade_dir, repo / "snapshots" / REV)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV)
    return cache


def same_images(a: Cascade, b: Cascade) -> None:
    np.testing.assert_array_equal(
        a.generate(["a red circle"], seed=1).uint8(), b.generate(["a red circle"], seed=1).uint8()
    )


def test_from_pretrained_a_local_directory(cascade: Cascade, tmp_path: Path) -> None:
    cascade.save(tmp_path / "c")
    c = from_pretrained(tmp_path / "c", encoder=FakeEncoder())
    assert c.dtypes == {"base": "float32", "sr": "float32"}  # auto on CPU
    same_images(c, cascade)
    one = from_pretrained(str(tmp_path / "c" / "base"), encoder=FakeEncoder())
    assert [s.cfg.name for s in one.stage_list] == ["base"]


def test_from_pretrained_a_repo_id_from_the_offline_cache(
    cascade: Cascade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    cache = hub_cache(tmp_path, "org/tiny-imagen", cascade.save(tmp_path / "c"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    c = from_pretrained("org/tiny-imagen", encoder=FakeEncoder(), dtype="bfloat16")
    assert c.dtypes == {"base": "bfloat16", "sr": "bfloat16"}
    assert from_pretrained(
        "org/tiny-imagen", encoder=FakeEncoder(), revision=REV, cache_dir=cache
    ).dtypes == {"base": "float32", "sr": "float32"}
    with pytest.raises(CheckpointError, match=r"'org/missing' is not in the local Hugging Face"):
        from_pretrained("org/missing")
    with pytest.raises(CheckpointError, match=r"neither a directory nor a Hugging Face repo"):
        from_pretrained(str(tmp_path / "nope" / "deeper" / "x"))


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records the repo and the files it would upload."""

    def __init__(self) -> None:
        self.created: list[tuple[str, bool]] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, repo_id: str, *, repo_type: str, private: bool, exist_ok: bool) -> str:
        assert repo_type == "model" and exist_ok
        self.created.append((repo_id, private))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id: str, repo_type: str, folder_path: str, **kw: Any) -> str:
        root = Path(folder_path)
        self.files = {
            str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()
        }
        self.message = kw["commit_message"]
        return f"https://huggingface.co/{repo_id}/commit/1"


def test_push_to_hub_uploads_weights_configs_and_a_model_card(
    cascade: Cascade, tmp_path: Path
) -> None:
    api = RecordingApi()
    got = push_to_hub(cascade, "org/tiny-imagen", private=True, api=api)
    assert got.endswith("/commit/1") and api.created == [("org/tiny-imagen", True)]
    assert set(api.files) == {
        "README.md",
        "cascade.json",
        "base/config.json",
        "base/model.safetensors",
        "sr/config.json",
        "sr/model.safetensors",
    }
    card = api.files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: imagen-ray") and "# org/tiny-imagen" in card
    assert "| `sr` | 16→32 SR | 32 px |" in card
    assert api.message == "Upload imagen-ray cascade base + sr"
    # what was uploaded loads back as the same cascade
    for name, data in api.files.items():
        (tmp_path / "up" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "up" / name).write_bytes(data)
    same_images(from_pretrained(tmp_path / "up", encoder=FakeEncoder()), cascade)


def test_cascade_push_command_uploads_through_hfapi(
    cascade: Cascade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import huggingface_hub

    from imagen_ray.cli import main

    api = RecordingApi()
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    cascade.save(tmp_path / "c")
    assert main(["cascade", "push", "--cascade", str(tmp_path / "c"), "--repo", "org/x"]) == 0
    assert api.created == [("org/x", False)]
    assert {"README.md", "base/model.safetensors", "sr/model.safetensors"} <= set(api.files)
    assert "pushed" in capsys.readouterr().out
