"""The Efficient U-Net of Imagen (Saharia et al. 2022, Appendix B.1), for base and SR stages.

Conditioning: the time embedding plus an attention-pooled text embedding (plus, for SR
stages, the noise-conditioning augmentation level) modulate every residual block; text
tokens enter through cross-attention at the configured levels. A learned null token stands
in for the text when it is dropped (classifier-free guidance).

The Efficient U-Net changes over the DDPM U-Net, all here:
- parameters shift to low resolutions (per-level ``res_blocks`` / ``mult`` in the config);
- skip connections are scaled by 1/sqrt(2) (``skip_scale``);
- a down level downsamples *before* its convolutions, an up level upsamples *after* them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from imagen_ray.config import LevelConfig, UNetConfig
from imagen_ray.unet.layers import (
    AttentionBlock,
    AttentionPool,
    Downsample,
    ResBlock,
    ScalarEmbedding,
    TextBlock,
    Upsample,
    masked_mean,
    zero_init,
)


class Level(nn.Module):
    """Residual blocks at one resolution, each followed by its attention block (or none)."""

    def __init__(self, blocks: list[ResBlock], attns: list[AttentionBlock | None]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList([a or nn.Identity() for a in attns])
        self.has_attn = [a is not None for a in attns]


def _text_projection(text_dim: int, ctx_dim: int, *, mlp: bool) -> nn.Module:
    """Frozen tokens -> the U-Net's token width: linear, or a one-hidden-layer MLP."""
    if not mlp:
        return nn.Linear(text_dim, ctx_dim)
    return nn.Sequential(
        nn.Linear(text_dim, 4 * ctx_dim), nn.GELU(), nn.Linear(4 * ctx_dim, ctx_dim)
    )


class EfficientUNet(nn.Module):
    """Text-conditional Efficient U-Net.

    Args:
        cfg: architecture (channels, levels, attention, ...).
        text_dim: width D of the frozen text encoder's token embeddings.
        lowres: True for a super-resolution stage (adds the low-res image input and the
            augmentation-level embedding).
        in_channels / out_channels: image channels (3).
    """

    def __init__(
        self,
        cfg: UNetConfig,
        *,
        text_dim: int,
        lowres: bool = False,
        in_channels: int = 3,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.lowres = lowres
        self.in_channels = in_channels
        cond_dim = cfg.resolved_cond_dim
        ctx_dim = cfg.resolved_text_tokens_dim
        chans = [cfg.channels * lvl.mult for lvl in cfg.levels]

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, cond_dim, groups=cfg.groups, dropout=cfg.dropout)

        def level(blocks: list[ResBlock], ch: int, lvl: LevelConfig, i: int) -> Level:
            """Attention after the last block, or after every block (ADM layout); ``i`` the
            level's depth (its grid is the stage's size / 2**i)."""
            n = len(blocks)
            attns = [
                AttentionBlock(
                    ch,
                    head_dim=cfg.head_dim,
                    ctx_dim=ctx_dim,
                    self_attn=lvl.self_attn,
                    cross_attn=lvl.cross_attn,
                    ff_mult=cfg.ff_mult,
                    pos_emb=cfg.pos_emb,
                    text_layout=cfg.text_layout and lvl.cross_attn,
                    text_layout_init=cfg.text_layout_init,
                    layout_head=cfg.layout_head,
                    layout_patch=2**i if cfg.layout_head_pixels else 1,
                )
                if (lvl.self_attn or lvl.cross_attn) and (lvl.attn_every_block or k == n - 1)
                else None
                for k in range(n)
            ]
            return Level(blocks, attns)

        # conditioning
        self.time_emb = ScalarEmbedding(cond_dim)
        self.aug_emb = ScalarEmbedding(cond_dim) if lowres else None
        self._build_text(cfg, text_dim, ctx_dim, cond_dim)

        # down path
        inputs = in_channels * (2 if lowres else 1) + (in_channels if cfg.layout_input else 0)
        self.init_conv = nn.Conv2d(inputs, chans[0], 3, padding=1)
        self.downsamples = nn.ModuleList()
        self.down = nn.ModuleList()
        prev = chans[0]
        for i, (lvl, ch) in enumerate(zip(cfg.levels, chans, strict=True)):
            self.downsamples.append(Downsample(prev, ch) if i > 0 else nn.Identity())
            self.down.append(level([res(ch, ch) for _ in range(lvl.res_blocks)], ch, lvl, i))
            prev = ch

        # middle, at the lowest resolution
        mid_ch = chans[-1]
        mid_lvl = LevelConfig(mult=1, res_blocks=1, self_attn=cfg.mid_attn, cross_attn=cfg.mid_attn)
        mids = [res(mid_ch, mid_ch) for _ in range(cfg.mid_blocks)]
        self.mid = level(mids, mid_ch, mid_lvl, len(cfg.levels) - 1)

        # up path (mirrors the down path; the first block of a level takes the skip)
        self.up = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for i in reversed(range(len(cfg.levels))):
            lvl, ch = cfg.levels[i], chans[i]
            blocks = [res(prev + ch, ch)] + [res(ch, ch) for _ in range(lvl.res_blocks - 1)]
            self.up.append(level(blocks, ch, lvl, i))
            self.upsamples.append(Upsample(ch, chans[i - 1]) if i > 0 else nn.Identity())
            prev = chans[i - 1] if i > 0 else ch

        self.out = nn.Sequential(
            nn.GroupNorm(cfg.groups, chans[0]),
            nn.SiLU(),
            zero_init(nn.Conv2d(chans[0], out_channels, 3, padding=1)),
        )

    # ------------------------------------------------------------------ conditioning

    def _build_text(self, cfg: UNetConfig, text_dim: int, ctx_dim: int, cond_dim: int) -> None:
        """The text path: projection, optional text blocks, null token, pooling."""
        self.text_in = _text_projection(text_dim, ctx_dim, mlp=cfg.text_mlp)
        self.text_norm = nn.LayerNorm(ctx_dim)
        self.text_blocks = nn.ModuleList(
            [TextBlock(ctx_dim, cfg.head_dim, cfg.ff_mult) for _ in range(cfg.text_layers)]
        )
        self.null_token = nn.Parameter(torch.randn(ctx_dim) * 0.02)
        self.text_pool = (
            AttentionPool(ctx_dim, cfg.head_dim) if cfg.text_pooling == "attention" else None
        )
        self.pool_proj = nn.Linear(ctx_dim, cond_dim)
        # with layout heads, the text layout reads the frozen tokens through a projection of
        # its own, trained by the heads' loss alone (the U-Net's is shaped by the diffusion
        # loss, which kept the layout from learning the side: docs/compositional.md)
        self.layout_text_in = nn.Linear(text_dim, ctx_dim) if cfg.layout_head else None
        self.layout_text_norm = nn.LayerNorm(ctx_dim) if cfg.layout_head else None

    def encode_text(
        self,
        text_emb: Tensor,
        text_mask: Tensor,
        drop_text: Tensor | None,
        layout_tokens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Project tokens, swap in the null token where text is dropped, pool.
        ``layout_tokens``: :meth:`encode_layout_text`'s tokens when the caller has them
        (``unet.layout_tokens`` adds them; computed here otherwise).

        Returns: tokens (B, L, C_ctx), mask (B, L) bool, pooled (B, cond_dim).
        """
        dtype = self.text_norm.weight.dtype
        tokens = self.text_norm(self.text_in(text_emb.to(dtype)))  # (B, L, C)
        if self.cfg.layout_tokens:
            if layout_tokens is None:
                layout = self.encode_layout_text(text_emb, text_mask, drop_text)
                assert layout is not None  # layout_tokens needs layout_head (config check)
                layout_tokens = layout[0]
            tokens = tokens + layout_tokens.detach()  # learned by the layout heads' loss alone
        mask = text_mask.bool()
        drop = ~mask.any(dim=1)  # a row with no tokens is treated as unconditional
        if drop_text is not None:
            drop = drop | drop_text.bool()
        first = torch.arange(tokens.shape[1], device=tokens.device) == 0  # (L,)
        for block in self.text_blocks:  # an empty row attends to its first slot (no NaN)
            tokens = block(tokens, mask | first[None, :])
        # Unconditionally (not only when some row drops): the null token must be in every
        # graph, or data-parallel ranks reduce different sets of gradients.
        null_tokens = first[None, :, None] * self.null_token.to(tokens.dtype)  # (1, L, C)
        tokens = torch.where(drop[:, None, None], null_tokens, tokens)
        mask = torch.where(drop[:, None], first[None, :], mask)
        pool = self.text_pool
        pooled = masked_mean(tokens, mask) if pool is None else pool(tokens, mask)
        pooled = self.pool_proj(pooled)  # (B, cond_dim)
        return tokens, mask, pooled

    def encode_layout_text(
        self, text_emb: Tensor, text_mask: Tensor, drop_text: Tensor | None
    ) -> tuple[Tensor, Tensor] | None:
        """The tokens the text layouts read with layout heads (``unet.layout_head``): the
        layout's own projection; a dropped row reads one zero token. None without heads.

        Returns: tokens (B, L, C_ctx), mask (B, L) bool; or None.
        """
        if self.layout_text_in is None or self.layout_text_norm is None:
            return None
        dtype = self.layout_text_norm.weight.dtype
        tokens = self.layout_text_norm(self.layout_text_in(text_emb.to(dtype)))  # (B, L, C)
        mask = text_mask.bool()
        drop = ~mask.any(dim=1)
        if drop_text is not None:
            drop = drop | drop_text.bool()
        first = torch.arange(tokens.shape[1], device=tokens.device) == 0  # (L,)
        tokens = torch.where(drop[:, None, None], torch.zeros_like(tokens), tokens)
        return tokens, torch.where(drop[:, None], first[None, :], mask)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        text_emb: Tensor,
        text_mask: Tensor,
        lowres: Tensor | None = None,
        aug_level: Tensor | None = None,
        *,
        drop_text: Tensor | None = None,
        layout_image: Tensor | None = None,
    ) -> Tensor:
        """Predict the stage's objective (eps, v or x0) for a noisy image.

        Args:
            x_t: (B, 3, H, W) noisy image.
            t: (B,) diffusion time in [0, 1].
            text_emb: (B, L, D) frozen text-encoder token embeddings.
            text_mask: (B, L) bool, True for real tokens.
            lowres: SR only: (B, 3, H, W) low-res image already upsampled to H x W (and
                noise-augmented by the caller).
            aug_level: SR only: (B,) noise-conditioning augmentation level in [0, 1].
            drop_text: (B,) bool, True where the text is replaced by the learned null
                token (classifier-free guidance).
            layout_image: with ``unet.layout_input``: (B, 3, H, W) the coarse layout to
                read (training passes the clean image's for some samples); default the
                layout heads' drawing (:meth:`layout_condition`).

        Returns:
            (B, 3, H, W) prediction.
        """
        if self.lowres:
            if lowres is None or aug_level is None:
                raise ValueError("a super-resolution U-Net needs `lowres` and `aug_level`")
            if lowres.shape != x_t.shape:
                raise ValueError(
                    f"lowres has shape {tuple(lowres.shape)} but x_t has {tuple(x_t.shape)}; "
                    "upsample the low-res image to the stage resolution first"
                )
            x_t = torch.cat([x_t, lowres.to(x_t.dtype)], dim=1)
        elif lowres is not None:
            raise ValueError("this U-Net is a base stage (lowres=False): do not pass `lowres`")

        if self.cfg.layout_input:
            if layout_image is None:
                layout_image = self.layout_condition(x_t.shape[-1], text_emb, text_mask, drop_text)
            x_t = torch.cat([x_t, layout_image.to(x_t.dtype)], dim=1)
        layout = self.encode_layout_text(text_emb, text_mask, drop_text)
        layout_tokens = None if layout is None else layout[0]  # its mask equals the U-Net's
        tokens, mask, pooled = self.encode_text(text_emb, text_mask, drop_text, layout_tokens)
        cond = self.time_emb(t) + pooled  # (B, cond_dim)
        if self.aug_emb is not None and aug_level is not None:
            cond = cond + self.aug_emb(aug_level)

        h = self.init_conv(x_t)
        skips = []
        for down, level in zip(self.downsamples, self.down, strict=True):
            h = self._level(level, down(h), cond, tokens, mask, layout_tokens)
            skips.append(h)
        h = self._level(self.mid, h, cond, tokens, mask, layout_tokens)
        for up, level, skip in zip(self.upsamples, self.up, reversed(skips), strict=True):
            h = torch.cat([h, skip * self.cfg.skip_scale], dim=1)
            h = up(self._level(level, h, cond, tokens, mask, layout_tokens))
        return self.out(h)

    def layout_condition(
        self, size: int, text_emb: Tensor, text_mask: Tensor, drop_text: Tensor | None = None
    ) -> Tensor:
        """The coarse layout the U-Net reads with ``unet.layout_input``: the layout heads'
        drawings from the text alone, their mean pooled to ``layout_input_grid`` cells and
        upsampled to (B, 3, size, size); detached (the heads learn from their own loss)."""
        with torch.no_grad():
            preds = self.predict_layouts(size, text_emb, text_mask, drop_text)
            mean = torch.stack([F.interpolate(p.float(), size=size) for p in preds]).mean(0)
            return coarse_layout(mean.clamp(-1.0, 1.0), self.cfg.layout_input_grid, size)

    def predict_layouts(
        self, size: int, text_emb: Tensor, text_mask: Tensor, drop_text: Tensor | None = None
    ) -> list[Tensor]:
        """Every layout head's clean image from the text alone (``unet.layout_head``).

        Args:
            size: the image size the U-Net runs at (sets each level's grid).
            text_emb, text_mask, drop_text: as :meth:`forward`.

        Returns:
            One (B, 3, g, g) prediction per text layout, g its level's grid (``size`` with
            ``unet.layout_head_pixels``); [] without heads.
        """
        layout = self.encode_layout_text(text_emb, text_mask, drop_text)
        if layout is None:
            return []
        tokens, mask = layout
        n = len(self.down)
        grids = [size // 2**i for i in range(n)]
        levels: list[tuple[nn.Module, int]] = [
            *zip(self.down, grids, strict=True),
            (self.mid, grids[-1]),
            *zip(self.up, grids[::-1], strict=True),
        ]
        return [
            attn.predict_layout(grid, tokens, mask)
            for level, grid in levels
            if isinstance(level, Level)
            for attn in level.attns
            if isinstance(attn, AttentionBlock) and attn.layout_head is not None
        ]

    def _level(
        self,
        level: nn.Module,
        h: Tensor,
        cond: Tensor,
        tokens: Tensor,
        mask: Tensor,
        layout_tokens: Tensor | None = None,
    ) -> Tensor:
        assert isinstance(level, Level)
        for block, attn, has_attn in zip(level.blocks, level.attns, level.has_attn, strict=True):
            h = self._maybe_checkpoint(block, h, cond)
            if has_attn:
                h = self._maybe_checkpoint(attn, h, tokens, mask, layout_tokens)
        return h

    def _maybe_checkpoint(self, fn: Callable[..., Tensor], *args: Any) -> Tensor:
        if self.cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
            out: Tensor = checkpoint(fn, *args, use_reentrant=False)
            return out
        return fn(*args)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


def upsample_to(x: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased when shrinking) resize of (B, C, h, w) to (B, C, size, size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def coarse_layout(image: Tensor, grid: int, size: int) -> Tensor:
    """``image`` (B, 3, H, W) averaged over ``grid`` x ``grid`` cells, each cell's colour
    spread over its pixels of a (B, 3, size, size) image."""
    return F.interpolate(F.adaptive_avg_pool2d(image, grid), size=size, mode="nearest")
