"""Efficient U-Net (pure torch): layers and the network shared by base and SR stages."""

from imagen_ray.unet.network import EfficientUNet, coarse_layout, count_parameters, upsample_to

__all__ = ["EfficientUNet", "coarse_layout", "count_parameters", "upsample_to"]
