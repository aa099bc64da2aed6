"""The ingress deployment: validates a request, fans it out per prompt, encodes the images.

Each prompt travels ``encoder -> stage 0 -> stage 1 -> ...`` as its own chain of
``DeploymentHandle`` calls (a ``DeploymentResponse`` is passed straight into the next call,
so tensors go replica to replica without passing through here); the batched deployments
merge concurrent prompts, from one request or many, into shared forward passes.
"""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from imagen_ray.serve.schemas import GeneratedImage, GenerateRequest, GenerateResponse


class RequestProblem(ValueError):
    """A request that is well-formed JSON but asks for something this server will not do."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def read_token(env: str, file: str | None) -> str:
    """The bearer token: the environment variable ``env`` if set, else the file's contents."""
    import os

    token = os.environ.get(env, "").strip()
    if not token and file:
        p = Path(file).expanduser()
        if not p.is_file():
            raise ValueError(
                f"serve.auth.token_file={file!r} does not exist; write the token there or set "
                f"the environment variable {env}"
            )
        token = p.read_text().strip()
    if not token:
        raise ValueError(
            f"serve.auth.enabled is true but no token was found: set the environment variable "
            f"{env} (serve.auth.token_env) or serve.auth.token_file, or set "
            "serve.auth.enabled=false"
        )
    return token


def encode_image(pixels: Any, fmt: str) -> bytes:
    """(H, W, 3) uint8 array -> PNG / JPEG (quality 95) / WebP (lossless) bytes."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "jpeg":
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress()
class Ingress:
    """FastAPI front of the cascade (routes in :mod:`imagen_ray.serve.api`).

    Args:
        encoder: handle of the text-encoder deployment.
        stages: handles of the stage deployments, base first.
        serve_cfg: ``ServeConfig.model_dump()``.
        cascade_dir: the saved cascade (read for stage names, sizes and defaults).
    """

    def __init__(
        self,
        encoder: DeploymentHandle,
        stages: list[DeploymentHandle],
        serve_cfg: dict[str, Any],
        cascade_dir: str,
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
        if len(stages) != len(self.names):
            raise ValueError(f"{len(stages)} stage deployments for stages {self.names}")
        self.cascade_dir = cascade_dir
        auth = self.cfg.auth
        self.token = read_token(auth.token_env, auth.token_file) if auth.enabled else None

    def __serve_build_asgi_app__(self) -> Any:
        from imagen_ray.serve.api import create_app

        return create_app(self)

    # ------------------------------------------------------------------ metadata

    def models(self) -> dict[str, Any]:
        """What ``GET /v1/models`` shows: stages, sizes, encoder, defaults and limits."""
        return {
            "cascade": Path(self.cascade_dir).name,
            "encoder": self.text.model_dump(mode="json"),
            "stages": [
                {
                    "name": s.name,
                    "size": s.size,
                    "lowres_size": s.lowres_size,
                    "sampling": s.sampling.model_dump(mode="json"),
                }
                for s in self.stage_cfgs
            ],
            "limits": {
                "max_prompts": self.cfg.max_prompts,
                "max_prompt_chars": self.cfg.max_prompt_chars,
                "max_prompt_tokens": self.text.max_length,
                "max_steps": self.cfg.max_steps,
                "max_body_bytes": self.cfg.max_body_bytes,
                "seed": [0, 2**32 - 1],
            },
            "formats": ["png", "jpeg", "webp"],
            "default_format": self.cfg.default_format,
            "auth": self.token is not None,
        }

    async def stats(self) -> dict[str, Any]:
        """Batch sizes recorded by the encoder replica and each stage replica that answer."""
        calls = [self.encoder.get_stats.remote()] + [h.get_stats.remote() for h in self.stages]
        got = await asyncio.gather(*calls)
        return {"encoder": got[0], "stages": dict(zip(self.names, got[1:], strict=True))}

    # ------------------------------------------------------------------ generation

    def check(self, req: GenerateRequest) -> tuple[list[str], int, list[dict[str, Any]]]:
        """Apply the config's limits and the cascade's stage names to a parsed request.

        Returns:
            (prompts, index of the last stage, per-stage sampling settings as dicts).

        Raises:
            RequestProblem: naming the field, the bad value and what is allowed.
        """
        from pydantic import ValidationError

        from imagen_ray.cascade import resolve_sampling

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
            if not p.strip():
                raise RequestProblem(f"prompts[{i}]: the prompt is empty")
            if len(p) > cfg.max_prompt_chars:
                raise RequestProblem(
                    f"prompts[{i}]: {len(p)} characters, at most "
                    f"serve.max_prompt_chars={cfg.max_prompt_chars}"
                )
        if req.negative_prompt is not None and len(req.negative_prompt) > cfg.max_prompt_chars:
            raise RequestProblem(
                f"negative_prompt: {len(req.negative_prompt)} characters, at most "
                f"serve.max_prompt_chars={cfg.max_prompt_chars}"
            )
        if req.until is not None and req.until not in self.names:
            raise RequestProblem(f"until: unknown stage {req.until!r}; stages are {self.names}")
        last = self.names.index(req.until) if req.until is not None else len(self.names) - 1
        unknown = sorted(set(req.stages) - set(self.names))
        if unknown:
            raise RequestProblem(f"stages: unknown stage(s) {unknown}; stages are {self.names}")
        sampling = []
        for s in self.stage_cfgs[: last + 1]:
            given = req.stages.get(s.name)
            over = given.model_dump(exclude_none=True) if given is not None else {}
            if over.get("steps", 0) > cfg.max_steps:
                raise RequestProblem(
                    f"stages.{s.name}.steps: {over['steps']} is above serve.max_steps="
                    f"{cfg.max_steps}"
                )
            try:
                sampling.append(resolve_sampling(s.sampling, over).model_dump(mode="json"))
            except (ValueError, ValidationError) as e:  # pragma: no cover - schema mirrors it
                raise RequestProblem(f"stages.{s.name}: {e}") from None
        return prompts, last, sampling

    async def generate(self, req: GenerateRequest) -> GenerateResponse:
        """Run a checked request through the deployments; one chain of calls per prompt."""
        import numpy as np

        t0 = time.perf_counter()
        prompts, last, sampling = self.check(req)
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        fmt = req.format or self.cfg.default_format

        async def one(prompt: str, seed_i: int) -> tuple[np.ndarray, bool]:
            cond = self.encoder.encode.remote(prompt, req.negative_prompt)
            x: Any = None
            for i in range(last + 1):
                x = self.stages[i].generate.remote(cond, x, sampling[i], seed_i)
            image = await x  # (3, H, W) in [-1, 1]
            enc = await cond
            # The same conversion as CascadeOutput.images / .uint8().
            u8 = ((image + 1) / 2).clamp(0, 1).mul(255).round().byte()
            return u8.permute(1, 2, 0).numpy(), bool(enc["truncated"])

        results = await asyncio.gather(*(one(p, seed + i) for i, p in enumerate(prompts)))
        images, warnings = [], []
        for i, (prompt, (pixels, truncated)) in enumerate(zip(prompts, results, strict=True)):
            data = encode_image(pixels, fmt)
            images.append(
                GeneratedImage(
                    prompt=prompt,
                    seed=seed + i,
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
        names = self.names[: last + 1]
        settings = {
            "seed": seed,
            "negative_prompt": req.negative_prompt,
            "stages": names,
            "sampling": dict(zip(names, sampling, strict=True)),
            "until": names[-1],
            "format": fmt,
        }
        return GenerateResponse(
            images=images,
            settings=settings,
            warnings=warnings,
            seconds=round(time.perf_counter() - t0, 4),
        )
