"""SR crop training (``data.train_crop``): the image crop and its low-res crop are aligned."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from imagen_ray.config import DataConfig, RunConfig, StageConfig, load_run_config
from imagen_ray.data.decode import _rng_for, aligned_crop, decode_filter_resize
from imagen_ray.data.epochs import EPOCH_COLUMN
from imagen_ray.data.reader import _rows_to_table
from imagen_ray.train.batches import WorkerContext, random_batches
from tests.train.conftest import ROOT

CROPS = ROOT / "configs/tiny/sr32_crops.yaml"


def test_aligned_crop_cuts_the_lowres_image_at_offset_over_factor() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    lowres = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # factor 4
    offsets = set()
    for seed in range(40):
        crop, small = aligned_crop(image, lowres, 12, np.random.default_rng(seed))
        assert crop.shape == (12, 12, 3) and small.shape == (3, 3, 3)
        # locate the crop in the image: its offset is a multiple of the factor
        (y, x) = next(
            (y, x)
            for y in range(0, 21)
            for x in range(0, 21)
            if np.array_equal(image[y : y + 12, x : x + 12], crop)
        )
        assert y % 4 == 0 and x % 4 == 0
        np.testing.assert_array_equal(small, lowres[y // 4 : y // 4 + 3, x // 4 : x // 4 + 3])
        offsets.add((y, x))
    assert len(offsets) > 5  # offsets vary with the RNG, over both axes
    assert {y for y, _ in offsets} == {0, 4, 8, 12, 16, 20}
    with pytest.raises(ValueError, match="multiple of 32/8"):
        aligned_crop(image, lowres, 10, rng)
    with pytest.raises(ValueError, match="must be <= 32"):
        aligned_crop(image, lowres, 36, rng)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _decode(cfg: RunConfig, rows: list[dict[str, Any]], epoch: int = 0) -> dict[str, Any]:
    table = _rows_to_table(rows)
    table = table.append_column(EPOCH_COLUMN, pa.array([epoch] * len(rows), pa.int64()))
    out = decode_filter_resize(
        table, data_cfg=cfg.data.model_dump(), stage_cfg=cfg.stage.model_dump()
    )
    assert isinstance(out, dict)
    return out


def test_decode_crops_the_image_and_the_aligned_lowres_with_the_sample_rng() -> None:
    """The pipeline's crop pair equals the full-size pair cut at offset and offset / 2, with
    the offset drawn from the per-sample RNG of (data.seed, epoch, key)."""
    rng = np.random.default_rng(1)
    rows = [
        {
            "__key__": f"k{i}",
            "png": _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
            "txt": b"noise",
        }
        for i in range(6)
    ]
    crop_cfg = load_run_config(CROPS, ["data.seed=3"])
    full_cfg = load_run_config(CROPS, ["data.seed=3", "data.train_crop=null"])
    full, cut = _decode(full_cfg, rows), _decode(crop_cfg, rows)
    assert full["image"].shape == (6, 32, 32, 3) and full["lowres"].shape == (6, 16, 16, 3)
    assert cut["image"].shape == (6, 16, 16, 3) and cut["lowres"].shape == (6, 8, 8, 3)
    for i in range(6):
        expect_img, expect_low = aligned_crop(
            full["image"][i], full["lowres"][i], 16, _rng_for(3, f"k{i}", 0)
        )
        np.testing.assert_array_equal(cut["image"][i], expect_img)
        np.testing.assert_array_equal(cut["lowres"][i], expect_low)
    # a new epoch draws new offsets; the same epoch repeats them
    again = _decode(crop_cfg, rows)
    np.testing.assert_array_equal(again["image"], cut["image"])
    later = _decode(crop_cfg, rows, epoch=1)
    assert not np.array_equal(later["image"], cut["image"])


def test_in_memory_batches_are_crop_sized() -> None:
    cfg = load_run_config(CROPS, ["data.batch_size=2", "text.max_length=8"])
    batch = next(random_batches(WorkerContext(cfg=cfg, rank=0, world_size=1, text_dim=16)))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["lowres"].shape == (2, 3, 8, 8)


def test_stage_loss_and_sample_take_crops_and_full_size() -> None:
    from imagen_ray.cascade import Stage

    cfg = load_run_config(CROPS, ["stage.unet.channels=16", "stage.unet.head_dim=16"])
    stage = Stage(cfg.stage, text_dim=16)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1  # a 16 px crop of a 32 px stage
    emb, mask = torch.randn(2, 4, 16, generator=g), torch.ones(2, 4, dtype=torch.bool)
    assert stage.make_lowres(x0).shape == (2, 3, 8, 8)
    assert stage.loss(x0, emb, mask, stage.make_lowres(x0), generator=g).shape == (2,)
    assert stage.loss(x0, emb, mask, generator=g).shape == (2,)  # low-res derived from x0
    sampling = cfg.stage.sampling.model_copy(update={"steps": 1})
    low = torch.zeros(2, 3, 16, 16)
    assert stage.sample(emb, mask, lowres=low, sampling=sampling).shape == (2, 3, 32, 32)
    crop = stage.sample(emb, mask, lowres=low[..., :8, :8], sampling=sampling, size=16)
    assert crop.shape == (2, 3, 16, 16)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.train_crop=64"], r"data.train_crop=64 is larger than stage.size=32"),
        (["data.train_crop=14"], r"data.train_crop=14 must be a multiple of 4"),
        (
            ["stage.lowres_size=null"],
            r"stage 'sr32' is a base stage \(stage.lowres_size is null\); remove data.train_crop",
        ),
        (
            ["stage.unet.levels.2.self_attn=true"],
            r"stage.unet.levels\[2\].self_attn is on; set stage.unet.levels\[2\].self_attn=false",
        ),
        (["stage.unet.mid_attn=true"], r"stage.unet.mid_attn is on; set stage.unet.mid_attn=false"),
        (["stage.unet.pos_emb=true"], r"cannot train stage.unet.pos_emb"),
    ],
)
def test_crop_training_is_refused_with_the_keys_named(overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_run_config(CROPS, overrides)


def test_crop_must_divide_by_the_upsampling_factor() -> None:
    stage = StageConfig(
        name="sr",
        size=64,
        lowres_size=16,
        unet={"levels": [{"mult": 1, "res_blocks": 1}], "mid_attn": False},
    )
    with pytest.raises(ValueError, match=r"upsampling factor stage\.size / stage\.lowres_size = 4"):
        RunConfig(stage=stage, data=DataConfig(train_crop=18))
    assert RunConfig(stage=stage, data=DataConfig(train_crop=20)).data.train_crop == 20


def test_shipped_crop_configs_load() -> None:
    assert load_run_config(CROPS).data.train_crop == 16
    assert load_run_config(ROOT / "configs/small/sr256_crops.yaml").data.train_crop == 128
    paper = load_run_config(ROOT / "configs/paper/sr1024.yaml")
    assert paper.data.train_crop == 256 and paper.stage.size == 1024
