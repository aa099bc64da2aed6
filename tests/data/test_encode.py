"""``imagen-ray data encode`` at scale: one output shard per input shard written by parallel
Ray tasks, resuming after an interruption, and float16 refused for T5 encoders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from imagen_ray.config import TextEncoderConfig
from imagen_ray.data.encoding import EMBEDDING_ENTRY, load_embedding
from imagen_ray.data.precompute import PROGRESS_DIR, check_output, encode_shards
from imagen_ray.data.reader import expand_shards, iter_tar_samples
from imagen_ray.text import FrozenTextEncoder, build_tiny_t5, check_dtype

ray = pytest.importorskip("ray")

TEXT = TextEncoderConfig(max_length=8)


def shard_content(path: Path) -> list[dict[str, Any]]:
    """A shard's samples with ``text.npz`` decoded (zip timestamps make its bytes vary)."""
    with open(path, "rb") as f:
        samples = list(iter_tar_samples(f, str(path)))
    for s in samples:
        if EMBEDDING_ENTRY in s:
            s[EMBEDDING_ENTRY] = load_embedding(s[EMBEDDING_ENTRY], None)
    return samples


def assert_same_shards(a: Path, b: Path, names: list[str]) -> None:
    for name in names:
        sa, sb = shard_content(a / name), shard_content(b / name)
        assert [s["__key__"] for s in sa] == [s["__key__"] for s in sb]
        for x, y in zip(sa, sb, strict=True):
            assert x.keys() == y.keys()
            for k in x:
                if k == EMBEDDING_ENTRY:
                    np.testing.assert_allclose(
                        x[k][0].astype(np.float32), y[k][0].astype(np.float32), atol=2e-3
                    )
                    np.testing.assert_array_equal(x[k][1], y[k][1])
                else:
                    assert x[k] == y[k], (name, x["__key__"], k)


# --------------------------------------------------------------------------- no Ray


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("t5"), d_model=16)


def test_float16_t5_is_refused_with_the_reason(tiny_t5, good_dir, tmp_path):
    fp16 = TextEncoderConfig(name=str(tiny_t5), dtype="float16", max_length=8)
    with pytest.raises(ValueError, match=r"overflow in float16.*bfloat16"):
        check_dtype(fp16)
    with pytest.raises(ValueError, match="overflow in float16"):
        FrozenTextEncoder(fp16)  # before any weights load, on any device
    with pytest.raises(ValueError, match="overflow in float16"):
        encode_shards(good_dir, tmp_path / "o", fp16)  # before Ray is touched
    assert not (tmp_path / "o").exists()
    check_dtype(fp16.model_copy(update={"dtype": "bfloat16"}))  # fine
    check_dtype(TextEncoderConfig(dtype="float16"))  # MiniLM (BERT) is not refused


def test_check_output_rules(good_dir, tmp_path):
    paths = expand_shards(str(good_dir))
    with pytest.raises(ValueError, match="input directory"):
        check_output(good_dir, paths, TEXT, False)
    with pytest.raises(ValueError, match="share the name"):
        check_output(tmp_path / "o", [*paths, str(tmp_path / Path(paths[0]).name)], TEXT, False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not a `data encode` output"):
        check_output(tmp_path, paths, TEXT, False)
    assert check_output(tmp_path / "new", paths, TEXT, False) is False


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_parallel_equals_serial_and_a_rerun_resumes(ray_cluster, good_dir, tmp_path):
    serial = encode_shards(good_dir, tmp_path / "serial", TEXT, writers=1)
    par_dir = tmp_path / "parallel"
    par = encode_shards(good_dir, par_dir, TEXT, writers=3)
    names = [Path(p).name for p in expand_shards(str(good_dir))]
    assert serial["shards"] == par["shards"] == names  # named by input shard
    assert serial["encode"] == {"written": 3, "kept": 0, "writers": 1}
    assert_same_shards(tmp_path / "serial", par_dir, names)
    same = ("shards", "shard_samples", "samples", "skipped", "samples_with_embeddings")
    assert {k: serial[k] for k in same} == {k: par[k] for k in same}

    # An interrupted run: shard 1's task never finished (no tar, no record), shard 2's was
    # cut between the rename and its record, a task left its temp file; no summary yet.
    mtime = {n: (par_dir / n).stat().st_mtime_ns for n in names}
    (par_dir / names[1]).unlink()
    for n in names[1:]:
        (par_dir / PROGRESS_DIR / f"{n}.json").unlink()
    (par_dir / f".{names[2]}.tmp-deadbeef").write_bytes(b"half a tar")
    (par_dir / "summary.json").unlink()
    (par_dir / "encoding.json").unlink()
    time.sleep(0.05)

    again = encode_shards(good_dir, par_dir, TEXT, writers=3)
    assert again["encode"] == {"written": 2, "kept": 1, "writers": 3}
    assert (par_dir / names[0]).stat().st_mtime_ns == mtime[names[0]]  # kept, untouched
    assert (par_dir / names[2]).stat().st_mtime_ns > mtime[names[2]]  # re-encoded
    assert {k: again[k] for k in same} == {k: serial[k] for k in same}  # summary complete
    assert_same_shards(tmp_path / "serial", par_dir, names)
    assert not [p for p in par_dir.rglob("*") if ".tmp-" in p.name]
    assert (par_dir / "encoding.json").is_file()

    # finished: a rerun keeps everything; another text config is refused
    assert encode_shards(good_dir, par_dir, TEXT)["encode"]["kept"] == 3
    with pytest.raises(ValueError, match="another text config"):
        encode_shards(good_dir, par_dir, TEXT.model_copy(update={"max_length": 4}))


@pytest.mark.slow
def test_output_given_as_a_uri_goes_through_the_pyarrow_filesystem(ray_cluster, good_dir, tmp_path):
    """``--out`` as a URI takes the same path an ``s3://`` or ``gs://`` one does (a pyarrow
    filesystem from the URI); ``file://`` keeps it on this machine."""
    local = encode_shards(good_dir, tmp_path / "local", TEXT, writers=2)
    via_uri = encode_shards(good_dir, f"file://{tmp_path / 'uri'}", TEXT, writers=2)
    assert via_uri["shards"] == local["shards"]
    assert via_uri["samples_with_embeddings"] == local["samples_with_embeddings"]
    assert_same_shards(tmp_path / "local", tmp_path / "uri", local["shards"])
    assert (tmp_path / "uri" / "encoding.json").is_file()


def test_encode_takes_the_caption_at_caption_key_and_drops_unread_samples():
    """``data encode`` embeds the caption ``data.caption_key`` names (here a json field),
    and a sample whose member was over the size cap is never passed on."""
    from imagen_ray.data.precompute import _samples_with_embeddings

    samples = [
        {"__key__": "a", "txt": b"ignored", "json": json.dumps({"alt": " a red circle "}).encode()},
        {"__key__": "b", "json": b"{}"},  # no caption at json:alt: copied without embedding
    ]
    seen: list[list[str]] = []

    def encode(captions):
        seen.append(list(captions))
        n = len(captions)
        return np.zeros((n, 4, 2), np.float16), np.ones((n, 4), bool)

    out = list(_samples_with_embeddings(iter(samples), encode, 8, "json:alt"))
    assert seen == [["a red circle"]]
    assert [EMBEDDING_ENTRY in s for s in out] == [True, False]


def test_training_refuses_embeddings_of_another_caption_key(tmp_path):
    """Shards encoded from ``json:alt`` captions cannot train a run that reads ``txt``."""
    from imagen_ray.config import RunConfig
    from imagen_ray.data.encoding import ENCODING_FILE, encoding_info
    from imagen_ray.data.pipeline import build_dataset

    (tmp_path / "shard-000000.tar").write_bytes(b"")
    cfg = RunConfig.model_validate(
        {"text": {"dim": 8}, "data": {"shards": str(tmp_path), "precomputed": True}}
    )
    info = encoding_info(cfg.text, 8, 1, "json:alt")
    (tmp_path / ENCODING_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"'json:alt' captions.*caption_key"):
        build_dataset(cfg)
