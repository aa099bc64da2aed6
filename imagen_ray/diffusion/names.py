"""The diffusion package's vocabularies: sampler, objective, loss weighting, schedule and
thresholding names.

Each ``Literal`` is the list of what the module beside it implements (``samplers.py``,
``process.py``, ``schedules.py``, ``guidance.py`` check against these tuples); the config
imports them from here. This module needs no torch, so that loading or validating a config
(the Serve ingress, ``imagen-ray config``) does not import it: measured, a config import
through the torch modules took the ingress from ~180 MB / 3.8 s to ~360 MB / 8-15 s.
"""

from __future__ import annotations

from typing import Literal, get_args

SamplerName = Literal["ddpm", "ddim", "dpmpp_2m"]
SAMPLER_NAMES: tuple[str, ...] = get_args(SamplerName)

Objective = Literal["eps", "v", "x0"]
OBJECTIVES: tuple[str, ...] = get_args(Objective)

LossWeighting = Literal["none", "min_snr"]
LOSS_WEIGHTINGS: tuple[str, ...] = get_args(LossWeighting)

ScheduleName = Literal["cosine", "linear"]
SCHEDULES: tuple[str, ...] = get_args(ScheduleName)

ThresholdMode = Literal["none", "static", "dynamic"]
THRESHOLDS: tuple[str, ...] = get_args(ThresholdMode)
