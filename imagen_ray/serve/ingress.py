"""The ingress deployment: plans a request, fans it out per prompt, encodes the images.

A request is checked against the serve limits and planned with
:func:`imagen_ray.cascade.plan.plan_generation` (seeds, stages up to ``until``, resolved
sampling settings), the same plan ``Cascade.generate`` makes, so a served image equals the
in-process one for the same settings; pixels come from :func:`imagen_ray.images.model_to_uint8`
and bytes from :func:`imagen_ray.images.encode_image`.

Each prompt travels ``encoder -> stage 0 -> stage 1 -> ...`` as its own chain of
``DeploymentHandle`` calls (a ``DeploymentResponse`` is passed straight into the next call,
so tensors go replica to replica without passing through here); the batched deployments
merge concurrent prompts, from one request or many, into shared forward passes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from imagen_ray.serve.problems import RequestProblem, unicode_problem
from imagen_ray.serve.schemas import GeneratedImage, GenerateRequest, GenerateResponse

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from imagen_ray.cascade.plan import GenerationPlan


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Ingress:
    """FastAPI front of the cascade (routes in :mod:`imagen_ray.serve.api`).

    Args:
        encoder: handle of the text-encoder deployment.
        stages: handles of the stage deployments, base first.
        serve_cfg: ``ServeConfig.model_dump()``.
        cascade_dir: the saved cascade (read for stage names, sizes and defaults).
        token_digest: SHA-256 (hex) of the bearer token, or None when auth is off; the
            driver read the token, so no replica reads the environment or a token file.
    """

    def __init__(
        self,
        encoder: DeploymentHandle,
        stages: list[DeploymentHandle],
        serve_cfg: dict[str, Any],
        cascade_dir: str,
        token_digest: str | None = None,
    ) -> None:
        from imagen_ray.cascade.io import read_cascade_manifest, read_stage_meta
        from imagen_ray.config import ServeConfig, StageConfig, TextEncoderConfig, validate

        self.cfg = validate(ServeConfig, serve_cfg, "serve")
        self.encoder = encoder
        self.stages = stages
        metas = [read_stage_meta(d) for d in read_cascade_manifest(cascade_dir)]
        self.stage_cfgs = [validate(StageConfig, m["stage"], "stage") for m in metas]
        self.text = validate(TextEncoderConfig, metas[0]["text"], "text")
        self.names = [s.name for s in self.stage_cfgs]
        self.stage_sizes = [(s.name, s.size) for s in self.stage_cfgs]
        if len(stages) != len(self.names):
            raise ValueError(f"{len(stages)} stage deployments for stages {self.names}")
        self.cascade_dir = cascade_dir
        if self.cfg.auth.enabled and token_digest is None:
            raise ValueError("serve.auth.enabled is true but the ingress got no token digest")
        self.token_digest = token_digest if self.cfg.auth.enabled else None
        self.max_body_bytes = self.cfg.max_body_bytes

    def __serve_build_asgi_app__(self) -> Any:
        from imagen_ray.serve.api import create_app

        return create_app(self)

    # ------------------------------------------------------------------ metadata

    def models(self) -> dict[str, Any]:
        """What ``GET /v1/models`` shows: stages, sizes, encoder, defaults and limits."""
        from imagen_ray.cascade.plan import SEED_MAX
        from imagen_ray.images import IMAGE_FORMATS

        return {
            "cascade": Path(self.cascade_dir).name,
            "encoder": self.text.model_dump(mode="json"),
            "stages": [
                {
                    "name": s.name,
                    "size": s.size,
                    "lowres_size": s.lowres_size,
                    "sampling": s.sampling.model_dump(mode="json"),
                    "dtype": self.cfg.stage_dtype(s.name),
                }
                for s in self.stage_cfgs
            ],
            "limits": {
                "max_prompts": self.cfg.max_prompts,
                "max_prompt_chars": self.cfg.max_prompt_chars,
                "max_prompt_tokens": self.text.max_length,
                "max_steps": self.cfg.max_steps,
                "max_body_bytes": self.cfg.max_body_bytes,
                "seed": [0, SEED_MAX],
            },
            "formats": list(IMAGE_FORMATS),
            "default_format": self.cfg.default_format,
            "auth": self.token_digest is not None,
        }

    async def stats(self) -> dict[str, Any]:
        """Batch sizes recorded by the encoder replica and each stage replica that answer."""
        calls = [self.encoder.get_stats.remote()] + [h.get_stats.remote() for h in self.stages]
        got = await asyncio.gather(*calls)
        return {"encoder": got[0], "stages": dict(zip(self.names, got[1:], strict=True))}

    # ------------------------------------------------------------------ generation

    def check(self, req: GenerateRequest, edit: dict[str, Any] | None = None) -> GenerationPlan:
        """Apply the config's limits to a parsed request and plan it against the cascade
        (with ``edit``, the decoded edit of :meth:`generate`; an empty prompt is allowed).

        Returns:
            The generation plan (prompts, seeds, stages that run, their sampling settings);
            a request without a seed gets a random one.

        Raises:
            RequestProblem: naming the field, the bad value and what is allowed.
        """
        from imagen_ray.cascade.plan import PlanError, plan_generation
        from imagen_ray.config import ConfigError

        cfg = self.cfg
        prompts = req.prompt_list()
        if not prompts:
            raise RequestProblem("prompts: the list is empty; send at least one prompt")
        if len(prompts) > cfg.max_prompts:
            raise RequestProblem(
                f"prompts: {len(prompts)} prompts, at most serve.max_prompts={cfg.max_prompts} "
                "per request; split them over several requests"
            )
        for i, p in enumerate(prompts):
            bad = unicode_problem(f"prompts[{i}]", p)
            if bad:
                raise RequestProblem(bad)
            if not p.strip() and edit is None:
                raise RequestProblem(f"prompts[{i}]: the prompt is empty")
            if len(p) > cfg.max_prompt_chars:
                raise RequestProblem(
                    f"prompts[{i}]: {len(p)} characters, at most "
                    f"serve.max_prompt_chars={cfg.max_prompt_chars}"
                )
        bad = unicode_problem("negative_prompt", req.negative_prompt or "")
        if bad:
            raise RequestProblem(bad)
        if req.negative_prompt is not None and len(req.negative_prompt) > cfg.max_prompt_chars:
            raise RequestProblem(
                f"negative_prompt: {len(req.negative_prompt)} characters, at most "
                f"serve.max_prompt_chars={cfg.max_prompt_chars}"
            )
        overrides = {name: s.model_dump(exclude_none=True) for name, s in req.stages.items()}
        try:
            plan = plan_generation(
                self.stage_cfgs,
                prompts,
                seed=req.seed,
                until=req.until,
                sampling=overrides,
                negative_prompt=req.negative_prompt,
                edit=None if edit is None else {
                    "images": [True] * len(prompts),
                    "masks": [edit["mask"] is not None] * len(prompts),
                    "strength": edit["strength"],
                    "start": edit["start"],
                    "resample_times": edit["resample_times"],
                },
            )  # fmt: skip
        except PlanError as e:  # the request calls the plan's `sampling` `stages`
            field = "stages" if e.field == "sampling" else e.field
            raise RequestProblem(f"{field}: {e.message}") from None
        except ConfigError as e:  # pragma: no cover - the schema has SamplingConfig's ranges
            raise RequestProblem(f"stages: {e}") from None
        for name in plan.stages:
            steps = overrides.get(name, {}).get("steps", 0)
            if steps > cfg.max_steps:
                raise RequestProblem(
                    f"stages.{name}.steps: {steps} is above serve.max_steps={cfg.max_steps}"
                )
        return plan

    def _problem(self, e: BaseException) -> BaseException:
        """The answer for an error from a deployment call: a 4xx the deployment blamed on
        the request's input; a 503 with Retry-After when a stage's queue is full, or when a
        replica died under the request (Serve starts another; a retry gets it); else ``e``
        (a 500 for this request alone)."""
        from ray.serve.exceptions import BackPressureError

        cause = getattr(e, "cause", None) or e  # a RayTaskError carries the replica's error
        if isinstance(cause, RequestProblem):
            return RequestProblem(cause.message, cause.status, cause.headers)
        wait = self.cfg.retry_after_s
        retry = {"Retry-After": str(max(1, math.ceil(wait)))}
        if isinstance(cause, BackPressureError) or isinstance(e, BackPressureError):
            return RequestProblem(
                "the server is overloaded: a stage's queue is full "
                f"(serve.stage_defaults.max_queued_requests); retry in {wait:g} s",
                503,
                retry,
            )
        if _replica_died(e):
            log.warning("a replica died under a request (%s): answered 503", type(cause).__name__)
            return RequestProblem(
                "a model replica stopped while it held this request; the server is starting "
                f"another: retry in {wait:g} s",
                503,
                retry,
            )
        return e

    async def generate(
        self, req: GenerateRequest, edit: dict[str, Any] | None = None
    ) -> GenerateResponse:
        """Run a checked request through the deployments; one chain of calls per prompt.

        Args:
            req: the parsed request.
            edit: an edit of every prompt: ``{"image": (H, W, 3) uint8, "mask": (H, W)
                bool (True: repaint) or None, "strength" (None: the plan's default),
                "start", "resample_times"}`` (decoded by :mod:`imagen_ray.serve.uploads`).
        """
        import numpy as np

        from imagen_ray.images import encode_image, model_to_uint8

        t0 = time.perf_counter()
        plan = self.check(req, edit)
        sampling = plan.sampling_json()
        fmt = req.format or self.cfg.default_format
        payload = _stage_edit(plan, edit)

        pending: list[Any] = []  # every DeploymentResponse of this request

        async def one(prompt: str, seed: int) -> tuple[np.ndarray, bool]:
            cond = self.encoder.encode.remote(prompt, plan.negative_prompt)
            pending.append(cond)
            x: Any = None
            for j in range(plan.last + 1):
                k = plan.first + j
                x = self.stages[k].generate.remote(cond, x, sampling[j], seed, payload)
                pending.append(x)
            image = await x  # (3, H, W) in [-1, 1]
            enc = await cond
            return model_to_uint8(image), bool(enc["truncated"])  # (H, W, 3) uint8

        try:
            results = await asyncio.gather(
                *(one(p, s) for p, s in zip(plan.prompts, plan.seeds, strict=True))
            )
        except BaseException as e:
            # The client went away (the proxy cancels this task on disconnect or after
            # serve.request_timeout_s) or a prompt failed: drop the work still queued or
            # running for this request's other calls.
            for r in pending:
                # cancel() re-raises the error of a call that never ran (BackPressureError)
                with contextlib.suppress(Exception):
                    r.cancel()
            answer = self._problem(e)
            if answer is e:
                raise
            raise answer from None
        images, warnings = [], []
        for i, (prompt, seed, (pixels, truncated)) in enumerate(
            zip(plan.prompts, plan.seeds, results, strict=True)
        ):
            # PNG/WebP of a large image takes seconds: off the event loop.
            data = await asyncio.to_thread(encode_image, pixels, fmt)
            images.append(
                GeneratedImage(
                    prompt=prompt,
                    seed=seed,
                    width=pixels.shape[1],
                    height=pixels.shape[0],
                    format=fmt,
                    truncated=truncated,
                    image=base64.b64encode(data).decode("ascii"),
                )
            )
            if truncated:
                warnings.append(
                    f"prompts[{i}] is longer than the encoder's {self.text.max_length} tokens "
                    "and was truncated"
                )
        settings = _settings(plan, sampling, fmt)
        return GenerateResponse(
            images=images,
            settings=settings,
            warnings=warnings,
            seconds=round(time.perf_counter() - t0, 4),
        )


def _stage_edit(plan: GenerationPlan, edit: dict[str, Any] | None) -> dict[str, Any] | None:
    """What each stage call of an edit carries: the decoded image and mask, the planned
    strength and resampling (None for text-to-image)."""
    if edit is None or plan.edit is None:
        return None
    return {
        "image": edit["image"],
        "mask": edit["mask"],
        "strength": plan.edit.strengths[0],
        "resample_times": plan.edit.resample_times,
    }


def _settings(plan: GenerationPlan, sampling: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """The response's ``settings``: everything that reproduces its images."""
    names = list(plan.stages)
    settings: dict[str, Any] = {
        "seed": plan.seeds[0],
        "negative_prompt": plan.negative_prompt,
        "stages": names,
        "sampling": dict(zip(names, sampling, strict=True)),
        "until": names[-1],
        "format": fmt,
    }
    if plan.edit is not None:
        settings["edit"] = {
            "strength": plan.edit.strengths[0],
            "mask": any(plan.edit.masks),
            "start": names[0],
            "resample_times": plan.edit.resample_times,
        }
    return settings


def _replica_died(e: BaseException) -> bool:
    """Whether a deployment call failed because a replica died or became unreachable: a
    ``RayActorError`` / ``ObjectLostError`` anywhere in the error's chain, or Serve's own
    ``RayServeException`` for a call whose upstream replica died (it carries that error only
    as text: "an upstream actor died")."""
    from ray.exceptions import ObjectLostError, RayActorError
    from ray.serve.exceptions import RayServeException

    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, (RayActorError, ObjectLostError)):
            return True
        if isinstance(x, RayServeException) and "actor died" in str(x):
            return True
        todo += [x.__cause__, x.__context__, getattr(x, "cause", None)]
    return False
