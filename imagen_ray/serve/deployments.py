"""The model deployments: one text encoder, and ONE stage class bound once per cascade stage.

Both batch concurrent calls with ``@serve.batch`` (max batch size and wait timeout from the
``serve:`` config, set on the batch handler in ``__init__``). A call is one prompt; a batch
is split into groups with identical sampling settings (and negative-prompt use), and each
group is one ``Stage.sample`` call with one generator per example, so a prompt's image
depends only on its own seed and settings, never on what it was batched with.

Heavy libraries (torch, transformers, the cascade) are imported inside ``__init__`` and the
methods, so importing this module costs only Ray Serve.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

log = logging.getLogger("ray.serve")

# Ray's type hints describe @serve.batch for one-argument handlers only; ours take several
# batched arguments (which Serve supports), so the decorator is used untyped.
batch: Any = serve.batch


class BatchStats:
    """Sizes of the batches a replica formed (calls per batch, examples per forward pass)."""

    def __init__(self) -> None:
        self.batches: Counter[int] = Counter()
        self.forward_passes: Counter[int] = Counter()

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": {str(k): v for k, v in sorted(self.batches.items())},
            "forward_passes": {str(k): v for k, v in sorted(self.forward_passes.items())},
            "max_batch": max(self.batches, default=0),
        }


def _compute_thread(threads: int) -> ThreadPoolExecutor:
    """One worker thread for the model, so the replica's event loop stays free to queue the
    next batch (and answer health checks) while a batch runs; torch threads set in it."""

    def init() -> None:
        import torch

        torch.set_num_threads(threads)

    return ThreadPoolExecutor(max_workers=1, initializer=init, thread_name_prefix="model")


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class TextEncoderDeployment:
    """The frozen text encoder. ``encode(prompt, negative_prompt)`` -> embeddings of one prompt.

    Args:
        text: the cascade's text encoder config (``TextEncoderConfig.model_dump()``).
        settings: the deployment's ``ServeDeploymentConfig.model_dump()``.
    """

    def __init__(self, text: dict[str, Any], settings: dict[str, Any]) -> None:
        import torch

        from imagen_ray.config import ServeDeploymentConfig, TextEncoderConfig, validate
        from imagen_ray.text import FrozenTextEncoder

        cfg = validate(ServeDeploymentConfig, settings, "serve.encoder")
        torch.set_num_threads(cfg.torch_threads)
        device = "cuda" if cfg.num_gpus > 0 else "cpu"
        self.encoder = FrozenTextEncoder(validate(TextEncoderConfig, text, "text"), device)
        self.encode.set_max_batch_size(cfg.max_batch_size)
        self.encode.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.pool = _compute_thread(cfg.torch_threads)
        self.stats = BatchStats()

    @batch
    async def encode(
        self, prompts: list[str], negative_prompts: list[str | None]
    ) -> list[dict[str, Any]]:
        """Per call: ``{"emb": (L, D), "mask": (L,), "neg_emb", "neg_mask", "truncated"}``
        (``neg_*`` None without a negative prompt). Tensors are on the CPU."""
        self.stats.batches[len(prompts)] += 1
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._encode, prompts, negative_prompts
        )

    def _encode(self, prompts: list[str], negatives: list[str | None]) -> list[dict[str, Any]]:
        enc = self.encoder.encode(prompts)
        self.stats.forward_passes[len(prompts)] += 1
        with_neg = [i for i, n in enumerate(negatives) if n is not None]
        neg_rows: dict[int, int] = {}
        neg = None
        if with_neg:
            neg = self.encoder.encode([negatives[i] or "" for i in with_neg])
            neg_rows = {i: r for r, i in enumerate(with_neg)}
        out = []
        for i in range(len(prompts)):
            r = neg_rows.get(i)
            out.append(
                {
                    "emb": enc.emb[i].cpu(),  # (L, D)
                    "mask": enc.mask[i].cpu(),  # (L,)
                    "neg_emb": None if neg is None or r is None else neg.emb[r].cpu(),
                    "neg_mask": None if neg is None or r is None else neg.mask[r].cpu(),
                    "truncated": bool(enc.truncated[i]),
                }
            )
        return out

    def get_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class StageDeployment:
    """One cascade stage (base or super-resolution), loaded from its saved directory.

    ``generate(cond, lowres, sampling, seed)`` -> (3, size, size) float image in [-1, 1].

    Args:
        stage_dir: the stage directory (``config.json`` + ``model.safetensors``).
        index: the stage's position in the cascade (mixed into the per-example seeds exactly
            as ``Cascade.generate`` does, so served images equal in-process ones).
        settings: the deployment's ``ServeDeploymentConfig.model_dump()``.
    """

    def __init__(self, stage_dir: str, index: int, settings: dict[str, Any]) -> None:
        import torch

        from imagen_ray.cascade import load_stage
        from imagen_ray.config import ServeDeploymentConfig, validate

        cfg = validate(ServeDeploymentConfig, settings, "serve.stages")
        torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device("cuda" if cfg.num_gpus > 0 else "cpu")
        self.stage, _ = load_stage(stage_dir, device=self.device)
        self.index = index
        self.generate.set_max_batch_size(cfg.max_batch_size)
        self.generate.set_batch_wait_timeout_s(cfg.batch_wait_timeout_s)
        self.pool = _compute_thread(cfg.torch_threads)
        self.stats = BatchStats()
        log.info(
            "stage %s (%d px) ready on %s", self.stage.cfg.name, self.stage.cfg.size, self.device
        )

    @batch
    async def generate(
        self,
        conds: list[dict[str, Any]],
        lowres: list[Any],
        sampling: list[dict[str, Any]],
        seeds: list[int],
    ) -> list[Any]:
        self.stats.batches[len(conds)] += 1
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, self._generate, conds, lowres, sampling, seeds
        )

    def _generate(
        self,
        conds: list[dict[str, Any]],
        lowres: list[Any],
        sampling: list[dict[str, Any]],
        seeds: list[int],
    ) -> list[Any]:
        import torch

        from imagen_ray.cascade import stage_generators
        from imagen_ray.config import SamplingConfig

        # Calls with other settings (or with/without a negative prompt) must not share a
        # sampler run: group them, one Stage.sample per group.
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, (c, settings) in enumerate(zip(conds, sampling, strict=True)):
            key = (json.dumps(settings, sort_keys=True), c["neg_emb"] is not None)
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(conds)
        for (settings_json, has_neg), rows in groups.items():
            sampling_cfg = SamplingConfig.model_validate(json.loads(settings_json))
            emb = torch.stack([conds[i]["emb"] for i in rows])  # (B, L, D)
            mask = torch.stack([conds[i]["mask"] for i in rows])  # (B, L)
            neg_emb = torch.stack([conds[i]["neg_emb"] for i in rows]) if has_neg else None
            neg_mask = torch.stack([conds[i]["neg_mask"] for i in rows]) if has_neg else None
            low = torch.stack([lowres[i] for i in rows]) if self.stage.cfg.is_sr else None
            x = self.stage.sample(
                emb,
                mask,
                lowres=low,
                neg_emb=neg_emb,
                neg_mask=neg_mask,
                sampling=sampling_cfg,
                generator=stage_generators([seeds[i] for i in rows], self.index, self.device),
            )  # (B, 3, size, size) in [-1, 1]
            self.stats.forward_passes[len(rows)] += 1
            for r, i in enumerate(rows):
                out[i] = x[r].float().cpu()
        return out

    def get_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()
