"""Classifier-free guidance and x0 thresholding (static and Imagen's dynamic)."""

from __future__ import annotations

from torch import Tensor

from imagen_ray.diffusion._checks import check_choice, check_percentile
from imagen_ray.diffusion.names import THRESHOLDS
from imagen_ray.diffusion.process import right_pad


def apply_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance (Ho & Salimans 2022).

    Args:
        cond: conditional prediction, shape (B, ...).
        uncond: unconditional prediction, shape (B, ...).
        scale: guidance weight; 1 means no guidance, 0 means unconditional.

    Returns:
        ``uncond + scale * (cond - uncond)``, shape (B, ...); exactly ``cond`` when
        ``scale == 1``.
    """
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def _row_quantile(a: Tensor, q: float) -> Tensor:
    """Per-row linear-interpolation quantile of a 2-D tensor (numpy's default "linear" method).

    Selection based (``kthvalue``): faster than sorting and, unlike ``torch.quantile``, without
    an input size limit (large super-resolution batches exceed it).
    """
    n = a.shape[1]
    pos = q * (n - 1)
    lo = int(pos)  # floor, pos >= 0
    frac = pos - lo
    lo_val = a.kthvalue(lo + 1, dim=1).values  # kthvalue is 1-indexed
    if frac == 0.0 or lo + 1 >= n:
        return lo_val
    hi_val = a.kthvalue(lo + 2, dim=1).values
    return lo_val + (hi_val - lo_val) * frac


def threshold_x0(x0: Tensor, mode: str, percentile: float = 0.995) -> Tensor:
    """Threshold an x0 prediction into the data range [-1, 1].

    ``"static"`` clamps to [-1, 1]. ``"dynamic"`` is Imagen's dynamic thresholding (Saharia
    et al. 2022, Sec. 2.3): per example ``s = max(1, quantile(|x0|, percentile))`` and
    ``x0 <- clamp(x0, -s, s) / s``. ``"none"`` returns ``x0`` unchanged.

    Args:
        x0: x0 prediction, shape (B, ...).
        mode: ``"none"``, ``"static"`` or ``"dynamic"``.
        percentile: quantile level in (0, 1] for ``"dynamic"`` (0.995 is a common choice;
            1.0 means the max).

    Returns:
        Thresholded x0, shape (B, ...), same dtype.

    Raises:
        ValueError: on an unknown mode or a percentile outside (0, 1].
    """
    check_choice("threshold mode", mode, THRESHOLDS)
    check_percentile(percentile)
    if mode == "none":
        return x0
    if mode == "static":
        return x0.clamp(-1.0, 1.0)
    # Saharia et al. 2022, Sec. 2.3: "at each sampling step we set s to a certain percentile
    # absolute pixel value in x̂0_t, and if s > 1, then we threshold x̂0_t to the range [−s, s]
    # and then divide by s".
    flat = x0.abs().reshape(x0.shape[0], -1)
    if not flat.is_floating_point():
        flat = flat.float()
    s = _row_quantile(flat, percentile).clamp(min=1.0).to(x0.dtype)  # (B,)
    s = right_pad(s, x0)
    return x0.clamp(min=-s, max=s) / s
