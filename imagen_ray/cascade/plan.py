"""The generation plan: everything a request fixes before any model runs, resolved once.

``Cascade.generate`` (in-process), the Serve chain (ingress + stage deployments) and batch
generation all plan through here, so the same prompts, seeds and settings give the same
pixels in each: which stages run (``until``), each stage's sampling settings (its defaults
updated by per-stage overrides, validated), one seed per prompt, and one ``torch.Generator``
per prompt and stage. Images leave the model through :func:`imagen_ray.images.unit_range`
and :func:`imagen_ray.images.to_uint8`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from imagen_ray.config import SamplingConfig, StageConfig, validate

if TYPE_CHECKING:
    import torch

SEED_MAX = 2**32 - 1  # seeds are uint32: what a request, a CLI flag or a JSON record carries

SamplingOverrides = Mapping[str, SamplingConfig | Mapping[str, Any]]


class PlanError(ValueError):
    """A generation request that cannot be planned; ``field`` names the argument at fault.

    ``str(e)`` is ``"<field>: <message>"``; callers with other argument names (Serve's
    ``stages`` for ``sampling``) rebuild it from ``field`` and ``message``.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def resolve_sampling(
    base: SamplingConfig, override: SamplingConfig | Mapping[str, Any] | None, where: str = ""
) -> SamplingConfig:
    """A stage's sampling defaults updated by an override (validated).

    Args:
        base: the stage's defaults.
        override: a full config (used as is), a mapping of the fields to change, or None.
        where: names the override in a validation error (default ``sampling override``).

    Raises:
        ConfigError: naming the field, the value and what is allowed.
    """
    if override is None:
        return base
    if isinstance(override, SamplingConfig):
        return override
    merged = {**base.model_dump(), **dict(override)}
    return validate(SamplingConfig, merged, where or "sampling override")


def stage_generators(
    seeds: Sequence[int], stage_index: int, device: torch.device | str
) -> list[torch.Generator]:
    """One generator per example and stage, mixed with numpy's SeedSequence so that
    (seed, stage) pairs never collide."""
    import torch  # here, not at the top: the Serve ingress plans requests without torch

    gens = []
    for s in seeds:
        mixed = int(np.random.SeedSequence([int(s), stage_index]).generate_state(1)[0])
        gens.append(torch.Generator(device=device).manual_seed(mixed))
    return gens


def prompt_seeds(n: int, seed: int | Sequence[int] | None) -> list[int]:
    """One seed per prompt: ``seed + i`` for an int, a list as given, random ``+ i`` for None.

    Raises:
        PlanError: a seed outside [0, 2**32 - 1] (for an int: ``seed + n - 1`` too), or a
            list whose length is not ``n``.
    """
    if seed is None:
        seed = secrets.randbelow(SEED_MAX + 2 - max(n, 1))  # seed + n - 1 stays a seed
    if isinstance(seed, (int, np.integer)):
        if not 0 <= int(seed) <= SEED_MAX:
            raise PlanError("seed", f"{seed} is outside [0, {SEED_MAX}]")
        if int(seed) + n - 1 > SEED_MAX:  # every returned seed must be a valid seed again
            raise PlanError(
                "seed",
                f"{seed} + {n} prompts - 1 is past the largest seed {SEED_MAX}: prompt i "
                f"uses seed + i, so with {n} prompts send a seed of at most {SEED_MAX - n + 1}",
            )
        return [int(seed) + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise PlanError("seed", f"got {len(seeds)} seeds for {n} prompts")
    for i, s in enumerate(seeds):
        if not 0 <= s <= SEED_MAX:
            raise PlanError(f"seed[{i}]", f"{s} is outside [0, {SEED_MAX}]")
    return seeds


def last_stage(names: Sequence[str], until: str | int | None) -> int:
    """Index of the last stage to run, given by name or index (None: every stage)."""
    if until is None:
        return len(names) - 1
    if isinstance(until, int):
        if not 0 <= until < len(names):
            raise PlanError("until", f"stage index {until} out of range 0..{len(names) - 1}")
        return until
    if until not in names:
        raise PlanError("until", f"unknown stage {until!r}; stages are {list(names)}")
    return list(names).index(until)


def plan_sampling(
    stages: Sequence[StageConfig],
    *,
    until: str | int | None = None,
    sampling: SamplingOverrides | None = None,
) -> dict[str, SamplingConfig]:
    """Per stage that runs (in order, up to ``until``), its resolved sampling settings.

    Overrides for stages past ``until`` are checked for their names but not applied.

    Raises:
        PlanError: ``until`` or an override names no stage.
        ConfigError: an override's value is invalid (names ``sampling.<stage>.<field>``).
    """
    names = [s.name for s in stages]
    last = last_stage(names, until)
    overrides = dict(sampling or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise PlanError("sampling", f"overrides for unknown stages {unknown}; stages are {names}")
    return {
        s.name: resolve_sampling(s.sampling, overrides.get(s.name), f"sampling.{s.name}")
        for s in stages[: last + 1]
    }


MAX_RESAMPLE_TIMES = 20  # RePaint used 10; each one costs a full pass of denoiser calls
IMAGE_TO_IMAGE_STRENGTH = 0.6  # an unmasked edit that names no strength keeps the layout


def default_strength(masked: bool) -> float:
    """The strength of an edit that names none: 1 with a mask (repaint the region), else
    :data:`IMAGE_TO_IMAGE_STRENGTH`. The CLI, batch generation and Serve all default so."""
    return 1.0 if masked else IMAGE_TO_IMAGE_STRENGTH


@dataclass(frozen=True)
class EditPlan:
    """What a request edits (the images themselves travel beside the plan).

    Attributes:
        images: per prompt, whether it has an image (rows without one are text-to-image).
        masks: per prompt, whether it has a mask (a region to repaint).
        strengths: per prompt, in (0, 1]: 1 starts from noise, lower keeps more of the image.
        start: index of the first stage that runs; above 0 the image is its low-res input.
        resample_times: RePaint's resampling of every step of a masked row (1: none).
    """

    images: tuple[bool, ...]
    masks: tuple[bool, ...]
    strengths: tuple[float, ...]
    start: int = 0
    resample_times: int = 1


def plan_edit(
    names: Sequence[str],
    n: int,
    *,
    images: Sequence[bool],
    masks: Sequence[bool] | None = None,
    strength: float | Sequence[float | None] | None = 1.0,
    start: str | int | None = None,
    resample_times: int = 1,
) -> EditPlan:
    """Check an edit request: which prompts have an image and a mask, their strengths (None:
    :func:`default_strength`), the stage to start at (name or index) and the resampling.

    Raises:
        PlanError: naming the field: lengths that differ from the prompts', a strength
            outside (0, 1] or below 1 without an image, a mask without an image, a later
            start without an image for every prompt, resample_times outside
            [1, MAX_RESAMPLE_TIMES].
    """
    has_image = tuple(bool(x) for x in images)
    has_mask = tuple(bool(x) for x in (masks if masks is not None else [False] * n))
    for field, got in (("image", has_image), ("mask", has_mask)):
        if len(got) != n:
            raise PlanError(field, f"got {len(got)} for {n} prompts; give one per prompt")
    one = strength is None or isinstance(strength, (int, float))
    raw = [strength] * n if one else list(strength)  # type: ignore[arg-type]
    if len(raw) != n:
        raise PlanError("strength", f"got {len(raw)} strengths for {n} prompts")
    strengths = []
    for i, (value, img) in enumerate(zip(raw, has_image, strict=True)):
        where = "strength" if one else f"strength[{i}]"
        if value is None:
            value = default_strength(has_mask[i])
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise PlanError(where, f"{value!r} is outside (0, 1]: 1 repaints everything, "
                            "lower values keep more of the image")  # fmt: skip
        if value < 1 and not img:
            raise PlanError(where, f"{value} needs an image to start from; give `image`")
        strengths.append(float(value))
    for i, (m, img) in enumerate(zip(has_mask, has_image, strict=True)):
        if m and not img:
            raise PlanError(f"mask[{i}]" if n > 1 else "mask", "a mask needs its image")
    first = 0 if start is None else last_stage(names, start)
    if first > 0 and not all(has_image):
        raise PlanError(
            "start", f"starting at stage {names[first]!r} needs an image (its low-res input) "
            "for every prompt",
        )  # fmt: skip
    if isinstance(resample_times, bool) or not isinstance(resample_times, int):
        raise PlanError("resample_times", f"expected an integer, got {resample_times!r}")
    if not 1 <= resample_times <= MAX_RESAMPLE_TIMES:
        raise PlanError("resample_times", f"{resample_times} is outside [1, {MAX_RESAMPLE_TIMES}]")
    return EditPlan(has_image, has_mask, tuple(strengths), first, resample_times)


@dataclass(frozen=True)
class GenerationPlan:
    """A checked generation request.

    Attributes:
        prompts: the B prompts.
        seeds: one per prompt.
        stages: names of the stages that run, in order (a prefix of the cascade).
        sampling: per stage that runs, its resolved settings.
        negative_prompt: the unconditional branch of guidance, or None.
    """

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    stages: tuple[str, ...]
    sampling: tuple[SamplingConfig, ...]
    negative_prompt: str | None = None
    edit: EditPlan | None = None

    @property
    def last(self) -> int:
        """Index of the last stage that runs, counted from the first that runs."""
        return len(self.stages) - 1

    @property
    def first(self) -> int:
        """Index in the cascade of the first stage that runs (0 unless an edit starts later)."""
        return 0 if self.edit is None else self.edit.start

    def generators(self, stage_index: int, device: torch.device | str) -> list[torch.Generator]:
        """One generator per prompt for the cascade's stage ``stage_index``
        (:func:`stage_generators`): an upscale that starts at a later stage draws what that
        stage draws in a full generation with the same seed."""
        return stage_generators(self.seeds, stage_index, device)

    def sampling_json(self) -> list[dict[str, Any]]:
        """The per-stage settings as JSON-able dicts (what results and records report)."""
        return [s.model_dump(mode="json") for s in self.sampling]


def plan_generation(
    stages: Sequence[StageConfig],
    prompts: Sequence[str],
    *,
    seed: int | Sequence[int] | None = 0,
    until: str | int | None = None,
    sampling: SamplingOverrides | None = None,
    negative_prompt: str | None = None,
    edit: Mapping[str, Any] | None = None,
) -> GenerationPlan:
    """Resolve and validate a generation request against a cascade's stage configs.

    Args:
        stages: the cascade's stage configs, base first.
        prompts: B prompts (a list; a bare string is refused).
        seed: one seed (prompt i gets ``seed + i``), one per prompt, or None for a random
            one; each in [0, 2**32 - 1].
        until: the last stage to run (name or index); default all.
        sampling: per stage name, overrides of its sampling settings.
        negative_prompt: replaces the null text in guidance (all stages).
        edit: the keyword arguments of :func:`plan_edit` (``images`` at least), or None.

    Raises:
        TypeError: ``prompts`` is a string.
        PlanError: no prompts, bad seeds, unknown stage names, a bad edit (``field`` says
            which).
        ConfigError: an invalid sampling value (named ``sampling.<stage>.<field>``).
    """
    if isinstance(prompts, str):
        raise TypeError("generate() takes a list of prompts, not a single string")
    texts = tuple(prompts)
    if not texts:
        raise PlanError("prompts", "the list is empty; give at least one prompt")
    resolved = plan_sampling(stages, until=until, sampling=sampling)
    names = [s.name for s in stages]
    checked = None if edit is None else plan_edit(names, len(texts), **edit)
    first = 0 if checked is None else checked.start
    if first >= len(resolved):
        raise PlanError("start", f"stage {names[first]!r} comes after `until` ({until!r})")
    return GenerationPlan(
        prompts=texts,
        seeds=tuple(prompt_seeds(len(texts), seed)),
        stages=tuple(resolved)[first:],
        sampling=tuple(resolved.values())[first:],
        negative_prompt=negative_prompt,
        edit=checked,
    )


__all__ = [
    "IMAGE_TO_IMAGE_STRENGTH",
    "MAX_RESAMPLE_TIMES",
    "SEED_MAX",
    "EditPlan",
    "GenerationPlan",
    "PlanError",
    "SamplingOverrides",
    "default_strength",
    "last_stage",
    "plan_edit",
    "plan_generation",
    "plan_sampling",
    "prompt_seeds",
    "resolve_sampling",
    "stage_generators",
]
