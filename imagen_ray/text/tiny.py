"""A tiny randomly initialised T5 encoder with a locally built tokenizer.

It exercises the exact code path of a real T5 (``transformers`` ``from_pretrained`` on a
directory) without any download: tests and offline smoke runs save it to a temp directory
and point ``text.name`` at it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

DEFAULT_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "with",
    "and",
    "two",
    "three",
    "four",
    "small",
    "large",
    "big",
    "tiny",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "gray",
    "circle",
    "square",
    "triangle",
    "star",
    "left",
    "right",
    "top",
    "bottom",
    "center",
    "background",
    "picture",
    "photo",
    "image",
]


def build_tiny_t5(
    out_dir: str | Path,
    *,
    words: Iterable[str] = DEFAULT_WORDS,
    d_model: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
) -> Path:
    """Save a random ``T5EncoderModel`` and a word-level T5-style tokenizer to ``out_dir``.

    Args:
        out_dir: directory to write (created).
        words: the vocabulary (lower-cased; anything else maps to ``<unk>``).
        d_model: embedding width of the encoder.
        num_layers, num_heads: encoder depth and heads.
        seed: weight initialisation seed.

    Returns:
        The directory, loadable by ``FrozenTextEncoder(TextEncoderConfig(name=str(dir)))``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "</s>", "<unk>"]  # T5's ids 0, 1, 2
    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in words:
        vocab.setdefault(w.lower(), len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 appends </s> to every sequence.
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(out)

    config = T5Config(
        vocab_size=len(vocab),
        d_model=d_model,
        d_kv=d_model // num_heads,
        d_ff=2 * d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        pad_token_id=0,
        eos_token_id=1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(config)
    model.save_pretrained(out)
    return out
