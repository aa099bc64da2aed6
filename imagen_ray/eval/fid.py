"""FID between two image folders with Inception features from a local weights file.

The Fréchet distance and its running statistics are torchmetrics'
``FrechetInceptionDistance``, given the feature network as a module. The network is the
TorchScript Inception-v3 of clean-fid and StyleGAN2-ADA (``inception-2015-12-05.pt``, the
2015 TensorFlow FID weights), loaded with ``torch.jit.load`` from ``--inception PATH``:
nothing is downloaded at run time. (torchmetrics' built-in Inception comes from
torch-fidelity, which needs a torchvision build matching the installed torch; TorchScript
needs only torch.) Images are resized to 299 px with PIL bicubic, as clean-fid does.

The file is published with StyleGAN2-ADA's metrics at
https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt
(the one clean-fid fetches); download it once and pass its path.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
INCEPTION_SIZE = 299


def require_torchmetrics() -> None:
    """Raise a clear error when the ``eval`` extra is not installed."""
    try:
        import torchmetrics  # noqa: F401
    except ImportError as e:  # pragma: no cover - the dev install has it
        raise ValueError(
            "this evaluation needs torchmetrics: pip install 'imagen-ray[eval]'"
        ) from e


def list_images(folder: str | Path, flag: str) -> list[Path]:
    """Image files of a folder (recursively, sorted); errors name ``flag``."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{flag} {folder}: no such directory")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise ValueError(
            f"{flag} {folder}: found {len(files)} image(s) ({', '.join(IMAGE_SUFFIXES)}); "
            "FID needs at least 2 per set"
        )
    return files


class InceptionFeatures(nn.Module):
    """A TorchScript feature network called as ``net(x, return_features=True)``.

    ``forward`` takes (B, 3, H, W) uint8 or [0, 255] float and returns (B, F) features.
    """

    def __init__(self, net: nn.Module, num_features: int) -> None:
        super().__init__()
        self.net = net
        self.num_features = num_features

    @torch.no_grad()
    def forward(self, imgs: Tensor) -> Tensor:
        return self.net(imgs.float(), return_features=True).reshape(imgs.shape[0], -1)


def load_inception(path: str | Path, *, device: str = "cpu") -> InceptionFeatures:
    """Load the Inception feature network from a local TorchScript file.

    Args:
        path: e.g. ``inception-2015-12-05.pt`` (clean-fid / StyleGAN2-ADA's TorchScript
            export of the TensorFlow FID Inception), downloaded once on a machine with
            network access.
        device: torch device.

    Returns:
        The wrapped network; ``num_features`` is its feature width (2048 for Inception).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"--inception {path}: no such file; pass the local path of a TorchScript Inception "
            "(inception-2015-12-05.pt, the file clean-fid uses); nothing is downloaded"
        )
    try:
        with warnings.catch_warnings():
            # The FID Inception is published only as TorchScript; torch deprecates the
            # loader, and the file format has no replacement yet.
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(p), map_location=device).eval()
    except RuntimeError as e:
        raise ValueError(
            f"--inception {path}: not a TorchScript module ({str(e).splitlines()[0]}); pass "
            "inception-2015-12-05.pt (TorchScript), not a state dict"
        ) from e
    probe = torch.zeros(1, 3, INCEPTION_SIZE, INCEPTION_SIZE, device=device)
    try:
        out = net(probe, return_features=True)
    except Exception as e:  # a TorchScript file of another interface
        raise ValueError(
            f"--inception {path}: the module does not take (images, return_features=True) "
            f"like inception-2015-12-05.pt: {e}"
        ) from e
    return InceptionFeatures(net, int(out.reshape(1, -1).shape[1]))


def load_batch(files: Sequence[Path], size: int = INCEPTION_SIZE) -> Tensor:
    """Image files -> (B, 3, size, size) uint8, resized with PIL bicubic (clean-fid's resize)."""
    arrs = []
    for f in files:
        with Image.open(f) as im:
            rgb = im.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
            arrs.append(np.asarray(rgb))
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def fid(
    generated: str | Path,
    reference: str | Path,
    features: nn.Module,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """FID between the images of two folders.

    Args:
        generated: folder of generated images (``--generated``).
        reference: folder of reference images (``--reference``).
        features: a feature network such as :func:`load_inception` returns.
        batch_size: images per forward pass.
        progress: show a progress bar.

    Returns:
        ``{"fid": float, "n_generated": int, "n_reference": int, "features": int}``.
    """
    require_torchmetrics()
    from torchmetrics.image.fid import FrechetInceptionDistance
    from tqdm import tqdm

    gen = list_images(generated, "--generated")
    ref = list_images(reference, "--reference")
    metric = FrechetInceptionDistance(feature=features, normalize=False)
    total = len(gen) + len(ref)
    with tqdm(total=total, desc="FID features", unit="img", disable=not progress) as bar:
        for files, real in ((ref, True), (gen, False)):
            for i in range(0, len(files), batch_size):
                chunk = files[i : i + batch_size]
                metric.update(load_batch(chunk), real=real)
                bar.update(len(chunk))
    return {
        "fid": float(metric.compute()),
        "n_generated": len(gen),
        "n_reference": len(ref),
        "features": int(getattr(features, "num_features", 0)),
    }
