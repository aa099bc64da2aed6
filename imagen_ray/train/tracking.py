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


def default_group(run_dir: str | None, cfg: RunConfig) -> str:
    """``wandb.group``, or the runs' shared root: the stages of one cascade are trained into
    one ``train.storage_path`` (``<root>/base``, ``<root>/sr64``), so they share a group.

    ``run_dir`` is the launcher's absolute run directory (or URI); without it the configured
    storage path is used. W&B caps a group name at 128 characters: longer roots keep their end.
    """
    if cfg.wandb.group:
        return cfg.wandb.group
    root = str(run_dir).rstrip("/").rsplit("/", 1)[0] if run_dir else cfg.train.storage_path
    return root if len(root) <= GROUP_MAX else "..." + root[-(GROUP_MAX - 3) :]


GROUP_MAX = 128
SAMPLES_KEY = "samples"  # W&B key of the EMA sample images (a list, one per prompt)
# Summaries of the known metrics (W&B keeps the last value of the others): the run table
# then shows the best loss, the mean throughput and data wait, and the highest memory.
SUMMARIES = {
    "loss": "min",
    "samples_per_s": "mean",
    "data_wait_frac": "mean",
    "mfu": "mean",
}
STEP_METRIC = "step"  # every chart's x axis: the optimizer step (also logged as a value)


def _summary(name: str) -> str | None:
    if name in SUMMARIES:
        return SUMMARIES[name]
    if "mem" in name or name.endswith(("_gb", "_mb", "_bytes")):
        return "max"  # peak memory of the run, not of its last window
    return None


def _own_wandb_service() -> None:
    """Forget a W&B service token that this process inherited rather than started.

    ``wandb.init`` writes its service's address to ``WANDB_SERVICE`` (``3-<pid>-...``, the
    pid of the process that started it), and every process started later from that
    environment connects to the same service. A Ray cluster started by a process that had
    already used W&B hands the token to every worker, so all ranks share the starter's
    service, and a rank killed mid-run leaves its run registered there: the restarted rank
    then gets "run ID ... is in use" for as long as the starter lives. A worker's run
    belongs to the worker, so it starts a service of its own, which dies with it.
    """
    token = os.environ.get("WANDB_SERVICE", "")
    if token and token.split("-")[1:2] != [str(os.getpid())]:
        del os.environ["WANDB_SERVICE"]


def start_wandb(cfg: RunConfig, run_dir: str | None, resume_id: str | None) -> Any:
    """``wandb.init`` for rank 0 (None when disabled); resumes ``resume_id`` if given.

    The run is named after the stage run, grouped with the other stages of its cascade
    (:func:`default_group`) and typed by the stage (``job_type``: base, sr64, ...), so the
    UI can filter and compare stages. Ray's ``setup_wandb(rank_zero_only=True)`` does not
    filter ranks under Train V2, so the caller only invokes this on rank 0.
    """
    mode = resolve_wandb_mode(cfg.wandb.mode)
    if mode == "disabled":
        return None
    import wandb

    wdir = cfg.wandb.dir or run_dir
    if wdir:
        Path(wdir).mkdir(parents=True, exist_ok=True)
    _own_wandb_service()
    run = wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        name=cfg.train.name or cfg.stage.name,
        group=default_group(run_dir, cfg),
        job_type=cfg.stage.name,
        tags=[*cfg.wandb.tags, cfg.stage.name],
        config=cfg.model_dump(mode="json"),
        dir=wdir,
        mode=mode,  # type: ignore[arg-type]  # WANDB_MODE may hold any name wandb knows
        id=resume_id,
        resume="allow" if resume_id else None,
    )
    run.define_metric(STEP_METRIC)
    run.define_metric(SAMPLES_KEY, step_metric=STEP_METRIC)  # the sample images, per step
    return run


_DEFINED: dict[str, set[str]] = {}  # run id -> metric names given an axis


def log_metrics(run: Any, metrics: dict[str, Any], step: int) -> None:
    """Chart every numeric value of ``metrics`` against the optimizer step.

    Names seen for the first time get ``define_metric`` (x axis ``step``, and a summary
    for the known ones: min loss, mean throughput / data wait / MFU, max memory), so a
    metric added to the loop's report later (GPU memory, MFU) is charted without changes
    here. Booleans and non-numbers are left out. ``run`` None: nothing is logged.
    """
    if run is None:
        return
    charts = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != STEP_METRIC
    }
    defined = _DEFINED.setdefault(run.id, set())
    for name in sorted(charts.keys() - defined):
        summary = _summary(name)
        if summary:
            run.define_metric(name, step_metric=STEP_METRIC, summary=summary)
        else:
            run.define_metric(name, step_metric=STEP_METRIC)
        defined.add(name)
    run.log({STEP_METRIC: step, **charts}, step=step)


class SampleGrids:
    """EMA sample grids on rank 0, sampled on the CPU in ``train.sample_dtype``.

    The stage and (for base stages) the text encoder are built on the first grid and
    reused by every later one: loading the encoder per grid cost seconds each time.

    Args:
        cfg: the run config (stage, text encoder, sample prompts).
        text_dim: width D of the text embeddings.
        run_dir: where ``samples/step_*.png`` go (None: not saved).
        count: most images per grid.
        encoder: a loaded text encoder (default: built from ``cfg.text`` on first use).
    """

    def __init__(
        self,
        cfg: RunConfig,
        *,
        text_dim: int,
        run_dir: str | None = None,
        count: int = 4,
        encoder: Any = None,
    ) -> None:
        self.cfg, self.text_dim, self.run_dir, self.count = cfg, text_dim, run_dir, count
        self.encoder = encoder
        self.stage: Any = None

    def _encode(self, prompts: list[str]) -> Any:
        if self.encoder is None:
            from imagen_ray.text import FrozenTextEncoder

            self.encoder = FrozenTextEncoder(self.cfg.text)
        return self.encoder.encode(prompts)

    @torch.no_grad()
    def log(
        self, weights: dict[str, Tensor], batch: dict[str, Tensor], step: int, wandb_run: Any
    ) -> Path | None:
        """Sample with the EMA ``weights`` and log a grid (W&B and/or ``run_dir``).

        Base stages sample the fixed ``train.sample_prompts``; SR stages upsample the batch's
        low-res inputs with their captions' embeddings, shown as (low-res, sample, target).
        """
        from imagen_ray.cascade import Stage
        from imagen_ray.images import grid, model_to_uint8, save_image, to_pil

        cfg, count = self.cfg, self.count
        if self.stage is None:
            self.stage = Stage(cfg.stage, text_dim=self.text_dim)
        stage = self.stage.to(device="cpu", dtype=torch.float32)
        stage.load_state_dict(weights)  # EMA names are the Stage's ("unet.*")
        stage.to_inference(cfg.train.sample_dtype, "cpu")
        gens = [torch.Generator().manual_seed(i) for i in range(count)]
        if cfg.stage.is_sr:
            n = min(count, batch["image"].shape[0])
            out = stage.sample(
                batch["emb"][:n].float().cpu(),
                batch["mask"][:n].cpu(),
                lowres=batch["lowres"][:n].float().cpu(),
                generator=gens[:n],
                size=batch["image"].shape[-1],  # data.train_crop: the crop's side
            )
            cols = [batch["lowres"][:n].float().cpu(), out, batch["image"][:n].float().cpu()]
            captions = [f"#{i} low-res | sample | target" for i in range(n)]
        else:
            prompts = list(cfg.train.sample_prompts)[:count]
            enc = self._encode(prompts)
            out = stage.sample(enc.emb, enc.mask, generator=gens[: len(prompts)])
            cols = [out]
            captions = prompts
        tiles = [to_pil(model_to_uint8(c)) for c in cols]  # per column: B PIL images
        rows = [[col[i] for col in tiles] for i in range(cols[0].shape[0])]
        image = grid(rows, cell=cfg.stage.size)
        path = None
        if self.run_dir:
            path = save_image(image, Path(self.run_dir) / "samples" / f"step_{step:07d}.png")
        if wandb_run is not None:
            import wandb

            # One image per prompt (an SR row: low-res | sample | target) under one key, so
            # the media panel steps through the same prompts and seeds run after run.
            images = [
                wandb.Image(
                    row[0] if len(row) == 1 else grid([row], cell=cfg.stage.size), caption=caption
                )
                for row, caption in zip(rows, captions, strict=True)
            ]
            wandb_run.log({SAMPLES_KEY: images, STEP_METRIC: step}, step=step)
        return path
