"""The cascade: a frozen text encoder followed by a base stage and super-resolution stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from imagen_ray import storage
from imagen_ray.cascade.edit import EditInputs, ImageLike
from imagen_ray.cascade.io import (
    CheckpointError,
    check_chain,
    load_stage,
    save_cascade_manifest,
    save_stage,
    stage_dirs,
)
from imagen_ray.cascade.plan import (
    GenerationPlan,
    SamplingOverrides,
    last_stage,
    plan_generation,
)
from imagen_ray.cascade.stage import Stage
from imagen_ray.config import CascadeConfig, SamplingConfig, TextEncoderConfig
from imagen_ray.images import to_uint8, unit_range


class Encoding(Protocol):
    emb: Tensor  # (B, L, D)
    mask: Tensor  # (B, L) bool
    truncated: list[bool]


class TextEncoder(Protocol):
    """What the cascade needs of a text encoder (``imagen_ray.text.FrozenTextEncoder``)."""

    dim: int

    def encode(self, prompts: Sequence[str]) -> Encoding: ...


ProgressFn = Callable[[dict[str, Any]], None]


def _edits(image: object, mask: object, strength: object, start: object) -> bool:
    """Whether a generate() call edits (anything but plain text-to-image)."""
    return image is not None or mask is not None or strength != 1.0 or start is not None


@dataclass
class CascadeOutput:
    """Images of every stage that ran, and the settings that made them.

    Attributes:
        images: per stage, (B, 3, H, W) float in [0, 1] on the CPU.
        stages: the stage names, in order.
        sampling: per stage, the sampling settings used (JSON-able dicts).
        seeds: the per-prompt seeds.
        truncated: per prompt, whether the text encoder truncated it.
    """

    images: list[Tensor]
    stages: list[str]
    sampling: list[dict[str, Any]]
    seeds: list[int]
    truncated: list[bool] = field(default_factory=list)

    def uint8(self, stage: int = -1) -> np.ndarray:
        """Images of one stage as (B, H, W, 3) uint8 (what PIL and W&B take)."""
        return to_uint8(self.images[stage])


class Cascade(nn.Module):
    """Text encoder + stages (base first).

    Args:
        text: the text encoder config every stage was trained with.
        stages: the stages in order; sizes must chain (checked).
        encoder: a loaded text encoder; built from ``text`` on first use when omitted.
    """

    def __init__(
        self,
        text: TextEncoderConfig,
        stages: Sequence[Stage],
        encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.config = check_chain(text, [s.cfg for s in stages])
        self.text = text
        self.stages = nn.ModuleList(stages)
        self._encoder = encoder

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, cfg: CascadeConfig, *, encoder: TextEncoder | None = None, seed: int = 0
    ) -> Cascade:
        """A randomly initialised cascade (for training from scratch, tests, benchmarks)."""
        if encoder is not None:
            dim = encoder.dim
        elif cfg.text.dim is not None:
            dim = cfg.text.dim
        else:
            from imagen_ray.text import text_dim  # transformers only when needed

            dim = text_dim(cfg.text)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            stages = [Stage(s, text_dim=dim) for s in cfg.stages]
        return cls(cfg.text, stages, encoder)

    @property
    def encoder(self) -> TextEncoder:
        if self._encoder is None:
            from imagen_ray.text import FrozenTextEncoder  # transformers only when needed

            self._encoder = FrozenTextEncoder(self.text, device=self.device)
        return self._encoder

    @property
    def stage_list(self) -> list[Stage]:
        """The stages, typed (``self.stages`` is the ``nn.ModuleList`` holding them)."""
        return [s for s in self.stages if isinstance(s, Stage)]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def stage_index(self, name_or_index: str | int | None) -> int:
        """Index of a stage given by name or index (None: the last stage)."""
        return last_stage([s.cfg.name for s in self.stage_list], name_or_index)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str | None = None,
        seed: int | Sequence[int] = 0,
        sampling: SamplingOverrides | None = None,
        until: str | int | None = None,
        progress: ProgressFn | None = None,
        image: ImageLike | Sequence[ImageLike | None] | None = None,
        mask: ImageLike | Sequence[ImageLike | None] | None = None,
        strength: float | Sequence[float] = 1.0,
        start: str | int | None = None,
        resample_times: int = 1,
    ) -> CascadeOutput:
        """Generate images for prompts through the stages, or edit given images.

        Args:
            prompts: B prompts.
            negative_prompt: used as the unconditional branch of guidance (all stages).
            seed: one seed (prompt i gets ``seed + i``) or one seed per prompt, each in
                [0, 2**32 - 1]. The result for a prompt depends only on its own seed, settings
                and inputs, not on its batch.
            sampling: per stage name, overrides of its sampling settings, e.g.
                ``{"base": {"steps": 8, "guidance_scale": 3.0}}``; validated.
            until: the last stage to run (name or index); default all.
            progress: called after every sampler step with ``{"stage", "i", "steps"}``.
            image: the image to edit: one for every prompt, or one per prompt (None for a
                text-to-image row); a PIL image or a uint8 array (:mod:`imagen_ray.cascade.edit`
                says how it is read). Resized to every stage that runs.
            mask: the region to repaint (white, or OpenAI's fully transparent pixels), one
                for every prompt or one per prompt; needs ``image``. The other pixels equal
                the image at every stage's output.
            strength: in (0, 1], one or one per prompt: each stage starts from the image
                noised to ``t = strength`` and takes ``round(steps * strength)`` steps; 1 (the
                default) starts from noise, and without a mask equals text-to-image.
            start: the first stage to run (name or index): a later stage upscales ``image``,
                its low-res input, with the stage's noise-conditioning augmentation
                (``sampling.aug_level``).
            resample_times: RePaint's resampling of every step of a masked row (1: none).

        Returns:
            CascadeOutput with the images of every stage that ran.

        Raises:
            PlanError: bad seeds, unknown stage names or a bad edit, naming the argument
                (planned by :func:`imagen_ray.cascade.plan.plan_generation`).
            ConfigError: an invalid sampling override, naming the stage and the field.
        """
        stages = self.stage_list
        edited = _edits(image, mask, strength, start)
        edits = EditInputs.of(len(prompts), image, mask) if edited else None
        plan = plan_generation(
            [st.cfg for st in stages],
            prompts,
            seed=seed,
            until=until,
            sampling=sampling,
            negative_prompt=negative_prompt,
            edit=None if edits is None else edits.plan_args(strength, start, resample_times),
        )
        b = len(plan.prompts)
        enc = self.encoder.encode(list(plan.prompts))
        neg = self.encoder.encode([negative_prompt] * b) if negative_prompt is not None else None
        images = []
        x: Tensor | None = None
        for j, s in enumerate(plan.sampling):
            k = plan.first + j
            stage = stages[k]
            if edits is not None and j == 0 and k > 0:  # an upscale: the image is the low-res
                x = edits.images_at(stage.cfg.lowres_size or stage.cfg.size)
            x = self._run_stage(stage, k, plan, s, enc, neg, x, edits, progress)
            images.append(unit_range(x))
        return CascadeOutput(
            images=images,
            stages=list(plan.stages),
            sampling=plan.sampling_json(),
            seeds=list(plan.seeds),
            truncated=list(enc.truncated),
        )

    def _run_stage(
        self,
        stage: Stage,
        k: int,
        plan: GenerationPlan,
        s: SamplingConfig,
        enc: Encoding,
        neg: Encoding | None,
        lowres: Tensor | None,
        edits: EditInputs | None,
        progress: ProgressFn | None,
    ) -> Tensor:
        """One stage of :meth:`generate`: the rows grouped by what sampling they need (their
        strength; RePaint or not), each group sampled with its rows' own generators."""
        name, dev, size = stage.cfg.name, self.device, stage.cfg.size
        gens = plan.generators(k, dev)

        def step(info: dict[str, Any]) -> None:
            if progress is not None:
                progress({"stage": name, "i": info["i"], "steps": info["steps"]})

        if edits is None or plan.edit is None:
            groups: dict[tuple[float, int], list[int]] = {(1.0, 1): list(range(len(gens)))}
            init = keep = None
        else:
            e = plan.edit
            groups = {}
            for r, (st, m) in enumerate(zip(e.strengths, e.masks, strict=True)):
                groups.setdefault((st, e.resample_times if m else 1), []).append(r)
            init, keep = edits.images_at(size), edits.keep_at(size)
        out = torch.empty(len(gens), 3, size, size, device=dev)
        for (strength, resample), rows in groups.items():
            idx = torch.tensor(rows)
            out[idx] = stage.sample(
                enc.emb[idx],
                enc.mask[idx],
                lowres=None if lowres is None else lowres[idx],
                neg_emb=None if neg is None else neg.emb[idx],
                neg_mask=None if neg is None else neg.mask[idx],
                sampling=s,
                generator=[gens[r] for r in rows],
                callback=step,
                init=None if init is None else init[idx],
                strength=strength,
                keep=None if keep is None else keep[idx],
                resample_times=resample,
            )
        return out

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Save every stage (safetensors + config) and the cascade manifest, as one: the
        directory is built aside and swapped in whole (a full disk or an error leaves the
        previous cascade there; :class:`imagen_ray.fs.NoSpaceError` is raised before a
        byte is written when the weights cannot fit)."""
        from imagen_ray.fs import atomic_dir, check_space

        out = Path(path)
        if out.is_dir() and any(out.iterdir()) and not (out / "cascade.json").is_file():
            raise FileExistsError(
                f"{out} holds other files and no cascade: saving replaces the whole directory, "
                "so write the cascade to a new or empty directory (or a saved cascade's)"
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        weights = sum(
            p.numel() * p.element_size()
            for s in self.stage_list
            for p in s.unet.state_dict().values()
        )
        check_space(out, weights + 2**16 * len(self.stage_list))
        with atomic_dir(out) as tmp:
            names = []
            for stage in self.stage_list:
                save_stage(stage, self.text, tmp / stage.cfg.name, extra=stage.extra)
                names.append(stage.cfg.name)
            save_cascade_manifest(tmp, names, self.text)
        return out

    @classmethod
    def load(
        cls,
        path: str | Path | Sequence[str | Path],
        *,
        device: torch.device | str = "cpu",
        encoder: TextEncoder | None = None,
        dtype: str = "float32",
    ) -> Cascade:
        """Load a saved cascade directory, a single stage directory (a one-stage cascade), or
        a list of stage directories in order.

        Every stage must expect the same text encoder config; sizes must chain.

        Args:
            path: see above; local directories. A URI (``s3://...``, ``gs://...``) or a
                Hugging Face Hub repo is loaded by :func:`imagen_ray.publish.load_cascade` or
                :func:`imagen_ray.publish.from_pretrained`, which resolve it to local
                directories and call this.
            device: where the stages go.
            encoder: a loaded text encoder to reuse (default: built on first use).
            dtype: inference dtype of the U-Nets (``auto``: bfloat16 on CUDA, float32
                elsewhere; see :meth:`Stage.to_inference`). The default keeps the saved
                float32 weights exactly.

        Raises:
            CheckpointError: a URI among the paths (naming it and the function that loads
                it), a directory that is not a saved stage or cascade, or stages that do not
                form a cascade.
        """
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        remote = [str(p) for p in paths if storage.is_uri(p)]
        if remote:
            raise CheckpointError(
                f"Cascade.load reads local directories, not URIs ({', '.join(remote)}): load "
                "a cascade on object storage with imagen_ray.publish.load_cascade, which "
                "downloads it first"
            )
        dirs = stage_dirs(path)
        loaded = [load_stage(d, device=device) for d in dirs]
        texts = {t.model_dump_json() for _, t in loaded}
        if len(texts) > 1:
            raise CheckpointError(
                f"the stages {[str(d) for d in dirs]} were trained with different text encoders "
                f"({sorted(texts)}); a cascade needs one"
            )
        return cls(loaded[0][1], [s for s, _ in loaded], encoder).to_inference(dtype, device)

    def to_inference(
        self, dtype: str = "auto", device: torch.device | str | None = None
    ) -> Cascade:
        """Every stage to ``device`` and ``dtype`` (:meth:`Stage.to_inference`); returns self.

        The text encoder keeps its own ``text.dtype``.
        """
        for stage in self.stage_list:
            stage.to_inference(dtype, device)
        return self

    @property
    def dtypes(self) -> dict[str, str]:
        """Per stage name, the dtype its U-Net runs in (``"bfloat16"``, ...)."""
        return {s.cfg.name: str(s.dtype).removeprefix("torch.") for s in self.stage_list}
