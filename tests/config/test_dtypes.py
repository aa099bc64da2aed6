"""The inference dtype vocabulary (imagen_ray.config.dtypes) and its resolution on a device."""

from __future__ import annotations

from typing import get_args

import pytest

from imagen_ray.config.dtypes import INFERENCE_DTYPES, InferenceDType, resolve_dtype


def test_the_vocabulary_is_the_literal() -> None:
    assert get_args(InferenceDType) == INFERENCE_DTYPES
    assert set(INFERENCE_DTYPES) == {"auto", "float32", "bfloat16", "float16"}


@pytest.mark.parametrize(
    ("dtype", "device", "expected"),
    [
        ("auto", "cuda", "bfloat16"),
        ("auto", "cpu", "float32"),
        ("float16", "cuda", "float16"),
        ("bfloat16", "cpu", "bfloat16"),
        ("float32", "cuda", "float32"),
    ],
)
def test_resolve_dtype(dtype: str, device: str, expected: str) -> None:
    assert resolve_dtype(dtype, device) == expected


def test_resolve_dtype_refuses_unknown_names_and_fp16_off_cuda() -> None:
    with pytest.raises(ValueError, match="'fp8' is not one of"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="float16 needs a CUDA device, got 'cpu'"):
        resolve_dtype("float16", "cpu")
