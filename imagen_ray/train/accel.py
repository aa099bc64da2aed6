"""What a training worker does differently on an accelerator: autocast, channels_last.

One object, resolved once per worker from the train config and the device Ray Train gives,
so the loop (and ``bench/gpu.py``) read the same decisions and the CPU tests can check them
for a ``cuda`` device without one.

Precision. DeepSpeed's ``bf16`` / ``fp16`` modes (``build_deepspeed_config``) cast the
module's weights to the low dtype and keep float32 master weights in the optimizer; they
do not autocast. :class:`imagen_ray.cascade.Stage`'s loss keeps the noise process in float32
(t, eps, ``x_t = alpha x0 + sigma eps``, the target and the MSE), so without autocast its
float32 ``x_t`` meets bf16 convolution weights and the U-Net refuses it ("Input type (float)
and bias type (c10::BFloat16) should be the same"). Autocast on top runs the matmuls and
convolutions in bf16 on the bf16 weights (no extra cast of them) while normalisation,
softmax and the loss run in float32, and the inputs stay float32: images are not rounded to
bf16's 8 mantissa bits before the noise is added. It is entered inside ``Stage.forward``
(``Stage.train_autocast``), not around the engine call: DeepSpeed 0.19's engine forward
turns a CUDA autocast it did not configure off (``deepspeed/runtime/torch_autocast.py``,
``autocast_if_enabled``). DeepSpeed's own ``torch_autocast`` mode (float32 weights: a
different scheme from the bf16 mode this code's memory accounting and tests are built on)
is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from imagen_ray.cascade import Stage
from imagen_ray.config import TrainConfig
from imagen_ray.config.run import Precision

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainDevicePaths:
    """The precision and memory layout of one worker's training step.

    Attributes:
        device_type: ``torch.device.type`` of the worker (``cuda``, ``cpu``).
        precision: ``train.resolved_precision`` (``fp32``, ``bf16``, ``fp16``).
        channels_last: NHWC activations (CUDA only: cuDNN's tensor-core convolutions prefer
            them; on the CPU they are slower for these small convolutions).
    """

    device_type: str
    precision: Precision
    channels_last: bool

    @classmethod
    def resolve(cls, train: TrainConfig, device_type: str) -> TrainDevicePaths:
        """The paths for ``train`` on a ``device_type`` worker."""
        return cls(
            device_type=device_type,
            precision=train.resolved_precision,
            channels_last=device_type == "cuda",
        )

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype: the DeepSpeed mode's low dtype, None in fp32."""
        return _AUTOCAST_DTYPES.get(self.precision)

    def prepare(self, stage: Stage) -> Stage:
        """Set the stage's training autocast and, on CUDA, its 4-d weights channels_last;
        before DeepSpeed wraps it.

        ZeRO 1-3 later re-lay the weights out in its flat buffers (contiguous again);
        the layout that matters is the activations', which :meth:`image` sets and every
        convolution then keeps (a channels_last input gives a channels_last output).
        """
        dtype = self.autocast_dtype
        stage.train_autocast = None if dtype is None else (self.device_type, dtype)
        if self.channels_last:
            stage.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return stage

    def image(self, x: Tensor, device: torch.device) -> Tensor:
        """An image batch (B, 3, H, W) on the device in float32, channels_last on CUDA."""
        x = x.to(device, torch.float32, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def tokens(self, x: Tensor, device: torch.device) -> Tensor:
        """Text embeddings (B, L, D) on the device in float32 (autocast casts at the layers)."""
        return x.to(device, torch.float32, non_blocking=True)
