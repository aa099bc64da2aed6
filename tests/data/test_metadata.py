"""data.caption_key and data.filters applied by the pipeline: captions from json, per-filter
counts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imagen_ray.config import DataConfig, StageConfig
from imagen_ray.data.decode import decode_filter_resize
from imagen_ray.data.reader import _rows_to_table


class Counts(dict):
    """Stands in for the PipelineStats actor handle: ``stats.add.remote(counts)``."""

    @property
    def add(self) -> Counts:
        return self

    def remote(self, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self[k] = self.get(k, 0) + v


def run(rows: list[dict[str, Any]], **data: Any) -> tuple[dict[str, Any], Counts]:
    counts = Counts()
    out = decode_filter_resize(
        _rows_to_table(rows),
        data_cfg=DataConfig(shards="x", **data).model_dump(),
        stage_cfg=StageConfig(size=8).model_dump(),
        stats=counts,
        columns=["__key__", "caption"],
    )
    assert isinstance(out, dict)
    return out, counts


def sample(key: str, meta: Any, *, txt: str | None = "a txt caption") -> dict[str, Any]:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    row: dict[str, Any] = {"__key__": key, "png": buf.getvalue()}
    if txt is not None:
        row["txt"] = txt.encode()
    if meta is not None:
        row["json"] = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return row


def test_filters_drop_and_count_per_filter():
    rows = [
        sample("keep", {"punsafe": 0.01, "aesthetic": 6.2, "status": "success"}),
        sample("unsafe", {"punsafe": 0.5, "aesthetic": 6.2, "status": "success"}),
        sample("ugly", {"punsafe": 0.01, "aesthetic": 4.0, "status": "success"}),
        sample("both", {"punsafe": 0.9, "aesthetic": 1.0, "status": "success"}),  # first wins
        sample("missing", {"aesthetic": 7.0, "status": "success"}),  # no punsafe: fails it
        sample("null", {"punsafe": None, "aesthetic": 7.0}),
        sample("text", {"punsafe": "0.01", "aesthetic": 7.0}),  # a string is not a number
        sample("failed", {"punsafe": 0.0, "aesthetic": 9.0, "status": "failed_to_download"}),
        sample("nojson", None),
        sample("badjson", b"{not json"),
        sample("array", [1, 2]),
    ]
    out, counts = run(rows, filters=("punsafe < 0.1", "aesthetic >= 5", "status == success"))
    assert list(out["__key__"]) == ["keep"]
    assert counts == {
        "ok": 1,
        "filter:punsafe<0.1": 5,  # unsafe, both, missing, null, text
        "filter:aesthetic>=5": 1,
        "filter:status==success": 1,
        "no_json": 1,
        "bad_json": 2,
    }


def test_no_filters_ignore_the_json_entry():
    _, counts = run([sample("a", None), sample("b", b"{broken")])
    assert counts == {"ok": 2}


def test_caption_from_a_json_field():
    rows = [
        sample("a", {"caption": "  from json  ", "meta": {"alt": "nested alt"}}),
        sample("b", {"caption": None}),
        sample("c", {"other": 1}),
        sample("d", {"caption": 42}),
    ]
    out, counts = run(rows, caption_key="json:caption")
    assert list(out["caption"]) == ["from json", "42"]  # stripped; numbers become text
    assert counts == {"ok": 2, "no_caption": 2}
    out, _ = run(rows[:1], caption_key="json:meta.alt")
    assert list(out["caption"]) == ["nested alt"]


def test_caption_from_another_entry():
    row = sample("a", None)
    row["caption"] = b"from the caption entry"
    out, counts = run([row, sample("b", None)], caption_key="caption")
    assert list(out["caption"]) == ["from the caption entry"]
    assert counts == {"ok": 1, "no_caption": 1}


def test_json_caption_key_refuses_shards_encoded_from_txt(tmp_path):
    from imagen_ray.config import RunConfig
    from imagen_ray.data.encoding import ENCODING_FILE, encoding_info
    from imagen_ray.data.pipeline import build_dataset

    (tmp_path / "shard-000000.tar").write_bytes(b"")
    cfg = RunConfig.model_validate(
        {"stage": {"size": 8}, "data": {"shards": str(tmp_path), "caption_key": "json:caption"}}
    )
    info = encoding_info(cfg.text, dim=384, num_samples=1)
    (tmp_path / ENCODING_FILE).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"caption_key='json:caption'.*precomputed=false"):
        build_dataset(cfg, stats=object())


def test_img2dataset_layout_without_the_tool(tmp_path):
    """Its folder layout (tar + parquet + stats json) and LAION-style json, read as-is."""
    import io
    import tarfile

    from imagen_ray.data.reader import expand_shards, iter_tar_samples

    rows = [
        sample("000000000", {"punsafe": 0.01, "status": "success", "caption": "c0"}, txt="c0"),
        sample("000000001", {"punsafe": 0.50, "status": "success", "caption": "c1"}, txt="c1"),
        sample("000000002", {"punsafe": 0.02, "status": "success", "caption": "c2"}, txt="c2"),
    ]
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for row in rows:
            for ext in ("jpg", "txt", "json"):
                data = row["png" if ext == "jpg" else ext]  # img2dataset names every image jpg
                info = tarfile.TarInfo(f"{row['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "00000.parquet").write_bytes(b"PAR1")
    (tmp_path / "00000_stats.json").write_text("{}")
    paths = expand_shards(str(tmp_path))
    assert paths == [str((tmp_path / "00000.tar").resolve())]
    with open(paths[0], "rb") as f:
        read = list(iter_tar_samples(f, paths[0]))
    assert [sorted(r) for r in read] == [["__key__", "jpg", "json", "txt"]] * 3
    out, counts = run(read, filters=("punsafe < 0.1",))
    assert list(out["caption"]) == ["c0", "c2"]
    assert counts == {"ok": 2, "filter:punsafe<0.1": 1}
