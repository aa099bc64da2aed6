"""The figures a plan is built from, each with where it comes from.

Every figure is a :class:`Figure`: a value and its provenance, one of

- ``measured``: run on a real machine, with the command and the date (``docs/benchmarks.md``);
- ``counted``: computed from the model's shapes on the meta device (FLOPs, activations) or
  from the tensors DeepSpeed holds (model state);
- ``datasheet``: a vendor's specification (peak TFLOPS, memory, links);
- ``assumed``: a stated guess that a flag overrides (MFU where no run measured it, prices,
  bandwidths).

A plan prints the label beside every number, so a reader knows which ones to distrust.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Source = Literal["measured", "counted", "datasheet", "assumed"]


@dataclass(frozen=True)
class Figure:
    """One number of a plan and where it comes from."""

    value: float
    unit: str
    source: Source
    how: str  # the command and date (measured), the rule (counted), or why (assumed)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Gpu:
    """One accelerator as the plan sees it."""

    name: str
    peak_tflops: float  # dense bf16 tensor-core peak (datasheet)
    memory_gb: float  # HBM, 10^9 bytes (datasheet)
    link_gbps: float  # GB/s per GPU inside a node (NVLink / PCIe, datasheet)
    price_per_hour: float  # on-demand USD per GPU-hour (assumed)
    peak_assumed: bool = False  # no datasheet gives the peak


# Peaks as imagen_ray.train.perf.PEAK_BF16_TFLOPS (NVIDIA datasheets, dense bf16); memory and
# NVLink per GPU from the same datasheets; prices are assumptions (cloud list prices move):
# pass --price-per-gpu-hour for a real quote.
GPUS: dict[str, Gpu] = {
    g.name: g
    for g in (
        Gpu("h200", 989.4, 141.0, 450.0, 3.50),
        Gpu("h100", 989.4, 80.0, 450.0, 2.50),
        Gpu("a100", 312.0, 80.0, 300.0, 1.50),
        Gpu("a100-40gb", 312.0, 40.0, 300.0, 1.20),
        Gpu("l40s", 362.05, 48.0, 32.0, 1.00),
        Gpu("a10g", 70.0, 24.0, 32.0, 1.00, peak_assumed=True),  # as imagen_ray.train.perf
        Gpu("l4", 121.0, 24.0, 32.0, 0.70),
    )
}

# No training run on a GPU has been measured with this repository (docs/benchmarks.md#gpu:
# bench/gpu.py has not run on one), so MFU is assumed: 40 % is what well-tuned convolutional
# U-Nets reach in bf16 at large batch (MosaicML's Stable Diffusion runs report 40-50 %).
ASSUMED_MFU = Figure(
    0.40, "fraction", "assumed", "no GPU training run measured here; --mfu sets it"
)
# Between nodes: 400 Gb/s per GPU (one InfiniBand / EFA NIC per GPU, as on p5 / ND H100)
ASSUMED_NODE_LINK_GBPS = Figure(
    50.0, "GB/s per GPU", "assumed", "400 Gb/s NIC per GPU; --node-link-gbps sets it"
)
# Checkpoint upload to object storage from the node that writes it
ASSUMED_UPLOAD_GBPS = Figure(1.0, "GB/s", "assumed", "object storage; --upload-gbps sets it")
# Usable share of a GPU's memory: the CUDA context, the allocator's fragmentation and NCCL
# buffers take the rest
USABLE_MEMORY = Figure(
    0.90, "fraction", "assumed", "CUDA context, NCCL buffers and fragmentation take ~10 %"
)


@dataclass(frozen=True)
class DecodeRate:
    """Decode + resize rate of one CPU core for a source size and format."""

    fmt: str
    source: int
    target: int
    per_core: float  # samples/s


# Samples per CPU-second of the pipeline's decode + resize (imagen_ray.data.decode), median of
# 5 rounds of 64 images: `python bench/data.py --sizes 256,512,1024 --rounds 5`, 2026-12-07,
# Intel Xeon (AVX-512), one thread (docs/benchmarks.md#decode-rates-at-real-sizes). A size
# not listed takes the nearest measured one.
DECODE_RATES: tuple[DecodeRate, ...] = (
    DecodeRate("jpg", 256, 64, 2151.0),
    DecodeRate("jpg", 256, 256, 1197.0),
    DecodeRate("jpg", 512, 64, 1132.0),
    DecodeRate("jpg", 512, 256, 737.1),
    DecodeRate("jpg", 1024, 64, 345.1),
    DecodeRate("jpg", 1024, 256, 296.8),
    DecodeRate("jpg", 1024, 1024, 125.5),
    DecodeRate("webp", 256, 64, 543.6),
    DecodeRate("webp", 256, 256, 786.1),
    DecodeRate("webp", 512, 64, 170.2),
    DecodeRate("webp", 512, 256, 144.4),
    DecodeRate("webp", 1024, 64, 44.27),
    DecodeRate("webp", 1024, 256, 37.91),
    DecodeRate("webp", 1024, 1024, 37.87),
)
DECODE_HOW = "bench/data.py --sizes 256,512,1024 --rounds 5, 2026-12-07"

# Frozen text encoders' parameters, counted from their architectures (embeddings + layers;
# the encoder half only for T5)
ENCODER_PARAMS: dict[str, float] = {
    "minilm": 22.7e6,  # all-MiniLM-L6-v2: 6 layers, 384 wide, 30522-token vocabulary
    "google/t5-v1_1-small": 35.3e6,
    "google/t5-v1_1-base": 110.0e6,
    "google/t5-v1_1-large": 341.0e6,
    "google/t5-v1_1-xl": 1.22e9,
    "google/t5-v1_1-xxl": 4.76e9,  # 24 layers, 4096 wide, gated FFN 10240: Imagen's encoder
}
