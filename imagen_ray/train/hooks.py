"""Per-step hooks of the training loop: what benchmarks and tests add without the loop knowing.

The loop calls every hook at each optimizer step: ``before_step`` between ``backward`` and
the optimizer step (gradients are live: memory accounting measures then), ``after_step``
once the step is taken and the EMA updated (fault injection acts then), and ``metrics``
at each report, whose entries join the reported metrics. A hook may raise to stop the run.

Hooks travel to the workers pickled (each worker gets its own copy, so state kept on a hook
is per rank). Every rank calls every method, so a hook may use collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StepContext:
    """Where the loop is when it calls a hook."""

    rank: int
    world_size: int
    step: int  # optimizer steps taken so far (before_step: not counting this one)
    engine: Any  # the DeepSpeed engine


class StepHook:
    """A hook that does nothing; subclasses override what they need."""

    def before_step(self, ctx: StepContext) -> None:
        """Between ``engine.backward`` and ``engine.step`` at an accumulation boundary."""

    def after_step(self, ctx: StepContext) -> None:
        """After the optimizer step and the EMA update (``ctx.step`` counts this step)."""

    def during_checkpoint(self, ctx: StepContext, phase: str) -> None:
        """While a checkpoint is saved: ``writing`` (DeepSpeed's files written locally, this
        rank's EMA, state and marker not yet), ``copying`` (about to copy into the run's
        storage), ``half copied`` (half of this rank's files there, its marker not)."""

    def metrics(self, ctx: StepContext) -> dict[str, Any]:
        """Entries for this report (only numbers are also charted in W&B)."""
        return {}
