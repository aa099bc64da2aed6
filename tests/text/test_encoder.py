"""Tests for imagen_ray.text: the frozen MiniLM / T5 encoders, offline failures, text_dim."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from imagen_ray.config import TextEncoderConfig
from imagen_ray.text import (
    FrozenTextEncoder,
    TextEncoderNotFound,
    TextEncoding,
    build_tiny_t5,
    resolve_model_name,
    text_dim,
)
from imagen_ray.text import encoder as encoder_mod

MAX_LEN = 16
T5_D_MODEL = 24
LONG_PROMPT = " ".join(["a red circle on a blue square"] * 10)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def minilm() -> FrozenTextEncoder:
    torch.manual_seed(0)
    return FrozenTextEncoder(TextEncoderConfig(name="minilm", max_length=MAX_LEN))


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"), d_model=T5_D_MODEL)


@pytest.fixture(scope="module")
def t5(t5_dir: Path) -> FrozenTextEncoder:
    torch.manual_seed(0)
    return FrozenTextEncoder(TextEncoderConfig(name=str(t5_dir), max_length=8))


def _assert_prefix_mask(mask: torch.Tensor) -> None:
    """Real tokens first, then padding: each row is True...True False...False."""
    n = mask.sum(dim=1, keepdim=True)
    pos = torch.arange(mask.shape[1])[None]
    assert torch.equal(mask, pos < n)


# --------------------------------------------------------------------------- MiniLM
# MiniLM is slow on 2 CPU cores: encode a few batches once per module and check them apart.

PROMPTS = ["a red circle", "a blue circle", "", "two blue squares on the left", LONG_PROMPT]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _encode_logged(
    fn: Callable[[list[str]], TextEncoding], prompts: list[str]
) -> tuple[TextEncoding, list[logging.LogRecord]]:
    logger = logging.getLogger(encoder_mod.__name__)
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        return fn(prompts), handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="module")
def batch(minilm: FrozenTextEncoder) -> tuple[TextEncoding, list[logging.LogRecord]]:
    return _encode_logged(minilm.encode, PROMPTS)


@pytest.fixture(scope="module")
def singles(minilm: FrozenTextEncoder) -> list[tuple[TextEncoding, list[logging.LogRecord]]]:
    """The first prompt alone, twice: through encode() and through __call__."""
    return [_encode_logged(fn, PROMPTS[:1]) for fn in (minilm.encode, minilm)]


def test_minilm_shapes_and_mask(minilm: FrozenTextEncoder, batch: tuple) -> None:
    enc, _ = batch
    assert enc.emb.shape == (len(PROMPTS), MAX_LEN, 384)
    assert enc.emb.dtype == torch.float32
    assert enc.mask.shape == (len(PROMPTS), MAX_LEN)
    assert enc.mask.dtype == torch.bool
    # [CLS] a red circle [SEP]
    n_tokens = len(minilm.tokenizer(PROMPTS[0])["input_ids"])
    assert n_tokens == 5
    assert int(enc.mask[0].sum()) == n_tokens
    _assert_prefix_mask(enc.mask)
    assert torch.isfinite(enc.emb).all()


def test_minilm_emb_zero_where_masked(batch: tuple) -> None:
    enc, _ = batch
    assert (~enc.mask).any()
    assert torch.all(enc.emb[~enc.mask] == 0)
    # ...and not zero on real tokens.
    assert (enc.emb[enc.mask].abs().sum(dim=-1) > 0).all()


def test_minilm_dim(minilm: FrozenTextEncoder) -> None:
    assert minilm.dim == 384


def test_minilm_frozen_and_eval(minilm: FrozenTextEncoder) -> None:
    params = list(minilm.model.parameters())
    assert params
    assert not any(p.requires_grad for p in params)
    assert not minilm.model.training
    assert not any(m.training for m in minilm.model.modules())


def test_minilm_deterministic(singles: list) -> None:
    (a, _), (b, _) = singles
    assert torch.equal(a.emb, b.emb)
    assert torch.equal(a.mask, b.mask)


def test_minilm_batch_independent(batch: tuple, singles: list) -> None:
    enc, _ = batch
    (alone, _), _ = singles
    assert alone.emb.shape == (1, MAX_LEN, 384)
    torch.testing.assert_close(enc.emb[0], alone.emb[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(enc.mask[0], alone.mask[0])


def test_minilm_different_prompts_differ(batch: tuple) -> None:
    enc, _ = batch
    assert torch.equal(enc.mask[0], enc.mask[1])  # same length: only the values differ
    assert (enc.emb[0] - enc.emb[1]).abs().max() > 1e-3


def test_minilm_empty_prompt(batch: tuple) -> None:
    enc, _ = batch
    assert int(enc.mask[2].sum()) == 2  # [CLS] [SEP]
    assert not enc.truncated[2]
    assert torch.isfinite(enc.emb[2]).all()
    assert enc.emb[2, :2].abs().sum() > 0
    assert torch.all(enc.emb[2, 2:] == 0)


def test_minilm_long_prompt_truncated_and_logged(batch: tuple) -> None:
    enc, records = batch
    assert enc.truncated == [False, False, False, False, True]
    assert bool(enc.mask[4].all())
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    text = records[0].getMessage()
    assert f"max_length={MAX_LEN}" in text
    assert f"1 of {len(PROMPTS)}" in text
    assert LONG_PROMPT[:40] in text


def test_minilm_truncation_warning_reaches_caplog(
    minilm: FrozenTextEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        enc = minilm.encode([LONG_PROMPT])
    assert enc.truncated == [True]
    warned = [r for r in caplog.records if r.name == encoder_mod.__name__]
    assert len(warned) == 1
    assert warned[0].levelno == logging.WARNING
    assert f"max_length={MAX_LEN}" in warned[0].getMessage()


def test_minilm_no_warning_when_nothing_truncated(singles: list) -> None:
    for enc, records in singles:
        assert enc.truncated == [False]
        assert records == []


def test_bare_string_is_rejected(minilm: FrozenTextEncoder) -> None:
    with pytest.raises(TypeError, match="list of prompts"):
        minilm.encode("a red circle")
    with pytest.raises(TypeError, match="list of prompts"):
        minilm("a red circle")


def test_encoding_to_dtype(batch: tuple) -> None:
    enc, _ = batch
    moved = enc.to("cpu", torch.bfloat16)
    assert moved.emb.dtype == torch.bfloat16
    assert moved.mask.dtype == torch.bool
    assert moved.truncated == enc.truncated
    torch.testing.assert_close(moved.emb.float(), enc.emb, atol=0.05, rtol=0.01)
    same = enc.to("cpu")
    assert same.emb.dtype == torch.float32
    assert torch.equal(same.emb, enc.emb)


# --------------------------------------------------------------------------- tiny T5


def test_t5_model_class_and_dim(t5: FrozenTextEncoder) -> None:
    from transformers import T5EncoderModel

    assert isinstance(t5.model, T5EncoderModel)
    assert t5.dim == T5_D_MODEL == t5.model.config.d_model
    enc = t5.encode(["a red circle"])
    assert enc.emb.shape == (1, 8, T5_D_MODEL)
    assert not any(p.requires_grad for p in t5.model.parameters())
    assert not t5.model.training


def test_t5_mask_ends_at_eos(t5: FrozenTextEncoder) -> None:
    prompts = ["a red circle", "", "two big blue squares"]
    enc = t5.encode(prompts)
    _assert_prefix_mask(enc.mask)
    # T5 style: the words, then </s>, no BOS token.
    assert enc.mask.sum(dim=1).tolist() == [4, 1, 5]
    ids = t5.tokenizer(prompts, padding="max_length", max_length=8)["input_ids"]
    eos = t5.tokenizer.eos_token_id
    for row, n in zip(ids, enc.mask.sum(dim=1).tolist(), strict=True):
        assert row[n - 1] == eos
        assert eos not in row[: n - 1]


def test_t5_truncation_keeps_eos(t5: FrozenTextEncoder) -> None:
    prompt = "a red blue green yellow big small tiny circle"
    enc = t5.encode([prompt])
    assert enc.truncated == [True]
    assert bool(enc.mask.all())
    ids = t5.tokenizer([prompt], truncation=True, max_length=8)["input_ids"][0]
    assert len(ids) == 8
    assert ids[-1] == t5.tokenizer.eos_token_id


def test_t5_weights_are_loaded_not_reinitialised(t5_dir: Path) -> None:
    cfg = TextEncoderConfig(name=str(t5_dir), max_length=8)
    prompts = ["a red circle", "a tiny green star at the top"]
    torch.manual_seed(1)
    a = FrozenTextEncoder(cfg).encode(prompts)
    torch.manual_seed(2)  # a re-randomised model would now differ
    b = FrozenTextEncoder(cfg).encode(prompts)
    assert torch.equal(a.emb, b.emb)
    assert a.emb.abs().max() > 0


def test_tiny_t5_build_is_seeded(tmp_path: Path) -> None:
    d1 = build_tiny_t5(tmp_path / "one", d_model=16, seed=3)
    d2 = build_tiny_t5(tmp_path / "two", d_model=16, seed=3)
    d3 = build_tiny_t5(tmp_path / "three", d_model=16, seed=4)
    prompts = ["a red circle"]

    def emb(d: Path) -> torch.Tensor:
        return FrozenTextEncoder(TextEncoderConfig(name=str(d), max_length=6)).encode(prompts).emb

    e1 = emb(d1)
    assert e1.shape == (1, 6, 16)
    assert torch.equal(e1, emb(d2))
    assert not torch.allclose(e1, emb(d3))


def test_t5_embeddings_can_feed_a_training_graph(t5: FrozenTextEncoder) -> None:
    """encode() output must be usable under autograd (e.g. as U-Net input during training)."""
    enc = t5.encode(["a red circle", "a blue square"])
    proj = torch.nn.Linear(T5_D_MODEL, 4)
    loss = proj(enc.emb).square().mean()
    loss.backward()
    assert proj.weight.grad is not None
    assert proj.weight.grad.abs().sum() > 0
    assert not enc.emb.requires_grad


# --------------------------------------------------------------------------- missing models


@pytest.mark.parametrize("kind", ["hub", "local"])
def test_missing_model_fails_fast(kind: str, tmp_path: Path) -> None:
    name = "google/t5-v1_1-xxl" if kind == "hub" else str(tmp_path / "nope")
    start = time.monotonic()
    with pytest.raises(TextEncoderNotFound) as info:
        FrozenTextEncoder(TextEncoderConfig(name=name))
    assert time.monotonic() - start < 10.0
    msg = str(info.value)
    assert name in msg
    assert "text.name" in msg
    assert "minilm" in msg  # the offline alternative
    if kind == "hub":
        assert "HF_HUB_OFFLINE" in msg
    else:
        assert "does not exist" in msg


def test_empty_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(TextEncoderNotFound, match=r"text\.name"):
        FrozenTextEncoder(TextEncoderConfig(name=str(tmp_path)))


def test_minilm_aliases_resolve_to_packaged_weights() -> None:
    path = resolve_model_name("minilm")
    assert (Path(path) / "config.json").is_file()
    for alias in ("MiniLM", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_model_name(alias) == path
    assert resolve_model_name("google/t5-v1_1-xxl") == "google/t5-v1_1-xxl"


def test_text_encoder_not_found_is_a_file_not_found_error() -> None:
    assert issubclass(TextEncoderNotFound, FileNotFoundError)


def test_float16_on_cpu_rejected() -> None:
    with pytest.raises(ValueError, match="float16"):
        FrozenTextEncoder(TextEncoderConfig(name="minilm", dtype="float16"), device="cpu")


# --------------------------------------------------------------------------- text_dim


def test_text_dim_uses_configured_dim_without_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(name: str) -> None:
        raise AssertionError(f"text_dim loaded {name!r}")

    monkeypatch.setattr(encoder_mod, "load_auto_config", boom)
    assert text_dim(TextEncoderConfig(name="google/t5-v1_1-xxl", dim=4096)) == 4096
    assert text_dim(TextEncoderConfig(name="/does/not/exist", dim=7)) == 7


def test_text_dim_reads_model_config(t5_dir: Path) -> None:
    assert text_dim(TextEncoderConfig(name="minilm")) == 384
    assert text_dim(TextEncoderConfig(name=str(t5_dir))) == T5_D_MODEL


def test_text_dim_missing_model() -> None:
    with pytest.raises(TextEncoderNotFound, match=r"text\.name"):
        text_dim(TextEncoderConfig(name="google/t5-v1_1-xxl"))


def test_dim_mismatch_rejected(t5_dir: Path) -> None:
    with pytest.raises(ValueError, match=f"set text.dim={T5_D_MODEL}"):
        FrozenTextEncoder(TextEncoderConfig(name=str(t5_dir), dim=T5_D_MODEL + 1))
    # The matching value is accepted.
    enc = FrozenTextEncoder(TextEncoderConfig(name=str(t5_dir), dim=T5_D_MODEL))
    assert enc.dim == T5_D_MODEL


@pytest.mark.parametrize("which", ["minilm", "t5"])
def test_hidden_layer_picks_a_hidden_state(which: str, t5_dir: Path, minilm) -> None:
    name = "minilm" if which == "minilm" else str(t5_dir)
    length = MAX_LEN if which == "minilm" else 8
    last = (
        minilm
        if which == "minilm"
        else FrozenTextEncoder(TextEncoderConfig(name=name, max_length=8))
    )
    prompts = ["a red circle on the left", "a red circle on the right"]
    ref = last.encode(prompts)
    out = last.model(
        **last.tokenizer(prompts, padding="max_length", max_length=length, return_tensors="pt"),
        output_hidden_states=True,
    )
    layers = len(out.hidden_states) - 1
    for layer in (0, 1, -2):
        cfg = TextEncoderConfig(name=name, max_length=length, hidden_layer=layer)
        enc = FrozenTextEncoder(cfg).encode(prompts)
        want = out.hidden_states[layer] * enc.mask[..., None]
        torch.testing.assert_close(enc.emb, want.float())
        torch.testing.assert_close(enc.mask, ref.mask)  # same tokens, another layer
    same = FrozenTextEncoder(TextEncoderConfig(name=name, max_length=length, hidden_layer=layers))
    torch.testing.assert_close(same.encode(prompts).emb, ref.emb)  # the last one, counted
    with pytest.raises(ValueError, match=rf"hidden_layer={layers + 1} but .* has {layers} layers"):
        FrozenTextEncoder(TextEncoderConfig(name=name, hidden_layer=layers + 1))
