"""Shards from folders and tables: exact skip accounting, the tar layout, atomic re-runs."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from imagen_ray.cli.data import add_data_commands as register
from imagen_ray.data import shards
from imagen_ray.data.shards import sanitize_key, write_folder_shards, write_table_shards
from imagen_ray.data.writer import (
    SHARD_FORMAT,
    ShardSample,
    SkippedItem,
    read_summary,
    write_shards,
)


def image_bytes(w: int, h: int, fmt: str, seed: int = 0) -> bytes:
    """A w x h noise image encoded as fmt (PNG, JPEG, BMP, WEBP)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def put(root: Path, rel: str, data: bytes | str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        p.write_text(data, encoding="utf-8")
    else:
        p.write_bytes(data)


def read_tars(out: Path) -> dict[str, dict[str, bytes]]:
    """{key: {ext: bytes}} over every shard in summary order; asserts entries are contiguous."""
    samples: dict[str, dict[str, bytes]] = {}
    for name in read_summary(out)["shards"]:
        with tarfile.open(out / name) as tar:
            last = None
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if key != last:
                    assert key not in samples, f"entries of {key} are not contiguous"
                    samples[key] = {}
                    last = key
                f = tar.extractfile(m)
                assert f is not None
                samples[key][ext] = f.read()
    return samples


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("shard-*"))}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Good images (png, jpg, bmp, nested) plus one of every kind of bad item."""
    root = tmp_path / "images"
    put(root, "a.png", image_bytes(20, 18, "PNG", 1))
    put(root, "a.txt", "  a noisy square  \n")
    put(root, "nested/deep/b.jpg", image_bytes(24, 16, "JPEG", 2))
    put(root, "nested/deep/b.txt", "a photo of noise")
    put(root, "c.bmp", image_bytes(12, 12, "BMP", 3))  # re-encoded to png
    put(root, "c.txt", "a bitmap")
    put(root, "corrupt.png", np.random.default_rng(4).bytes(300))
    put(root, "corrupt.txt", "random bytes")
    full = image_bytes(64, 64, "PNG", 5)
    put(root, "trunc.png", full[: len(full) // 2])
    put(root, "trunc.txt", "half a png")
    full = image_bytes(64, 64, "JPEG", 5)  # verify() passes, load() fails
    put(root, "trunc2.jpg", full[: len(full) // 2])
    put(root, "trunc2.txt", "half a jpeg")
    put(root, "nocap.png", image_bytes(16, 16, "PNG", 6))
    put(root, "emptycap.png", image_bytes(16, 16, "PNG", 7))
    put(root, "emptycap.txt", "  \n\t")
    put(root, "tiny.png", image_bytes(6, 30, "PNG", 8))
    put(root, "tiny.txt", "too small")
    put(root, "x.jpg", image_bytes(16, 16, "JPEG", 9))
    put(root, "x.png", image_bytes(16, 16, "PNG", 10))  # same key as x.jpg: skipped
    put(root, "x.txt", "two files share this caption")
    put(root, "orphan.txt", "a caption without an image")
    put(root, ".hidden/z.png", b"ignored")
    return root


EXPECTED_SKIPS = {
    "corrupt.png": "corrupt_image",
    "trunc.png": "corrupt_image",
    "trunc2.jpg": "corrupt_image",
    "nocap.png": "missing_caption",
    "emptycap.png": "empty_caption",
    "tiny.png": "too_small",
    "x.png": "duplicate_key",
    "orphan.txt": "missing_image",
}


def test_folder_skips_are_counted_exactly_and_good_samples_round_trip(
    folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    summary = write_folder_shards(folder, out, samples_per_shard=3, min_size=8, progress=False)
    data = read_summary(out)
    assert data == json.loads((out / "summary.json").read_text())
    assert data["format"] == SHARD_FORMAT and data["version"] == 1
    assert data["samples"] == summary.samples == 4
    assert data["skipped"] == {
        "corrupt_image": 3,
        "duplicate_key": 1,
        "empty_caption": 1,
        "missing_caption": 1,
        "missing_image": 1,
        "too_small": 1,
    }
    listed = {it["source"]: it["reason"] for it in data["skipped_items"]}
    assert listed == EXPECTED_SKIPS
    assert all(it["detail"] for it in data["skipped_items"])
    assert data["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    assert data["shard_samples"] == [3, 1]
    assert sorted(p.name for p in out.iterdir()) == [*data["shards"], "summary.json"]

    got = read_tars(out)
    assert list(got) == ["a", "c", "nested_deep_b", "x"]  # sorted walk order
    assert {k: sorted(v) for k, v in got.items()} == {
        "a": ["json", "png", "txt"],
        "c": ["json", "png", "txt"],
        "nested_deep_b": ["jpg", "json", "txt"],
        "x": ["jpg", "json", "txt"],
    }
    assert got["a"]["png"] == (folder / "a.png").read_bytes()  # original bytes kept
    assert got["x"]["jpg"] == (folder / "x.jpg").read_bytes()  # the first of the duplicates
    assert got["a"]["txt"].decode() == "a noisy square"
    assert json.loads(got["nested_deep_b"]["json"]) == {
        "width": 24,
        "height": 16,
        "source": "nested/deep/b.jpg",
    }
    c = Image.open(io.BytesIO(got["c"]["png"]))
    assert c.format == "PNG" and c.size == (12, 12)
    bmp = np.asarray(Image.open(folder / "c.bmp").convert("RGB"))
    assert np.array_equal(np.asarray(c.convert("RGB")), bmp)  # lossless re-encode


def test_webdataset_reads_the_shards_back(folder: Path, tmp_path: Path) -> None:
    import webdataset as wds

    out = tmp_path / "out"
    write_folder_shards(folder, out, samples_per_shard=2, progress=False)
    urls = [str(out / n) for n in read_summary(out)["shards"]]
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert [r["__key__"] for r in rows] == ["a", "c", "nested_deep_b", "tiny", "x"]
    assert rows[2]["jpg"].size == (24, 16) and rows[2]["txt"] == "a photo of noise"
    assert rows[3]["json"]["source"] == "tiny.png"  # min_size 0: kept


def test_same_input_gives_byte_identical_shards_and_rerun_replaces(
    folder: Path, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_folder_shards(folder, a, samples_per_shard=2, progress=False)
    write_folder_shards(folder, b, samples_per_shard=2, progress=False)
    assert digests(a) == digests(b) and len(digests(a)) == 3
    before = digests(a)
    write_folder_shards(folder, a, samples_per_shard=2, progress=False)
    assert digests(a) == before
    assert not [p for p in a.iterdir() if p.name.startswith(".tmp-")]

    write_folder_shards(folder, a, samples_per_shard=4, progress=False)  # fewer shards
    assert sorted(digests(a)) == ["shard-000000.tar", "shard-000001.tar"]
    assert read_summary(a)["shards"] == ["shard-000000.tar", "shard-000001.tar"]
    assert list(read_tars(a)) == ["a", "c", "nested_deep_b", "tiny", "x"]


def test_failure_mid_run_keeps_the_previous_output(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write_folder_shards(folder, out, samples_per_shard=4, progress=False)
    before = digests(out)
    summary_before = (out / "summary.json").read_bytes()

    real = shards.prepare_image
    calls = {"n": 0}

    def flaky(data: bytes) -> tuple[bytes, str, int, int]:
        calls["n"] += 1
        if calls["n"] > 4:  # after shard-000000 (1 sample per shard) is complete
            raise RuntimeError("disk on fire")
        return real(data)

    monkeypatch.setattr(shards, "prepare_image", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_folder_shards(folder, out, samples_per_shard=1, progress=False)
    assert calls["n"] == 5
    assert digests(out) == before
    assert (out / "summary.json").read_bytes() == summary_before
    assert sorted(p.name for p in out.iterdir()) == [*sorted(before), "summary.json"]


def test_write_shards_directly_with_zero_samples_removes_old_shards(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sample = ShardSample("k", image_bytes(8, 8, "PNG"), "png", "cap", 8, 8, "s")
    write_shards([sample], out, samples_per_shard=1, progress=False)
    assert (out / "shard-000000.tar").exists()
    (out / "shard-000007.tar").write_bytes(b"stale")
    (out / "notes.tar").write_bytes(b"not ours")
    s = write_shards([SkippedItem("s", "missing_image", "gone")], out, progress=False)
    assert s.samples == 0 and s.shards == ()
    assert sorted(p.name for p in out.iterdir()) == ["notes.tar", "summary.json"]
    assert read_summary(out)["skipped"] == {"missing_image": 1}
    with pytest.raises(ValueError, match="samples_per_shard"):
        write_shards([], out, samples_per_shard=0)


def test_skipped_items_list_is_capped(tmp_path: Path) -> None:
    items = [SkippedItem(f"s{i}", "empty_caption") for i in range(1003)]
    s = write_shards(items, tmp_path / "out", progress=False)
    data = read_summary(tmp_path / "out")
    assert len(data["skipped_items"]) == 1000 and data["skipped_items_omitted"] == 3
    assert data["skipped"] == {"empty_caption": 1003} and s.skipped_total == 1003


def test_sanitize_key() -> None:
    assert sanitize_key("a/b/cat") == "a_b_cat"
    assert sanitize_key("my cat (1).v2") == "my_cat_1_v2"
    long = sanitize_key("d/" * 60 + "x")
    assert len(long) <= 80 and long != sanitize_key("d/" * 61 + "x")
    assert all(c.isalnum() or c in "_-" for c in sanitize_key("../é?*"))


# ---------------------------------------------------------------------------- tables


@pytest.fixture()
def table_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """Rows over images in tmp_path/imgs (relative) and one absolute path."""
    put(tmp_path, "imgs/p.png", image_bytes(20, 20, "PNG", 11))
    put(tmp_path, "imgs/q.jpg", image_bytes(30, 20, "JPEG", 12))
    put(tmp_path, "imgs/bad.png", b"not an image")
    put(tmp_path, "abs/r.webp", image_bytes(10, 10, "WEBP", 13))
    return [
        {"image": "imgs/p.png", "caption": "a p", "score": 0.5, "tag": "x"},
        {"image": "imgs/q.jpg", "caption": " a q ", "score": 1.5, "tag": "y"},
        {"image": "imgs/missing.png", "caption": "gone", "score": 2.0, "tag": "z"},
        {"image": "imgs/bad.png", "caption": "bad", "score": 3.0, "tag": "w"},
        {"image": "imgs/p.png", "caption": "", "score": 4.0, "tag": "v"},
        {"image": str(tmp_path / "abs/r.webp"), "caption": "an r", "score": 5.0, "tag": "u"},
    ]


def write_table(path: Path, rows: list[dict[str, Any]]) -> None:
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        df.to_parquet(path, index=False)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_table_keeps_metadata_and_counts_skips(
    tmp_path: Path, table_rows: list[dict[str, Any]], suffix: str
) -> None:
    table = tmp_path / f"captions{suffix}"
    write_table(table, table_rows)
    out = tmp_path / "out"
    s = write_table_shards(table, out, progress=False)
    assert s.samples == 3
    assert s.skipped == {"corrupt_image": 1, "empty_caption": 1, "missing_image": 1}
    assert [(it.source, it.reason) for it in s.skipped_items] == [
        ("imgs/missing.png", "missing_image"),
        ("imgs/bad.png", "corrupt_image"),
        ("imgs/p.png", "empty_caption"),
    ]
    got = read_tars(out)
    r_key = sanitize_key(str(tmp_path / "abs/r"))
    assert list(got) == ["imgs_p", "imgs_q", r_key]
    assert "webp" in got[r_key]
    q = json.loads(got["imgs_q"]["json"])
    score = "1.5" if suffix == ".csv" else 1.5  # CSV has no types: values stay strings
    assert q == {"width": 30, "height": 20, "source": "imgs/q.jpg", "score": score, "tag": "y"}
    assert got["imgs_q"]["txt"] == b"a q"


def test_table_id_column_gives_keys_and_bad_columns_fail_clearly(tmp_path: Path) -> None:
    put(tmp_path, "p.png", image_bytes(9, 9, "PNG"))
    rows = [
        {"id": "cap-1", "path": "p.png", "text": "first caption", "extra": {"a": [1, 2]}},
        {"id": "cap-2", "path": "p.png", "text": "second caption of the same image"},
    ]
    table = tmp_path / "t.jsonl"
    write_table(table, rows)
    s = write_table_shards(
        table, tmp_path / "out", image_column="path", caption_column="text", progress=False
    )
    got = read_tars(tmp_path / "out")
    assert s.samples == 2 and list(got) == ["cap-1", "cap-2"]
    assert json.loads(got["cap-1"]["json"])["extra"] == {"a": [1, 2]}
    assert json.loads(got["cap-2"]["json"])["source"] == "cap-2"
    with pytest.raises(ValueError, match=r"no image column 'image'.*'path'"):
        write_table_shards(table, tmp_path / "out2", progress=False)
    with pytest.raises(ValueError, match="unknown extension"):
        write_table_shards(tmp_path / "p.png", tmp_path / "out2", progress=False)
    with pytest.raises(FileNotFoundError):
        write_table_shards(tmp_path / "nope.csv", tmp_path / "out2", progress=False)


# ---------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    register(sub)
    args = p.parse_args(argv)
    return int(args.func(args))


def test_cli_shards_from_folder_and_table(
    folder: Path, tmp_path: Path, table_rows: list[dict[str, Any]], capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli"
    rc = run_cli(["shards", "--from-folder", str(folder), "--out", str(out), "--min-size", "8"])
    line = capsys.readouterr().out.strip()
    assert rc == 0 and "\n" not in line
    assert "wrote 4 samples in 1 shard(s)" in line and "corrupt_image 3" in line
    assert str(out / "summary.json") in line
    assert read_summary(out)["samples"] == 4

    table = tmp_path / "t.csv"
    write_table(table, table_rows)
    rc = run_cli(["shards", "--from-table", str(table), "--out", str(out), "--no-progress"])
    assert rc == 0 and "wrote 3 samples" in capsys.readouterr().out
    assert read_summary(out)["source"] == f"table {table}"

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_cli(["shards", "--from-folder", str(tmp_path / "nope"), "--out", str(out)])
    with pytest.raises(SystemExit):  # exactly one source is required
        run_cli(["shards", "--out", str(out)])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(["shards", "--from-folder", str(empty), "--out", str(tmp_path / "e")]) == 1
