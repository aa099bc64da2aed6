"""The Ray Data pipeline: tolerant reader, decode/filter/resize, encoder pool, precompute.

Unit tests call the functions directly; the rest run the real pipeline on a 4-CPU local Ray
over tiny shards (16 px base stage, 16 -> 8 SR stage, MiniLM with 8 tokens).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from imagen_ray.config import DataConfig, RunConfig, StageConfig, TextEncoderConfig
from imagen_ray.data.decode import decode_filter_resize
from imagen_ray.data.encoding import check_encoding
from imagen_ray.data.pipeline import TextEncoderActor, build_dataset, collate, iter_training_batches
from imagen_ray.data.precompute import encode_shards
from imagen_ray.data.reader import (
    ShardFormatError,
    _rows_to_table,
    expand_shards,
    iter_tar_samples,
)

ray = pytest.importorskip("ray")

TEXT = TextEncoderConfig(max_length=8)


def run_cfg(
    shards: Path | str, *, size: int = 16, lowres: int | None = None, **data: Any
) -> RunConfig:
    """A run config over ``shards`` with a 16 px stage (8 px input for SR)."""
    return RunConfig.model_validate(
        {
            "text": TEXT.model_dump(),
            "stage": {"name": "sr" if lowres else "base", "size": size, "lowres_size": lowres},
            "data": {"shards": str(shards), "batch_size": 4, **data},
        }
    )


class FakeStats:
    """Stands in for the PipelineStats actor handle: ``stats.add.remote(counts)``."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.add = self
        self.calls = 0

    def remote(self, counts: dict[str, int]) -> None:
        self.calls += 1
        for k, v in counts.items():
            self.counts[k] = self.counts.get(k, 0) + v


def wait_for_counts(stats: Any, total: int, timeout: float = 15.0) -> dict[str, int]:
    """Counts from the stats actor once they add up to ``total`` (adds are fire-and-forget)."""
    deadline = time.monotonic() + timeout
    while True:
        counts: dict[str, int] = ray.get(stats.get.remote())
        if sum(counts.values()) >= total or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def tar_bytes(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --------------------------------------------------------------------------- reader (no Ray)


def test_reader_truncated_mid_entry_keeps_earlier_samples(tmp_path, shard_tools):
    (path,) = shard_tools["write_shard_dir"](tmp_path, [shard_tools["good_samples"](8)])
    shard_tools["truncate_in_sample"](path, 5)
    got = []
    with open(path, "rb") as f, pytest.raises(ShardFormatError) as err:
        for sample in iter_tar_samples(f, str(path)):
            got.append(sample["__key__"])
    assert err.value.reason == "truncated_tar"
    assert got == [f"s{i:04d}" for i in range(5)]


def test_reader_truncated_at_header_boundary_is_detected(tmp_path, shard_tools):
    # The standard library stops silently here; the reader must still report it.
    (path,) = shard_tools["write_shard_dir"](tmp_path, [shard_tools["good_samples"](6)])
    with tarfile.open(path) as tar:
        start = next(m.offset for m in tar.getmembers() if m.name.startswith("s0004."))
    path.write_bytes(path.read_bytes()[:start])
    got = []
    with open(path, "rb") as f, pytest.raises(ShardFormatError) as err:
        for sample in iter_tar_samples(f, str(path)):
            got.append(sample["__key__"])
    assert err.value.reason == "truncated_tar"
    # s0003 may be complete but cannot be known to be: it is dropped with the error.
    assert got == ["s0000", "s0001", "s0002"]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (tar_bytes([("a.png", b"1"), ("b.png", b"2"), ("a.txt", b"3")]), "bad_tar"),
        (tar_bytes([("a.png", b"1"), ("a.png", b"2")]), "bad_tar"),
        (b"this is not a tar file at all" * 40, "bad_tar"),
        (b"", "bad_tar"),
    ],
    ids=["non_contiguous", "duplicate", "garbage", "empty"],
)
def test_reader_bad_tars(raw, reason):
    with pytest.raises(ShardFormatError) as err:
        list(iter_tar_samples(io.BytesIO(raw), "mem.tar"))
    assert err.value.reason == reason


def test_reader_complete_tar_groups_entries_as_raw_bytes():
    raw = tar_bytes([("a.png", b"P"), ("a.txt", b"cap"), ("d/b.text.npz", b"N"), ("noext", b"")])
    samples = list(iter_tar_samples(io.BytesIO(raw), "mem.tar"))
    assert samples == [
        {"__key__": "a", "png": b"P", "txt": b"cap"},
        {"__key__": "d/b", "text.npz": b"N"},
    ]


def test_expand_shards(tmp_path, good_dir):
    tars = sorted(str(p) for p in good_dir.glob("*.tar"))
    assert expand_shards(str(good_dir)) == tars
    assert expand_shards(str(good_dir / "shard-*.tar")) == tars
    assert expand_shards(str(good_dir / "shard-{000000..000001}.tar")) == tars[:2]
    assert expand_shards([tars[2], tars[0]]) == [tars[2], tars[0]]
    assert expand_shards("s3://bucket/data/shard-000000.tar") == [
        "s3://bucket/data/shard-000000.tar"
    ]
    with pytest.raises(FileNotFoundError, match=r"no \*\.tar"):
        expand_shards(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_shards(str(tmp_path / "x-*.tar"))
    with pytest.raises(ValueError, match="no shards"):
        expand_shards("")


# --------------------------------------------------------------------------- decode (no Ray)


def decode(samples: list[dict[str, Any]], cfg: RunConfig, **kw: Any) -> tuple[dict, FakeStats]:
    stats = FakeStats()
    out = decode_filter_resize(
        _rows_to_table(samples),
        data_cfg=cfg.data.model_dump(),
        stage_cfg=cfg.stage.model_dump(),
        stats=stats,
        **kw,
    )
    assert isinstance(out, dict)
    return out, stats


def test_filters_drop_and_count_exactly(shard_tools):
    mk = shard_tools["make_sample"]
    samples = [
        mk("ok1", 30, 20),
        mk("ok2", 16, 32, fmt="jpg"),
        mk("small", 12, 30),  # short side 12 < 16
        mk("wide", 50, 20),  # aspect 2.5 > 2
        mk("short", caption="ab"),  # 2 chars < 3
        mk("long", caption="x" * 41),  # 41 > 40
        mk("padded", caption="  ab   "),  # stripped: 2 chars
        mk("nocap", caption=None),
        mk("noimg", with_image=False),
        mk("corrupt", image=b"\x89PNG\r\n\x1a\n garbage"),
        {"__url__": "x.tar", "__error__": "truncated_tar"},
    ]
    cfg = run_cfg("unused", min_size=16, max_aspect=2.0, caption_min_chars=3, caption_max_chars=40)
    out, stats = decode(samples, cfg)
    assert list(out["__key__"]) == ["ok1", "ok2"]
    assert stats.counts == {
        "ok": 2,
        "too_small": 1,
        "bad_aspect": 1,
        "caption_length": 3,
        "no_caption": 1,
        "no_image": 1,
        "decode_error": 1,
        "truncated_tar": 1,
    }
    assert stats.calls == 1
    assert out["image"].shape == (2, 16, 16, 3) and out["image"].dtype == np.uint8
    assert list(out["caption"]) == [s["txt"].decode().strip() for s in samples[:2]]


def test_decode_solid_colour_and_sr_lowres(shard_tools):
    mk = shard_tools["make_sample"]
    out, _ = decode(
        [mk("a", 40, 24, colour="blue"), mk("b", 17, 33, colour="green", fmt="jpg")],
        run_cfg("u", lowres=8),
    )
    assert out["image"].shape == (2, 16, 16, 3) and out["lowres"].shape == (2, 8, 8, 3)
    assert out["lowres"].dtype == np.uint8
    np.testing.assert_allclose(out["image"][0].reshape(-1, 3).mean(0), (40, 60, 220), atol=2)
    np.testing.assert_allclose(
        out["lowres"][1].reshape(-1, 3).mean(0), out["image"][1].reshape(-1, 3).mean(0), atol=3
    )


def test_random_crop_is_reproducible_per_key_and_seed(shard_tools):
    mk = shard_tools["make_sample"]
    samples = [mk(f"g{i}", 40, 16, gradient=True) for i in range(6)]
    a, _ = decode(samples, run_cfg("u", crop="random", seed=0))
    b, _ = decode(samples, run_cfg("u", crop="random", seed=0))
    c, _ = decode(samples, run_cfg("u", crop="random", seed=1))
    centre, _ = decode(samples, run_cfg("u", crop="center"))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    # different keys, different crops; centre crops of identical images are identical
    assert len({img.tobytes() for img in a["image"]}) > 1
    assert len({img.tobytes() for img in centre["image"]}) == 1


def test_empty_output_keeps_schema(shard_tools):
    out = decode_filter_resize(
        _rows_to_table([shard_tools["make_sample"]("x", caption=None)]),
        data_cfg=DataConfig().model_dump(),
        stage_cfg=StageConfig(size=16).model_dump(),
    )
    assert out.num_rows == 0  # an Arrow table, not (0, ...) arrays Ray cannot type
    assert "image" in out.column_names and "Tensor" in str(out.schema.field("image").type)


def test_collate_converts_to_model_tensors():
    rng = np.random.default_rng(0)
    batch = {
        "image": np.stack([np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)]),
        "lowres": rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        "emb": rng.standard_normal((2, 8, 384)).astype(np.float16),
        "mask": np.ones((2, 8), bool),
        "__key__": np.array(["a", "b"], dtype=object),
    }
    out = collate(batch)
    assert set(out) == {"image", "lowres", "emb", "mask"}
    assert out["image"].shape == (2, 3, 16, 16) and out["image"].dtype == torch.float32
    assert out["image"][0].eq(-1).all() and out["image"][1].eq(1).all()
    assert out["lowres"].shape == (2, 3, 8, 8)
    torch.testing.assert_close(
        out["lowres"][0, 1], torch.from_numpy(batch["lowres"][0, :, :, 1]) / 127.5 - 1
    )
    assert out["emb"].dtype == torch.float32 and out["mask"].dtype == torch.bool


def test_shuffle_buffer_smaller_than_batch_is_an_error():
    with pytest.raises(ValueError, match="shuffle_buffer"):
        iter_training_batches(object(), DataConfig(batch_size=8, shuffle_buffer=4))


def test_check_encoding_names_the_difference():
    info = {"text": TEXT.model_dump(), "dim": 384}
    check_encoding(info, TEXT, "d")  # same config: fine
    check_encoding(info, TEXT.model_copy(update={"dim": 384}), "d")  # dim given explicitly
    with pytest.raises(ValueError, match=r"text.max_length: shards 8 vs run 16"):
        check_encoding(info, TEXT.model_copy(update={"max_length": 16}), "d")


def test_encoder_actor_caches_repeated_captions():
    captions = ["a red circle", "two blue squares", "a red circle", "a green cross"]
    row = 8 * (384 * 2 + 1)  # bytes of one cached row: emb (8, 384) fp16 + mask (8,)
    plain = TextEncoderActor(TEXT.model_dump(), device="cpu", cache_bytes=0)
    cached = TextEncoderActor(TEXT.model_dump(), device="cpu", cache_bytes=2 * row + row // 2)
    want = plain({"caption": np.array(captions, dtype=object)})
    first = cached({"caption": np.array(captions, dtype=object)})
    assert cached.encoded == 3  # the repeated caption was encoded once
    np.testing.assert_allclose(first["emb"].astype(np.float32), want["emb"], atol=2e-3)
    np.testing.assert_array_equal(first["mask"], want["mask"])
    np.testing.assert_array_equal(first["emb"][0], first["emb"][2])
    # two rows fit in 2.5 rows' bytes: the oldest ("a red circle") was evicted
    assert list(cached.cache) == ["two blue squares", "a green cross"]
    assert cached.cached_bytes == 2 * row
    again = cached({"caption": np.array(["a green cross", "a red circle"], dtype=object)})
    assert cached.encoded == 4  # only the evicted caption ran through the encoder again
    np.testing.assert_allclose(again["emb"].astype(np.float32), want["emb"][[3, 0]], atol=2e-3)
    assert "caption" not in again and again["emb"].dtype == np.float16


# --------------------------------------------------------------------------- Ray


def collect(ds) -> dict[str, dict[str, Any]]:
    """All rows of a dataset with ``__key__`` kept, by key."""
    rows: dict[str, dict[str, Any]] = {}
    for batch in ds.iter_batches(batch_size=8, batch_format="numpy"):
        for i, key in enumerate(batch["__key__"]):
            rows[str(key)] = {k: v[i] for k, v in batch.items()}
    return rows


@pytest.fixture(scope="module")
def encoded(ray_cluster, good_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "encoded"
    summary = encode_shards(good_dir, out, TEXT, writers=2)
    return out, summary


@pytest.fixture(scope="module")
def onthefly(ray_cluster, good_dir):
    ds, stats = build_dataset(run_cfg(good_dir, precomputed=False), keep=("__key__", "caption"))
    batches = list(ds.iter_batches(batch_size=4, batch_format="numpy"))
    return batches, wait_for_counts(stats, 24)


@pytest.mark.slow
def test_base_stage_batches(onthefly):
    batches, counts = onthefly
    assert counts == {"ok": 24}
    assert set(batches[0]) == {"image", "emb", "mask", "__key__", "caption"}
    assert sum(len(b["__key__"]) for b in batches) == 24
    for b in batches:
        assert b["image"].dtype == np.uint8 and b["emb"].dtype == np.float16
        out = collate(b)
        n = len(b["__key__"])
        assert out["image"].shape == (n, 3, 16, 16)
        assert out["image"].min() >= -1 and out["image"].max() <= 1
        assert out["emb"].shape == (n, 8, 384) and out["emb"].dtype == torch.float32
        assert out["mask"].shape == (n, 8) and out["mask"].dtype == torch.bool


@pytest.mark.slow
def test_onthefly_embeddings_equal_the_frozen_encoder(onthefly):
    from imagen_ray.text.encoder import FrozenTextEncoder

    batches, _ = onthefly
    keys = [str(k) for b in batches for k in b["__key__"]]
    captions = [str(c) for b in batches for c in b["caption"]]
    emb = np.concatenate([b["emb"] for b in batches]).astype(np.float32)
    mask = np.concatenate([b["mask"] for b in batches])
    order = np.argsort(keys)
    ref = FrozenTextEncoder(TEXT).encode([captions[i] for i in order])
    np.testing.assert_allclose(emb[order], ref.emb.numpy(), atol=5e-3, rtol=5e-3)
    np.testing.assert_array_equal(mask[order], ref.mask.numpy())


@pytest.mark.slow
def test_precomputed_round_trip_equals_onthefly(encoded, onthefly):
    out, summary = encoded
    info = json.loads((out / "encoding.json").read_text())
    assert info["dim"] == 384 and info["text"] == TEXT.model_dump()
    assert summary["samples"] == 24 and summary["shard_samples"] == [8, 8, 8]
    assert summary["samples_with_embeddings"] == 24 and summary["skipped"] == {}
    ds, stats = build_dataset(run_cfg(out), keep=("__key__",))  # precomputed: null -> found
    rows = collect(ds)
    batches, _ = onthefly
    ref = {str(k): (b["emb"][i], b["mask"][i]) for b in batches for i, k in enumerate(b["__key__"])}
    assert set(rows) == set(ref)
    for key, row in rows.items():
        assert row["emb"].dtype == np.float16 and row["emb"].shape == (8, 384)
        np.testing.assert_allclose(
            row["emb"].astype(np.float32), ref[key][0].astype(np.float32), atol=5e-3
        )
        np.testing.assert_array_equal(row["mask"], ref[key][1])
    assert wait_for_counts(stats, 24) == {"ok": 24}


@pytest.mark.slow
def test_sr_stage_batches_from_precomputed(encoded):
    out, _ = encoded
    cfg = run_cfg(out, lowres=8)
    ds, _ = build_dataset(cfg)
    batches = list(iter_training_batches(ds, cfg.data))
    assert "decode_filter_resize" in ds.stats() and "TextEncoderActor" not in ds.stats()
    assert len(batches) == 6
    for b in batches:
        assert set(b) == {"image", "lowres", "emb", "mask"}
        assert b["image"].shape == (4, 3, 16, 16) and b["lowres"].shape == (4, 3, 8, 8)
        assert b["lowres"].min() >= -1 and b["lowres"].max() <= 1
        assert b["emb"].shape == (4, 8, 384) and b["mask"].shape == (4, 8)


def _task_caps(ds) -> dict[str, int | None]:
    """Most concurrent tasks per operator of the dataset's logical plan (None: uncapped)."""
    caps, op = {}, ds._logical_plan.dag
    while op is not None:
        caps[op.name] = getattr(op.compute, "size", None)
        op = op.input_dependencies[0] if op.input_dependencies else None
    return caps


@pytest.mark.slow
def test_task_caps_reach_read_and_decode_and_keep_every_row(encoded):
    out, _ = encoded
    free, _ = build_dataset(run_cfg(out), keep=("__key__",))
    capped, _ = build_dataset(run_cfg(out, read_tasks=1, map_tasks=2), keep=("__key__",))
    assert _task_caps(free) == {
        "MapBatches(decode_filter_resize)": None,
        "ReadEpochShards": None,
    }
    assert _task_caps(capped) == {
        "MapBatches(decode_filter_resize)": 2,
        "ReadEpochShards": 1,
    }
    a, b = collect(free), collect(capped)
    assert len(b) == 24 and set(a) == set(b)
    for key in a:
        np.testing.assert_array_equal(a[key]["image"], b[key]["image"])
        np.testing.assert_array_equal(a[key]["emb"], b[key]["emb"])
    with pytest.raises(ValueError, match="map_tasks"):
        run_cfg(out, map_tasks=0)


@pytest.mark.slow
def test_mismatched_or_missing_encoding_is_a_clear_error(encoded, good_dir):
    out, _ = encoded
    with pytest.raises(ValueError, match=r"different text encoder config.*max_length"):
        build_dataset(run_cfg(out).model_copy(update={"text": TextEncoderConfig(max_length=16)}))
    with pytest.raises(FileNotFoundError, match="imagen-ray data encode"):
        build_dataset(run_cfg(good_dir, precomputed=True))


@pytest.fixture(scope="module")
def messy_dir(encoded, shard_tools, tmp_path_factory):
    """Precomputed shards with every kind of bad sample, a truncated tar and a garbage tar."""
    enc_dir, _ = encoded
    samples = []
    for path in sorted(enc_dir.glob("*.tar")):
        with open(path, "rb") as f:
            samples += list(iter_tar_samples(f, str(path)))
    samples.sort(key=lambda s: s["__key__"])
    npz = samples[0]["text.npz"]
    mk = shard_tools["make_sample"]

    def with_npz(s: dict[str, Any]) -> dict[str, Any]:
        return {**s, "text.npz": npz}

    bad = [
        with_npz(mk("b_corrupt", image=b"\xff\xd8\xff not a jpeg", fmt="jpg")),
        with_npz(mk("b_nocap", caption=None)),
        with_npz(mk("b_noimg", with_image=False)),
        with_npz(mk("b_small", 10, 30)),
        with_npz(mk("b_wide", 60, 20)),
        with_npz(mk("b_short", caption="ab")),
        with_npz(mk("b_long", caption="y" * 50)),
        mk("b_noemb"),
    ]
    out = tmp_path_factory.mktemp("messy")
    paths = shard_tools["write_shard_dir"](out, [samples[:6] + bad, samples[6:14], samples[14:16]])
    shard_tools["truncate_in_sample"](paths[1], 5)  # samples[6:11] survive
    paths[2].write_bytes(b"garbage, not a tar" * 100)
    (out / "encoding.json").write_bytes((enc_dir / "encoding.json").read_bytes())
    good = [s["__key__"] for s in samples[:6] + samples[6:11]]
    return out, good


@pytest.mark.slow
def test_broken_shards_and_samples_are_counted_not_fatal(messy_dir):
    shards, good = messy_dir
    cfg = run_cfg(shards, min_size=16, max_aspect=2.0, caption_min_chars=3, caption_max_chars=40)
    ds, stats = build_dataset(cfg, keep=("__key__",))
    rows = collect(ds)
    assert sorted(rows) == sorted(good)
    counts = wait_for_counts(stats, len(good) + 10)
    assert counts == {
        "ok": 11,
        "decode_error": 1,
        "no_caption": 1,
        "no_image": 1,
        "too_small": 1,
        "bad_aspect": 1,
        "caption_length": 2,
        "no_embedding": 1,
        "truncated_tar": 1,
        "bad_tar": 1,
    }


@pytest.mark.slow
def test_encode_lists_broken_tars_and_writes_like_data_shards(messy_dir, tmp_path):
    from imagen_ray.data.writer import read_summary

    shards, _ = messy_dir
    out = tmp_path / "enc"
    summary = encode_shards(shards, out, TEXT, writers=2)
    assert summary == read_summary(out)  # the one shard-summary format
    # every complete sample is copied (14 of shard 0, 5 before the cut of shard 1), each
    # input shard into the output shard of its name (none for the garbage one); the one
    # without a caption gets none (its old text.npz is not copied); the broken tars are
    # listed by path
    tars = sorted(str(p.resolve()) for p in shards.glob("*.tar"))
    assert summary["samples"] == 19 and summary["shard_samples"] == [14, 5]
    assert summary["shards"] == [Path(t).name for t in tars[:2]]
    assert summary["samples_with_embeddings"] == 18
    assert summary["skipped"] == {"bad_tar": 1, "truncated_tar": 1}
    assert sorted(s["source"] for s in summary["skipped_items"]) == tars[1:]
    assert summary["text_encoding"] == "encoding.json"
    assert json.loads((out / "encoding.json").read_text())["num_samples"] == 18
    names = {p.name for p in out.iterdir()}
    assert names == {*summary["shards"], "encoding.json", "summary.json", ".encode-progress"}
    with pytest.raises(ValueError, match="another text config"):
        encode_shards(shards, out, TEXT.model_copy(update={"max_length": 4}))


def train_worker(shard: Any, data_cfg: DataConfig, seen: dict[str, Any]) -> None:
    """What a Ray Train worker does with ``get_dataset_shard("train")``."""
    seen.update(batches=0, rows=0, shapes=set(), in_range=True)
    for batch in iter_training_batches(shard, data_cfg):
        seen["batches"] += 1
        seen["rows"] += batch["image"].shape[0]
        seen["shapes"].add(tuple(tuple(v.shape) for v in batch.values()))
        seen["in_range"] &= bool(batch["image"].abs().max() <= 1)


@pytest.mark.slow
def test_streaming_split_feeds_train_like_workers(encoded):
    # Ray Train hands each worker one of `streaming_split(n)`; two threads stand in for them
    # (the splits must be consumed concurrently).
    out, _ = encoded
    cfg = run_cfg(out, shuffle_buffer=8)
    ds, _ = build_dataset(cfg)
    results: list[dict[str, Any]] = [{}, {}]
    threads = [
        threading.Thread(target=train_worker, args=(shard, cfg.data, seen))
        for shard, seen in zip(ds.streaming_split(2, equal=True), results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [r["rows"] for r in results] == [12, 12]
    assert [r["batches"] for r in results] == [3, 3]
    assert all(r["in_range"] for r in results)
    assert all(r["shapes"] == {((4, 3, 16, 16), (4, 8, 384), (4, 8))} for r in results)


# --------------------------------------------------------------------------- CLI


def data_parser() -> argparse.ArgumentParser:
    from imagen_ray.cli.data import add_data_commands as register

    parser = argparse.ArgumentParser(prog="imagen-ray data")
    register(parser.add_subparsers(dest="action", required=True))
    return parser


@pytest.mark.slow
def test_cli_preview_writes_grid_and_prints_counts(encoded, tmp_path, capsys):
    out, _ = encoded
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(json.dumps(run_cfg("", lowres=8).model_dump(mode="json")))
    args = data_parser().parse_args(
        [
            "preview",
            "-c",
            str(cfg_path),
            "--set",
            f"data.shards={out}",
            "--batches",
            "2",
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rows"] == 8 and report["batches"] == 2 and report["rows_per_s"] > 0
    assert report["counts"].get("ok", 0) >= 8
    from PIL import Image

    with Image.open(tmp_path / "p" / "grid.png") as im:
        assert im.height >= 8 * 64
    preview = json.loads((tmp_path / "p" / "preview.json").read_text())
    assert len(preview["keys"]) == 8 and all(k.startswith("s") for k in preview["keys"])


def test_cli_encode_rejects_bad_input(tmp_path, good_dir):
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text("text: {max_length: 8}\n")
    parser = data_parser()
    args = parser.parse_args(
        [
            "encode",
            "--shards",
            str(tmp_path / "nope"),
            "--out",
            str(tmp_path / "o"),
            "-c",
            str(cfg_path),
        ]
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        args.func(args)
    args = parser.parse_args(
        ["encode", "--shards", str(good_dir), "--out", str(tmp_path), "-c", str(cfg_path)]
    )
    with pytest.raises(ValueError, match="already exists"):
        args.func(args)
