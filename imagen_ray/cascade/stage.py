"""A cascade stage: Efficient U-Net + diffusion settings + resolution (+ low-res input).

Base and super-resolution stages are the same class with different configs; the
noise-conditioning augmentation of the low-res input is implemented once, here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from imagen_ray.cascade.edit import keep_known
from imagen_ray.config import SamplingConfig, StageConfig
from imagen_ray.config.dtypes import resolve_dtype
from imagen_ray.diffusion import (
    Callback,
    Denoiser,
    Generators,
    ModelFn,
    diffusion_loss,
    get_log_snr_fn,
    make_denoiser,
    q_sample,
    randn,
    sample,
    time_at_log_snr,
)
from imagen_ray.unet import EfficientUNet, coarse_layout, upsample_to


class Stage(nn.Module):
    """One stage of the cascade.

    Args:
        cfg: the stage config (size, low-res size, U-Net, diffusion, sampling defaults).
        text_dim: width D of the text encoder's token embeddings.
    """

    def __init__(self, cfg: StageConfig, *, text_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_dim = text_dim
        self.unet = EfficientUNet(cfg.unet, text_dim=text_dim, lowres=cfg.is_sr)
        self.log_snr_fn = get_log_snr_fn(cfg.diffusion.schedule, cfg.diffusion.schedule_shift)
        self.t_high_noise = time_at_log_snr(self.log_snr_fn, math.log(cfg.diffusion.high_noise_snr))
        # What its saved config.json keeps under "extra" (training step, data, metrics): read
        # by load_stage and written back by Cascade.save, so a re-saved stage keeps its record.
        self.extra: dict[str, Any] = {}
        # Training autocast, (device type, dtype) or None: set by imagen_ray.train.accel and
        # entered in forward, inside DeepSpeed's engine, which turns an outer CUDA autocast off.
        self.train_autocast: tuple[str, torch.dtype] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the U-Net's weights (its forward pass runs in it)."""
        return next(self.unet.parameters()).dtype

    def to_inference(self, dtype: str = "auto", device: torch.device | str | None = None) -> Stage:
        """Move the stage to ``device`` in eval mode with its weights in ``dtype``.

        The one place inference precision is set (Serve, ``generate``, ``sample``, training
        sample grids). ``auto`` is bfloat16 on CUDA, float32 elsewhere
        (:func:`imagen_ray.config.dtypes.resolve_dtype`). On CUDA the weights also go
        channels_last, which cuDNN's convolutions (and their tensor-core paths) prefer.

        Args:
            dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (CUDA only).
            device: target device (default: where the stage is).

        Returns:
            ``self``.
        """
        dev = torch.device(device) if device is not None else self.device
        name = resolve_dtype(dtype, dev.type)
        self.to(device=dev, dtype=getattr(torch, name)).eval()
        if dev.type == "cuda":
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    # ------------------------------------------------------------------ low-res input

    def make_lowres(self, images: Tensor) -> Tensor:
        """Downsample training targets (B, 3, H, H) by the stage's factor size / lowres_size.

        At H = size that is the stage's input resolution; a training crop (``data.train_crop``)
        of H px gives its own low-res crop, H * lowres_size / size px.
        """
        if self.cfg.lowres_size is None:
            raise ValueError(f"stage {self.cfg.name!r} is a base stage and has no low-res input")
        return upsample_to(images, images.shape[-1] * self.cfg.lowres_size // self.cfg.size)

    def augment_lowres(
        self,
        lowres: Tensor,
        aug_level: Tensor,
        generator: Generators,
        *,
        size: int | None = None,
    ) -> Tensor:
        """Noise-conditioning augmentation of the low-res input.

        Imagen, Sec. 2.5: "we use noise conditioning augmentation for both the super-resolution
        models ... we corrupt the low-resolution image with the augmentation (corresponding to
        aug_level), and condition the diffusion model on aug_level." The image is first
        upsampled to the stage resolution, then noised with the stage's own forward process at
        time ``aug_level``.

        Args:
            lowres: (B, 3, h, w) low-resolution image in [-1, 1].
            aug_level: (B,) augmentation level in [0, 1] (0 = clean).
            generator: noise source(s).
            size: side to upsample to (default ``cfg.size``; a training crop's side when
                training on crops).

        Returns:
            (B, 3, size, size) augmented, upsampled low-res image.
        """
        up = upsample_to(lowres.float(), size or self.cfg.size)  # (B, 3, H, W)
        eps = randn(up.shape, generator, up.device)
        return q_sample(up, self.log_snr_fn(aug_level.float()), eps)

    # ------------------------------------------------------------------ training

    def loss(
        self,
        x0: Tensor,
        text_emb: Tensor,
        text_mask: Tensor,
        lowres: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-example diffusion loss of the stage (mean it for the training loss).

        Args:
            x0: (B, 3, size, size) target images in [-1, 1], or for SR stages trained on
                crops (``data.train_crop``) (B, 3, C, C) crops.
            text_emb: (B, L, D) token embeddings; text_mask: (B, L) bool.
            lowres: SR only: (B, 3, lowres_size, lowres_size) in [-1, 1] (with crops: the
                aligned (B, 3, C * lowres_size / size, ...) crop); derived from ``x0`` when
                omitted.
            generator: source of t, eps, text dropout and aug levels.

        Returns:
            (B,) weighted MSE per example.
        """
        b, dev = x0.shape[0], x0.device
        d = self.cfg.diffusion
        t = torch.rand(b, generator=generator, device=dev)  # (B,)
        if d.high_noise_share > 0:  # that share of t moved into [t_high_noise, 1)
            high = torch.rand(b, generator=generator, device=dev) < d.high_noise_share
            t = torch.where(high, self.t_high_noise + (1 - self.t_high_noise) * t, t)
        eps = torch.randn(x0.shape, generator=generator, device=dev)
        log_snr = self.log_snr_fn(t)
        x_t = q_sample(x0, log_snr, eps)
        drop = torch.rand(b, generator=generator, device=dev) < d.text_drop_prob  # (B,)
        lowres_in = aug = None
        if self.cfg.is_sr:
            lowres = self.make_lowres(x0) if lowres is None else lowres
            aug = torch.rand(b, generator=generator, device=dev) * self.cfg.noise_aug.train_max
            lowres_in = self.augment_lowres(lowres, aug, generator, size=x0.shape[-1])
        layout = self.training_layout(x0, text_emb, text_mask, drop, generator)
        pred = self.unet(
            x_t, t, text_emb, text_mask, lowres_in, aug, drop_text=drop, layout_image=layout
        )
        loss = diffusion_loss(
            pred.float(), x0, eps, log_snr, d.objective, d.loss_weighting, d.min_snr_gamma
        )
        if self.cfg.unet.layout_head:
            loss = loss + d.layout_loss_weight * self.layout_loss(x0, text_emb, text_mask, drop)
        return loss

    def training_layout(
        self,
        x0: Tensor,
        text_emb: Tensor,
        text_mask: Tensor,
        drop: Tensor,
        generator: torch.Generator | None,
    ) -> Tensor | None:
        """With ``unet.layout_input``: the coarse layout each training sample reads: the
        clean image's own for ``diffusion.layout_teacher`` of the samples whose text is kept,
        the heads' drawing for the others (as at sampling). None without it."""
        unet = self.cfg.unet
        if not unet.layout_input:
            return None
        size = x0.shape[-1]
        drawn = self.unet.layout_condition(size, text_emb, text_mask, drop)
        clean = coarse_layout(x0.float(), unet.layout_input_grid, size)
        share = self.cfg.diffusion.layout_teacher
        teach = (torch.rand(x0.shape[0], generator=generator, device=x0.device) < share) & ~drop
        return torch.where(teach[:, None, None, None], clean, drawn)

    def layout_loss(self, x0: Tensor, text_emb: Tensor, text_mask: Tensor, drop: Tensor) -> Tensor:
        """Per-example MSE of the layout heads' text-only drawings against the clean image
        pooled to the size each head draws at, averaged over heads; 0 where the text is
        dropped (the null token says nothing about the layout). Shape (B,)."""
        preds = self.unet.predict_layouts(x0.shape[-1], text_emb, text_mask, drop_text=drop)
        per_head = [
            (p.float() - F.adaptive_avg_pool2d(x0, p.shape[-1])).square().flatten(1).mean(1)
            for p in preds
        ]
        return torch.stack(per_head).mean(0) * (~drop).to(x0.dtype)

    def forward(
        self,
        x0: Tensor,
        text_emb: Tensor,
        text_mask: Tensor,
        lowres: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The training loss (what DeepSpeed's engine calls): see :meth:`loss`. Runs under
        autocast when ``train_autocast`` is set."""
        if self.train_autocast is None:
            return self.loss(x0, text_emb, text_mask, lowres, generator=generator)
        device_type, dtype = self.train_autocast
        with torch.autocast(device_type, dtype=dtype):
            return self.loss(x0, text_emb, text_mask, lowres, generator=generator)

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample(
        self,
        text_emb: Tensor,
        text_mask: Tensor,
        *,
        lowres: Tensor | None = None,
        neg_emb: Tensor | None = None,
        neg_mask: Tensor | None = None,
        sampling: SamplingConfig | None = None,
        generator: Generators = None,
        callback: Callback | None = None,
        size: int | None = None,
        init: Tensor | None = None,
        strength: float = 1.0,
        keep: Tensor | None = None,
        resample_times: int = 1,
    ) -> Tensor:
        """Generate images for a batch of text conditions, or edit given images.

        Args:
            text_emb: (B, L, D); text_mask: (B, L) bool.
            lowres: SR only: (B, 3, lowres_size, lowres_size) in [-1, 1] (the previous
                stage's output).
            neg_emb / neg_mask: optional negative prompt (B, L, D) / (B, L): the
                unconditional branch of classifier-free guidance uses it instead of the
                learned null text.
            sampling: sampler, steps, guidance, thresholding, aug level (default: the
                stage config's ``sampling``).
            generator: one generator, or one per example (batch-independent results).
            callback: called after every sampler step.
            size: output side (default ``cfg.size``); a crop-trained SR stage's training
                sample grids pass the crop side, with the low-res crop as ``lowres``.
            init: (B, 3, size, size) in [-1, 1]: the image to edit (image-to-image start,
                inpainting's kept pixels).
            strength: in (0, 1]: below 1, ``init`` noised to ``t = strength`` is the start,
                with ``round(steps * strength)`` steps (>= 1); 1 is text-to-image's start.
            keep: (B, 1, size, size) bool, True where ``init`` is kept (inpainting): the x0
                prediction is held to ``init`` there and the output equals it exactly.
            resample_times: inpainting: RePaint's resampling of every step (> 1).

        Returns:
            (B, 3, size, size) images in [-1, 1].
        """
        s = sampling or self.cfg.sampling
        side = size or self.cfg.size
        b, dev = text_emb.shape[0], self.device
        text_emb, text_mask = text_emb.to(dev), text_mask.to(dev)
        lowres_in = aug = None
        if self.cfg.is_sr:
            if lowres is None:
                raise ValueError(f"stage {self.cfg.name!r} is super-resolution: pass `lowres`")
            aug = torch.full((b,), s.aug_level, device=dev)
            lowres_in = self.augment_lowres(lowres.to(dev), aug, generator, size=side)
        model_fn = self._model_fn(
            text_emb, text_mask, lowres_in, aug, neg_emb, neg_mask, guided=s.guidance_scale != 1.0
        )
        denoise = self._denoiser(model_fn, s)
        if init is None and s.layout_start < 1.0:  # start from the text's own layout
            init, strength = self.layout_image(text_emb, text_mask, side), s.layout_start
        noise = self._start(init, strength, keep, (b, 3, side, side), generator)
        if keep is not None and init is not None:
            denoise = keep_known(denoise, init.to(dev), keep.to(dev))
        x0 = sample(
            denoise,
            noise,
            sampler=s.sampler,
            steps=max(1, round(s.steps * strength)) if strength < 1.0 else s.steps,
            log_snr_fn=self.log_snr_fn,
            generator=generator,
            callback=callback,
            eta=s.eta,
            start=strength,
            resample_times=resample_times if keep is not None else 1,
        )
        if keep is not None and init is not None:  # exactly, whatever the sampler's rounding
            x0 = torch.where(keep.to(dev), init.to(dev, x0.dtype), x0)
        return x0.clamp(-1.0, 1.0)

    def _start(
        self,
        init: Tensor | None,
        strength: float,
        keep: Tensor | None,
        shape: tuple[int, int, int, int],
        generator: Generators,
    ) -> Tensor:
        """The sampler's float32 start: noise, or below ``strength`` 1 ``init`` noised to
        ``t = strength`` (image-to-image)."""
        dev = self.device
        noise = randn(shape, generator, dev)
        if (strength < 1.0 or keep is not None) and init is None:
            raise ValueError("strength < 1 and keep need the image to edit: pass `init`")
        if strength < 1.0 and init is not None:
            log_snr = self.log_snr_fn(torch.full((shape[0],), float(strength), device=dev))
            noise = q_sample(init.to(dev, noise.dtype), log_snr, noise)
        return noise

    def layout_image(self, text_emb: Tensor, text_mask: Tensor, size: int) -> Tensor:
        """The layout heads' drawing of each prompt (``unet.layout_head``), from the text
        alone: every head's drawing upsampled to (B, 3, size, size), their mean, in [-1, 1].
        (On the language study's set the mean reads the side right in 99 % of scenes, the
        finest heads alone in 84 %: bench/side_probe.py.)"""
        if not self.cfg.unet.layout_head:
            raise ValueError(
                f"stage {self.cfg.name!r} has no layout head (unet.layout_head): it cannot "
                "start from the text's layout; use sampling.layout_start: 1"
            )
        preds = self.unet.predict_layouts(size, text_emb, text_mask.bool())
        mean = torch.stack([upsample_to(p.float(), size) for p in preds]).mean(0)
        return mean.clamp(-1.0, 1.0)

    def _denoiser(self, model_fn: ModelFn, s: SamplingConfig) -> Denoiser:
        """The U-Net as an x0 denoiser with the sampling settings' guidance and threshold."""
        return make_denoiser(
            model_fn,
            log_snr_fn=self.log_snr_fn,
            objective=self.cfg.diffusion.objective,
            guidance_scale=s.guidance_scale,
            threshold=s.threshold,
            percentile=s.percentile,
        )

    def _model_fn(
        self,
        text_emb: Tensor,
        text_mask: Tensor,
        lowres_in: Tensor | None,
        aug: Tensor | None,
        neg_emb: Tensor | None,
        neg_mask: Tensor | None,
        *,
        guided: bool,
    ) -> ModelFn:
        """The U-Net as the sampler's model, ``(x_t, t) -> output``, on the stage's device;
        with ``guided``, batches of 2B rows run conditional and unconditional at once."""
        b, dev = text_emb.shape[0], self.device
        if guided:
            # Rows [0, B) conditional, [B, 2B) unconditional (the make_denoiser contract).
            if neg_emb is None or neg_mask is None:
                u_emb, u_mask = text_emb, text_mask
                drop = torch.arange(2 * b, device=dev) >= b
            else:
                u_emb, u_mask = neg_emb.to(dev), neg_mask.to(dev)
                drop = torch.zeros(2 * b, dtype=torch.bool, device=dev)
            emb2, mask2 = torch.cat([text_emb, u_emb]), torch.cat([text_mask, u_mask])
            lowres2 = None if lowres_in is None else torch.cat([lowres_in, lowres_in])
            aug2 = None if aug is None else torch.cat([aug, aug])

        dtype = self.dtype

        # Precision: only the U-Net's forward runs in the weights' dtype (bf16/fp16 after
        # to_inference). Its input is cast down here and its output back to float32, so the
        # sampler's state x_t and its update arithmetic (small differences of large terms near
        # t = 0), the eps/v -> x0 conversion (divides by alpha, large at t ~ 1), the guidance
        # combination uncond + w (cond - uncond) (w up to ~10 amplifies rounding) and dynamic
        # thresholding's per-example quantile (bf16 has 8 bits of mantissa: the 99.5th
        # percentile would snap to a coarse grid) all stay float32. Time t stays float32 too:
        # bf16 cannot tell t = 0.999 from t = 1.
        def model_fn(x_t: Tensor, t: Tensor) -> Tensor:
            x_t, t = x_t.to(dtype), t.to(dev, torch.float32)
            if guided and x_t.shape[0] == 2 * b:
                out = self.unet(x_t, t, emb2, mask2, lowres2, aug2, drop_text=drop)
            else:
                out = self.unet(x_t, t, text_emb, text_mask, lowres_in, aug)
            return out.float()

        return model_fn
