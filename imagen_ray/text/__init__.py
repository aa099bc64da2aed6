"""Frozen pretrained text encoders (transformers lives here, never in the math packages)."""

from imagen_ray.text.encoder import (
    FrozenTextEncoder,
    TextEncoderNotFound,
    TextEncoding,
    check_dtype,
    embedding_dim,
    resolve_model_name,
    text_dim,
)
from imagen_ray.text.tiny import build_tiny_t5

__all__ = [
    "FrozenTextEncoder",
    "TextEncoderNotFound",
    "TextEncoding",
    "build_tiny_t5",
    "check_dtype",
    "embedding_dim",
    "resolve_model_name",
    "text_dim",
]
