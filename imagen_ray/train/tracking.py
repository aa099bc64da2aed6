"""Weights & Biases on rank 0, and EMA sample grids (wandb lives here, at the edge)."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from imagen_ray.config import RunConfig


def resolve_wandb_mode(mode: str) -> str:
    """``auto`` -> ``online`` when an API key is configured (env or ~/.netrc), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (FileNotFoundError, netrc.NetrcParseError):
        pass
    return "offline"


def start_wandb(cfg: RunConfig, run_dir: str | None, resume_id: str | None) -> Any:
    """``wandb.init`` for rank 0 (None when disabled); resumes ``resume_id`` if given.

    Ray's ``setup_wandb(rank_zero_only=True)`` does not filter ranks under Train V2, so the
    caller only invokes this on rank 0.
    """
    mode = resolve_wandb_mode(cfg.wandb.mode)
    if mode == "disabled":
        return None
    import wandb

    wdir = cfg.wandb.dir or run_dir
    if wdir:
        Path(wdir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        name=cfg.train.name or cfg.stage.name,
        tags=[*cfg.wandb.tags, cfg.stage.name],
        config=cfg.model_dump(mode="json"),
        dir=wdir,
        mode=mode,  # type: ignore[arg-type]
        id=resume_id,
        resume="allow" if resume_id else None,
    )


@torch.no_grad()
def log_sample_grid(
    cfg: RunConfig,
    weights: dict[str, Tensor],
    batch: dict[str, Tensor],
    step: int,
    wandb_run: Any,
    *,
    text_dim: int,
    run_dir: str | None = None,
    count: int = 4,
) -> Path | None:
    """Sample with EMA weights on the CPU and log a grid.

    Base stages sample the fixed ``train.sample_prompts``; SR stages upsample the batch's
    low-res inputs with their captions' embeddings, shown as (low-res, sample, target).
    """
    from imagen_ray.cascade import Stage
    from imagen_ray.images import grid, model_to_uint8, save_image, to_pil

    stage = Stage(cfg.stage, text_dim=text_dim)
    stage.load_state_dict(weights)  # EMA names are the Stage's ("unet.*")
    stage.eval()
    gens = [torch.Generator().manual_seed(i) for i in range(count)]
    if cfg.stage.is_sr:
        n = min(count, batch["image"].shape[0])
        out = stage.sample(
            batch["emb"][:n].float().cpu(),
            batch["mask"][:n].cpu(),
            lowres=batch["lowres"][:n].float().cpu(),
            generator=gens[:n],
        )
        cols = [batch["lowres"][:n].float().cpu(), out, batch["image"][:n].float().cpu()]
        captions = [f"step {step}: low-res | sample | target"] * n
    else:
        from imagen_ray.text import FrozenTextEncoder

        prompts = list(cfg.train.sample_prompts)[:count]
        enc = FrozenTextEncoder(cfg.text).encode(prompts)
        out = stage.sample(enc.emb, enc.mask, generator=gens[: len(prompts)])
        cols = [out]
        captions = prompts
    tiles = [to_pil(model_to_uint8(c)) for c in cols]  # per column: B PIL images
    rows = [[col[i] for col in tiles] for i in range(cols[0].shape[0])]
    image = grid(rows, cell=cfg.stage.size)
    path = None
    if run_dir:
        path = save_image(image, Path(run_dir) / "samples" / f"step_{step:07d}.png")
    if wandb_run is not None:
        import wandb

        wandb_run.log({"sample_grid": wandb.Image(image, caption=" / ".join(captions))}, step=step)
    return path
