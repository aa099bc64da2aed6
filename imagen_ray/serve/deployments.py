"""The model deployments: one text encoder, and ONE stage class bound once per cascade stage.

Both batch concurrent calls (max batch size and wait timeout from the ``serve:`` config)
with :class:`FreeBatcher`, which forms a batch when the model is free rather than when a
wait window ends. A call is one prompt; a batch is split into groups with identical
sampling settings (and negative-prompt use), and each group is one ``Stage.sample`` call
with one generator per example, so a prompt's image depends only on its own seed and
settings, never on what it was batched with.

Heavy libraries (torch, transformers, the cascade) are imported inside ``__init__`` and the
methods, so importing this module costs only Ray Serve.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ray import serve

log = logging.getLogger("ray.serve")


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


class FreeBatcher:
    """Dynamic batching that forms a batch when the model is free: every call waiting then
    (up to ``max_batch_size``) goes into the next forward pass.

    Why not ``@serve.batch``: Ray Serve's batcher (``ray/serve/batching.py``,
    ``_process_batches``) forms the next batch as soon as its wait window ends and only
    then waits for the running batch to finish, so under load it queues many small batches
    (measured at 16 concurrent clients: base-stage batches of 1-4, 13 of 22 of size 1) and
    the model never sees the requests that arrived while it was busy. Here one loop takes
    the first waiting call, waits at most ``wait_s`` for more when the queue is empty (the
    idle case), takes everything else queued, and runs ``fn`` on the replica's model thread.
    When a batch raises, its calls are run again one by one, so only a call that fails on its
    own gets the error (one bad prompt never fails the prompts it was batched with).

    Args:
        fn: ``fn(*columns) -> results``: one list per call argument, one result per call.
        pool: the replica's single model thread.
        max_batch_size: most calls per batch (1: no batching).
        wait_s: how long a lone call waits for company while the model is idle.
        stats: where formed batch sizes are counted.
    """

    POLL_S = 0.002  # queue check interval inside the wait window

    def __init__(
        self,
        fn: Callable[..., list[Any]],
        pool: ThreadPoolExecutor,
        max_batch_size: int,
        wait_s: float,
        stats: BatchStats,
    ) -> None:
        self.fn, self.pool, self.stats = fn, pool, stats
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        self.queue: asyncio.Queue[tuple[tuple[Any, ...], asyncio.Future[Any]]] = asyncio.Queue()
        self.loop_task: asyncio.Task[None] | None = None

    async def __call__(self, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if self.loop_task is None or self.loop_task.done():
            self.loop_task = loop.create_task(self._run())
        fut: asyncio.Future[Any] = loop.create_future()
        self.queue.put_nowait((args, fut))
        return await fut

    async def _next_batch(self) -> list[tuple[tuple[Any, ...], asyncio.Future[Any]]]:
        loop = asyncio.get_running_loop()
        items = [await self.queue.get()]
        deadline = loop.time() + self.wait_s
        while len(items) < self.max_batch_size:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
            elif loop.time() < deadline:
                await asyncio.sleep(min(self.POLL_S, deadline - loop.time()))
            else:
                break
        return [(a, f) for a, f in items if not f.done()]  # a cancelled caller is dropped

    async def _run(self) -> None:
        while True:
            items = await self._next_batch()
            if not items:
                continue
            self.stats.batches[len(items)] += 1
            columns = [list(col) for col in zip(*(a for a, _ in items), strict=True)]
            try:
                results = await self._call(columns, len(items))
            except Exception as e:
                if len(items) == 1:
                    if not items[0][1].done():
                        items[0][1].set_exception(e)
                    continue
                # One bad item must not fail its batch-mates: retry each call alone, so
                # only the calls that fail by themselves get an error. The loop lives on.
                log.warning(
                    "a batch of %d failed (%r); retrying its calls one by one", len(items), e
                )
                for args, f in items:
                    if f.done():
                        continue
                    try:
                        one = await self._call([[a] for a in args], 1)
                    except Exception as e1:
                        if not f.done():
                            f.set_exception(e1)
                    else:
                        if not f.done():
                            f.set_result(one[0])
                continue
            for (_, f), r in zip(items, results, strict=True):
                if not f.done():
                    f.set_result(r)

    async def _call(self, columns: list[list[Any]], n: int) -> list[Any]:
        """``fn(*columns)`` on the model thread; ``n`` results or an error."""
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.pool, self.fn, *columns)
        if len(results) != n:
            raise RuntimeError(f"{len(results)} results for a batch of {n}")
        return results


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
        self.stats = BatchStats()
        self.batcher = FreeBatcher(
            self._encode,
            _compute_thread(cfg.torch_threads),
            cfg.max_batch_size,
            cfg.batch_wait_timeout_s,
            self.stats,
        )

    async def encode(self, prompt: str, negative_prompt: str | None) -> dict[str, Any]:
        """``{"emb": (L, D), "mask": (L,), "neg_emb", "neg_mask", "truncated"}`` (``neg_*``
        None without a negative prompt). Tensors are on the CPU."""
        return await self.batcher(prompt, negative_prompt)

    def _encode(self, prompts: list[str], negatives: list[str | None]) -> list[dict[str, Any]]:
        try:
            return self._encode_batch(prompts, negatives)
        except Exception as e:
            if len(prompts) == 1:  # alone (the batcher retries a failed batch call by call)
                self._blame_input(prompts[0], negatives[0], e)
            raise

    def _blame_input(self, prompt: str, negative: str | None, e: Exception) -> None:
        """Raise a 422 :class:`RequestProblem` when the tokenizer rejects the prompt itself."""
        from imagen_ray.serve.problems import RequestProblem

        for field, text in (("prompts", prompt), ("negative_prompt", negative)):
            if text is None:
                continue
            try:
                self.encoder.tokenizer([text])
            except Exception as tok_error:
                raise RequestProblem(
                    f"{field}: the text encoder's tokenizer rejected the text "
                    f"({type(tok_error).__name__}: {str(tok_error)[:200]}); send plain text"
                ) from e

    def _encode_batch(
        self, prompts: list[str], negatives: list[str | None]
    ) -> list[dict[str, Any]]:
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


def _edit(edits: list[dict[str, Any] | None], i: int) -> dict[str, Any]:
    """Call ``i``'s edit (grouped with edits only, so present)."""
    e = edits[i]
    if e is None:
        raise ValueError(f"call {i} has no edit to read")
    return e


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class StageDeployment:
    """One cascade stage (base or super-resolution), loaded from its saved directory.

    ``generate(cond, lowres, sampling, seed, edit)`` -> (3, size, size) float image in
    [-1, 1]; ``edit`` (None: text-to-image) carries the image to edit, the mask, the strength
    and the resampling (:meth:`imagen_ray.serve.ingress.Ingress.generate`).

    Args:
        stage_dir: the stage directory (``config.json`` + ``model.safetensors``).
        index: the stage's position in the cascade, mixed into each prompt's seed by the
            generation plan's ``stage_generators`` (as in ``Cascade.generate``, so served
            images equal in-process ones).
        settings: the deployment's ``ServeStageDefaultsConfig.model_dump()`` (with its
            inference ``dtype``).
    """

    def __init__(self, stage_dir: str, index: int, settings: dict[str, Any]) -> None:
        import torch

        from imagen_ray.cascade import load_stage
        from imagen_ray.config import ServeStageDefaultsConfig, validate

        cfg = validate(ServeStageDefaultsConfig, settings, "serve.stages")
        torch.set_num_threads(cfg.torch_threads)
        self.device = torch.device("cuda" if cfg.num_gpus > 0 else "cpu")
        stage, _ = load_stage(stage_dir, device=self.device)
        self.stage = stage.to_inference(cfg.dtype, self.device)  # bf16 on a GPU by default
        self.index = index
        self.stats = BatchStats()
        self.batcher = FreeBatcher(
            self._generate,
            _compute_thread(cfg.torch_threads),
            cfg.max_batch_size,
            cfg.batch_wait_timeout_s,
            self.stats,
        )
        log.info(
            "stage %s (%d px) ready on %s in %s",
            self.stage.cfg.name,
            self.stage.cfg.size,
            self.device,
            self.stage.dtype,
        )

    async def generate(
        self,
        cond: dict[str, Any],
        lowres: Any,
        sampling: dict[str, Any],
        seed: int,
        edit: dict[str, Any] | None = None,
    ) -> Any:
        """One prompt's (3, size, size) image in [-1, 1], batched with concurrent calls."""
        return await self.batcher(cond, lowres, sampling, seed, edit)

    def _edit_inputs(
        self, rows: list[int], lowres: list[Any], edits: list[dict[str, Any] | None]
    ) -> tuple[Any, Any, Any]:
        """A group's (low-res input, init, keep) tensors: the edits' images and masks at this
        stage's sizes; an upscale's first stage takes the image as its low-res input."""
        import torch
        from PIL import Image

        from imagen_ray.cascade.edit import image_tensor, mask_tensor

        cfg = self.stage.cfg
        low = None
        if cfg.is_sr:
            low = torch.stack([
                lowres[i] if lowres[i] is not None
                else image_tensor(Image.fromarray(_edit(edits, i)["image"]), cfg.lowres_size or 0)
                for i in rows
            ])  # fmt: skip
        if edits[rows[0]] is None:  # a group is all edits with one strength, or none
            return low, None, None
        images = [Image.fromarray(_edit(edits, i)["image"]) for i in rows]
        init = torch.stack([image_tensor(x, cfg.size) for x in images])
        masks = [_edit(edits, i)["mask"] for i in rows]
        keep = None
        if any(m is not None for m in masks):
            keep = torch.stack([
                torch.zeros(1, cfg.size, cfg.size, dtype=torch.bool) if m is None
                else ~mask_tensor(m, cfg.size) for m in masks
            ])  # fmt: skip
        return low, init, keep

    def _generate(
        self,
        conds: list[dict[str, Any]],
        lowres: list[Any],
        sampling: list[dict[str, Any]],
        seeds: list[int],
        edits: list[dict[str, Any] | None],
    ) -> list[Any]:
        import torch

        from imagen_ray.cascade.plan import stage_generators
        from imagen_ray.config import SamplingConfig

        # Calls with other settings (with/without a negative prompt, another edit strength
        # or resampling) must not share a sampler run: group them, one Stage.sample each.
        groups: dict[tuple[str, bool, tuple[float, int] | None], list[int]] = {}
        for i, (c, settings, e) in enumerate(zip(conds, sampling, edits, strict=True)):
            how = None if e is None else (
                float(e["strength"]), int(e["resample_times"]) if e["mask"] is not None else 1
            )  # fmt: skip
            key = (json.dumps(settings, sort_keys=True), c["neg_emb"] is not None, how)
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(conds)
        for (settings_json, has_neg, how), rows in groups.items():
            # Resolved and validated by the ingress's plan; rebuilt typed after the Ray hop.
            sampling_cfg = SamplingConfig.model_validate(json.loads(settings_json))
            emb = torch.stack([conds[i]["emb"] for i in rows])  # (B, L, D)
            mask = torch.stack([conds[i]["mask"] for i in rows])  # (B, L)
            neg_emb = torch.stack([conds[i]["neg_emb"] for i in rows]) if has_neg else None
            neg_mask = torch.stack([conds[i]["neg_mask"] for i in rows]) if has_neg else None
            low, init, keep = self._edit_inputs(rows, lowres, edits)
            x = self.stage.sample(
                emb,
                mask,
                lowres=low,
                neg_emb=neg_emb,
                neg_mask=neg_mask,
                sampling=sampling_cfg,
                generator=stage_generators([seeds[i] for i in rows], self.index, self.device),
                init=init,
                strength=1.0 if how is None else how[0],
                keep=keep,
                resample_times=1 if how is None else how[1],
            )  # (B, 3, size, size) in [-1, 1]
            self.stats.forward_passes[len(rows)] += 1
            for r, i in enumerate(rows):
                out[i] = x[r].float().cpu()
        return out

    def get_stats(self) -> dict[str, Any]:
        return self.stats.as_dict()
