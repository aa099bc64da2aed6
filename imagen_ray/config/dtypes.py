"""Inference precision: the dtype vocabulary the configs validate against, and its resolution
on a device. Torch-free, so that configs and the Serve ingress import it without torch.

The weights of a stage are cast with :meth:`imagen_ray.cascade.Stage.to_inference`; only the
U-Net's forward runs in the low dtype. What stays in float32 and why is said where it
happens: ``Stage.sample`` (the sampler state x_t, guidance, thresholding).
"""

from __future__ import annotations

from typing import Literal, get_args

InferenceDType = Literal["auto", "float32", "bfloat16", "float16"]
INFERENCE_DTYPES: tuple[str, ...] = get_args(InferenceDType)


def resolve_dtype(dtype: str, device_type: str) -> str:
    """The dtype a stage runs in on a device: ``auto`` is bfloat16 on CUDA, float32 elsewhere.

    Args:
        dtype: one of :data:`INFERENCE_DTYPES`.
        device_type: ``torch.device(...).type`` (``"cuda"``, ``"cpu"``, ...).

    Returns:
        ``"float32"``, ``"bfloat16"`` or ``"float16"``.

    Raises:
        ValueError: an unknown dtype, or float16 off CUDA (CPU kernels for it are missing or
            slow; bfloat16 works on CPU).
    """
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(INFERENCE_DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    if dtype == "float16" and device_type != "cuda":
        raise ValueError(
            f"dtype float16 needs a CUDA device, got {device_type!r}; use bfloat16 or float32"
        )
    return dtype
