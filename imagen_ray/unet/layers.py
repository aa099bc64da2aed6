"""Building blocks of the Efficient U-Net: embeddings, residual blocks, attention, resampling.

Tensors are NCHW (or channels_last NCHW); token sequences are (B, N, C).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_embedding(x: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer sinusoidal features of a (B,) scalar (Vaswani et al. 2017), shape (B, dim).

    Times in [0, 1] are scaled by 1000 so the features span the usual DDPM range.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half
    )
    args = 1000.0 * x.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


POS_FREQS = 8  # frequencies per axis of position_features (4 * POS_FREQS features)


def position_features(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sin/cos features of each cell's centre in [0, 1]^2, shape (h * w, 32).

    Resolution-independent (the same place in the image gets the same features at any size),
    row-major like the (B, HW, C) token sequence of :class:`AttentionBlock`.
    """
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    freqs = math.pi * 2.0 ** torch.arange(POS_FREQS, device=device, dtype=torch.float32) / 2
    args = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)[:, :, None] * freqs  # (HW, 2, F)
    return torch.cat([torch.sin(args), torch.cos(args)], -1).reshape(h * w, 4 * POS_FREQS)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero every parameter: residual branches start as the identity (guided-diffusion)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ScalarEmbedding(nn.Module):
    """Sinusoidal features -> 2-layer MLP; embeds the diffusion time or the aug level."""

    def __init__(self, dim: int, freq_dim: int = 128) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.fc1 = nn.Linear(freq_dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = sinusoidal_embedding(x, self.freq_dim).to(self.fc1.weight.dtype)  # (B, freq_dim)
        return self.fc2(F.silu(self.fc1(h)))


class ResBlock(nn.Module):
    """Residual block with FiLM conditioning (guided-diffusion's scale/shift norm).

    x -> GN -> SiLU -> conv3 -> GN * (1 + scale) + shift -> SiLU -> dropout -> conv3 (+ skip).
    """

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, *, groups: int, dropout: float
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.cond = nn.Linear(cond_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.cond(F.silu(cond))[:, :, None, None].chunk(2, dim=1)  # (B, C, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head attention via ``F.scaled_dot_product_attention``; self or cross."""

    def __init__(self, dim: int, head_dim: int, ctx_dim: int | None = None) -> None:
        super().__init__()
        self.heads = max(1, dim // head_dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(ctx_dim or dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        zero_init(self.out)

    def forward(self, x: Tensor, ctx: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x (B, N, C); ctx (B, L, C_ctx) or None for self-attention; mask (B, L) bool."""
        b, n, c = x.shape
        ctx = x if ctx is None else ctx
        q = self.q(x).view(b, n, self.heads, -1).transpose(1, 2)  # (B, h, N, d)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, L)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, N, d)
        return self.out(o.transpose(1, 2).reshape(b, n, c))


class AttentionBlock(nn.Module):
    """Pre-norm transformer block on a feature map: [self-attn] + [cross-attn to text] + FF."""

    def __init__(
        self,
        ch: int,
        *,
        head_dim: int,
        ctx_dim: int,
        self_attn: bool,
        cross_attn: bool,
        ff_mult: int,
        pos_emb: bool = False,
        text_layout: bool = False,
        text_layout_init: str = "zero",
        layout_head: bool = False,
        layout_patch: int = 1,
    ) -> None:
        super().__init__()
        # optional absolute position: a learned map of fixed 2-D sin/cos features, added to
        # the tokens (zero-initialised, so it starts as the plain block)
        self.pos = zero_init(nn.Linear(4 * POS_FREQS, ch)) if pos_emb else None
        # optional text layout: cells ask the text with a query made from their position alone
        # (randomly initialised, so cells differ from the start; the output is zero-initialised)
        self.layout_q = nn.Linear(4 * POS_FREQS, ch) if text_layout else None
        self.layout = Attention(ch, head_dim, ctx_dim) if text_layout else None
        if self.layout is not None and text_layout_init == "normal":
            # a zero output gives the layout's queries and keys no gradient until it grows
            nn.init.normal_(self.layout.out.weight, std=ch**-0.5)
        # optional layout head: the layout's cells draw the clean image from the text alone
        # (``unet.layout_head``), as bench/layout_probe.py's per-cell MLP: each cell its mean
        # colour, or its layout_patch x layout_patch pixels (``unet.layout_head_pixels``)
        self.layout_patch = layout_patch
        self.layout_head = (
            nn.Sequential(nn.Linear(ch, 4 * ch), nn.GELU(), nn.Linear(4 * ch, 3 * layout_patch**2))
            if text_layout and layout_head
            else None
        )
        self.self_attn = Attention(ch, head_dim) if self_attn else None
        self.norm_self = nn.LayerNorm(ch) if self_attn else None
        self.cross_attn = Attention(ch, head_dim, ctx_dim) if cross_attn else None
        self.norm_cross = nn.LayerNorm(ch) if cross_attn else None
        self.norm_ff = nn.LayerNorm(ch)
        self.ff = nn.Sequential(
            nn.Linear(ch, ff_mult * ch), nn.GELU(), zero_init(nn.Linear(ff_mult * ch, ch))
        )

    def forward(
        self, x: Tensor, ctx: Tensor, mask: Tensor, layout_ctx: Tensor | None = None
    ) -> Tensor:
        """x (B, C, H, W); ctx (B, L, C_ctx) the text tokens, mask (B, L) bool; layout_ctx
        (B, L, C_ctx): the tokens the text layout reads (default ``ctx``)."""
        b, c, h, w = x.shape
        s = x.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C); a view if channels_last
        if self.pos is not None or self.layout_q is not None:
            # (HW, 32), shared by both; in the map's dtype (bf16 weights at inference)
            feats = position_features(h, w, x.device).to(x.dtype)
            if self.pos is not None:
                s = s + self.pos(feats).to(s.dtype)
            if self.layout is not None:
                text = ctx if layout_ctx is None else layout_ctx
                cells = self._layout(feats, text, mask, s.dtype)
                # with a head, the layout learns from its own loss alone: the diffusion loss
                # reads its cells but does not reshape them (docs/compositional.md)
                s = s + (cells.detach() if self.layout_head is not None else cells)
        if self.self_attn is not None and self.norm_self is not None:
            s = s + self.self_attn(self.norm_self(s))
        if self.cross_attn is not None and self.norm_cross is not None:
            s = s + self.cross_attn(self.norm_cross(s), ctx, mask)
        s = s + self.ff(self.norm_ff(s))
        return s.reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous(memory_format=_fmt(x))

    def _layout(self, feats: Tensor, ctx: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """The text layout's cells (B, HW, C): position-only queries read the text."""
        assert self.layout is not None and self.layout_q is not None
        q = self.layout_q(feats).to(dtype)  # (HW, C)
        return self.layout(q[None].expand(ctx.shape[0], -1, -1), ctx, mask)

    def predict_layout(self, size: int, ctx: Tensor, mask: Tensor) -> Tensor:
        """The layout head's clean image from the text alone, ``size`` this block's grid:
        (B, 3, size * p, size * p), p its patch (1: each cell's mean colour). Needs
        ``layout_head``."""
        if self.layout_head is None:
            raise ValueError("this attention block has no layout head (unet.layout_head)")
        feats = position_features(size, size, ctx.device).to(ctx.dtype)
        cells = self.layout_head(self._layout(feats, ctx, mask, ctx.dtype))  # (B, HW, 3pp)
        p, b = self.layout_patch, ctx.shape[0]
        cells = cells.reshape(b, size, size, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return cells.reshape(b, 3, size * p, size * p)


def _fmt(x: Tensor) -> torch.memory_format:
    """Keep channels_last inputs channels_last."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class TextBlock(nn.Module):
    """Pre-norm transformer block over the text tokens: masked self-attention + FF.

    Trained with the U-Net on top of the frozen encoder's tokens (``unet.text_layers``), so a
    token can take in what the rest of the caption says about it ("the square on the right")
    before the image reads it. Zero-initialised outputs: it starts as the identity.
    """

    def __init__(self, dim: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.norm_attn = nn.LayerNorm(dim)
        self.attn = Attention(dim, head_dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), zero_init(nn.Linear(ff_mult * dim, dim))
        )

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """tokens (B, L, C); mask (B, L) bool, True for real tokens (at least one per row)."""
        tokens = tokens + self.attn(self.norm_attn(tokens), mask=mask)
        return tokens + self.ff(self.norm_ff(tokens))


def masked_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real tokens: (B, L, C), mask (B, L) bool -> (B, C); 0 for an empty row."""
    m = mask[..., None].to(tokens.dtype)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1)


class AttentionPool(nn.Module):
    """Pools text tokens (B, L, C) -> (B, C) with one learned query (CLIP-style attention pool)
    that honours the mask; the Imagen "pooled embedding" added to the time embedding."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * dim**-0.5)
        self.attn = Attention(dim, head_dim)
        nn.init.normal_(self.attn.out.weight, std=dim**-0.5)  # pooled output must not be 0

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        q = self.query.to(tokens.dtype) + masked_mean(tokens, mask)[:, None]  # (B, 1, C)
        return self.attn(q, tokens, mask)[:, 0]


class Downsample(nn.Module):
    """Strided 3x3 conv: the Efficient U-Net DBlock downsamples *before* its convolutions."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 then 3x3 conv: the Efficient U-Net UBlock upsamples *after* its convs."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
