"""A stage's W&B run after training: found again from its export, given eval results and
the exported stage as a model artifact.

The training run's id is stored in every checkpoint (``RunState.wandb_run_id``);
``imagen-ray export`` copies it, with the project, entity, group and mode, into the exported
stage's ``config.json`` (``extra.wandb``, :func:`run_info`). ``imagen-ray eval ...
--log-to-run`` then resumes that run (:func:`log_eval`), and ``imagen-ray export`` logs the
stage as a ``model`` artifact to it when W&B is online (:func:`log_stage_artifact`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagen_ray import storage
from imagen_ray.config import RunConfig
from imagen_ray.train.tracking import resolve_wandb_mode

EVAL_STEP = "eval/trained_step"  # x axis of eval charts: the training step evaluated


def run_info(cfg: RunConfig, run_id: str | None) -> dict[str, Any]:
    """What an export stores to reach its training run again (``extra.wandb``)."""
    return {
        "run_id": run_id,
        "project": cfg.wandb.project,
        "entity": cfg.wandb.entity,
        "mode": cfg.wandb.mode,
        "name": cfg.train.name or cfg.stage.name,
    }


def checkpoint_run_id(ckpt_dir: Path) -> str | None:
    """The W&B run id rank 0 stored in a checkpoint (None: W&B was disabled)."""
    from imagen_ray.train import checkpoint as ckpt_io

    try:
        state, _ = ckpt_io.load_rank_state(ckpt_dir, 0)
    except (OSError, ValueError):
        return None
    run_id = state.get("wandb_run_id")
    return str(run_id) if run_id else None


@dataclass(frozen=True)
class RunRef:
    """One W&B run: ``entity/project/id``, ``project/id`` or ``id``."""

    run_id: str
    project: str
    entity: str | None = None
    mode: str = "auto"

    @property
    def path(self) -> str:
        return "/".join(p for p in (self.entity, self.project, self.run_id) if p)

    @classmethod
    def parse(cls, text: str, default_project: str = "imagen-ray") -> RunRef:
        """``--wandb-run``: a run path as the W&B UI shows it (``entity/project/id``; a URL
        ``.../entity/project/runs/id`` also works), ``project/id`` or a bare id."""
        parts = [p for p in text.strip().rstrip("/").split("/") if p]
        if len(parts) >= 2 and parts[-2] == "runs":
            del parts[-2]  # .../<entity>/<project>/runs/<id>
        parts = parts[-3:]
        if not parts or not all(re.fullmatch(r"[\w.\-]+", p) for p in parts):
            raise ValueError(
                f"--wandb-run {text!r}: expected a W&B run path entity/project/run_id, "
                "project/run_id or a run id (letters, digits, '-', '_', '.')"
            )
        if len(parts) == 3:
            return cls(parts[2], parts[1], parts[0])
        if len(parts) == 2:
            return cls(parts[1], parts[0])
        return cls(parts[0], default_project)

    @classmethod
    def of_stage(cls, stage_dir: str | Path) -> RunRef:
        """The training run of an exported stage (``extra.wandb`` of its ``config.json``).

        Raises:
            ValueError: the export holds no run id (exported before run ids were stored, or
                trained with W&B disabled), naming the stage and the fix.
        """
        from imagen_ray.cascade.io import read_stage_meta

        meta = read_stage_meta(stage_dir)
        info = (meta.get("extra") or {}).get("wandb") or {}
        if not info.get("run_id"):
            raise ValueError(
                f"{stage_dir}: the exported stage names no W&B run (trained with W&B "
                "disabled, or exported by an older imagen-ray); pass the run with "
                "--wandb-run ENTITY/PROJECT/RUN_ID instead of --log-to-run"
            )
        return cls(
            str(info["run_id"]),
            str(info.get("project") or "imagen-ray"),
            info.get("entity"),
            str(info.get("mode") or "auto"),
        )


def _init(ref: RunRef, mode: str, wandb_dir: str | Path | None) -> Any:
    import wandb

    if wandb_dir:
        Path(wandb_dir).mkdir(parents=True, exist_ok=True)
    # Resuming keeps the training run's name, group and job_type (none are passed).
    return wandb.init(
        project=ref.project,
        entity=ref.entity,
        id=ref.run_id,
        resume="allow",
        mode=mode,  # type: ignore[arg-type]
        dir=str(wandb_dir) if wandb_dir else None,
        settings=wandb.Settings(x_disable_stats=True, console="off"),
    )


def flatten_numbers(values: Mapping[str, Any], prefix: str) -> dict[str, float | int]:
    """The numbers of a (nested) result dict as ``prefix/key/subkey`` (lists, strings and
    booleans are left out: they are in the eval's own files)."""
    out: dict[str, float | int] = {}
    for k, v in values.items():
        name = f"{prefix}/{k}"
        if isinstance(v, Mapping):
            out.update(flatten_numbers(v, name))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = v
    return out


def log_eval(
    results: Mapping[str, Any],
    ref: RunRef,
    *,
    kind: str,
    trained_step: int | None = None,
    wandb_dir: str | Path | None = None,
    images: Mapping[str, Sequence[tuple[Path, str]]] | None = None,
) -> str:
    """Log the numbers of one eval's ``results`` to a stage's run as ``eval/<kind>/...``.

    The run is resumed (its history and charts continue); every value also goes into the
    run's summary, so the runs table shows it. Eval charts use ``eval/trained_step`` (the
    exported step) as x axis, so evaluating several exports of one run draws a curve.

    Args:
        results: the eval's result dict (nested dicts are flattened; non-numbers skipped).
        ref: the run (:meth:`RunRef.parse` or :meth:`RunRef.of_stage`).
        kind: the eval's name (``probe``, ``sr-fidelity``, ``fid``, ``clip``).
        trained_step: the training step of the evaluated weights, if known.
        wandb_dir: where offline run files go (default: ``WANDB_DIR`` or the working dir).
        images: ``eval/<kind>/<name>`` -> (image file, caption) pairs, logged as a list
            of captioned images (as the training samples are).

    Returns:
        A line for the user saying where the values went (or why they did not).
    """
    mode = resolve_wandb_mode(ref.mode)
    if mode == "disabled":
        return f"W&B: eval results not logged to {ref.path}: wandb mode is disabled"
    values = flatten_numbers(results, f"eval/{kind}")
    if not values and not images:
        return f"W&B: no numeric {kind} results to log to {ref.path}"
    import wandb

    run = _init(ref, mode, wandb_dir)
    try:
        run.define_metric(EVAL_STEP)
        run.define_metric(f"eval/{kind}/*", step_metric=EVAL_STEP)
        row: dict[str, Any] = dict(values)
        for name, pairs in (images or {}).items():
            row[f"eval/{kind}/{name}"] = [wandb.Image(str(f), caption=c) for f, c in pairs]
        if trained_step is not None:
            row[EVAL_STEP] = trained_step
        run.log(row)
        run.summary.update(values)
        where = run.dir
    finally:
        run.finish()
    what = f"{len(values)} {kind} values" + (
        f" and {sum(len(v) for v in images.values())} images" if images else ""
    )
    if mode == "offline":
        return (
            f"W&B: {what} logged offline to run {ref.path}; upload "
            f"with `wandb sync {Path(where).parent}`"
        )
    return f"W&B: {what} logged to run {ref.path}"


def _artifact_name(stage: str, run_id: str | None) -> str:
    name = f"{stage}-{run_id}" if run_id else stage
    return re.sub(r"[^\w.\-]", "-", name)


def log_stage_artifact(stage_dir: str | Path) -> str:
    """Log an exported stage directory as a W&B ``model`` artifact, when W&B is online.

    The artifact (``<stage>-<run id>``, aliases ``latest`` and ``step-<N>``) goes to the
    stage's training run, resumed; its metadata are the export's step, weights and
    metrics. Offline or disabled nothing is logged (an offline artifact would be a second
    copy of the weights in the run files); the returned line says so.

    Returns:
        A line for the user: the artifact logged, or why it was skipped.
    """
    from imagen_ray.cascade.io import read_stage_meta

    meta = read_stage_meta(stage_dir)
    extra = meta.get("extra") or {}
    info = extra.get("wandb") or {}
    mode = resolve_wandb_mode(str(info.get("mode") or "auto"))
    if mode != "online":
        return (
            f"W&B: model artifact skipped (wandb mode {mode}; exported stages are logged as "
            "artifacts only when online)"
        )
    import wandb

    stage = str(meta["stage"]["name"])
    run_id = info.get("run_id")
    artifact = wandb.Artifact(
        _artifact_name(stage, run_id),
        type="model",
        description=f"imagen-ray stage {stage} ({extra.get('weights', 'ema')} weights, "
        f"step {extra.get('step')})",
        metadata={k: extra.get(k) for k in ("step", "weights", "samples", "metrics", "data")},
    )
    if storage.is_uri(stage_dir):  # exported to object storage: a reference, not a copy
        artifact.add_reference(str(stage_dir))
    else:
        artifact.add_dir(str(stage_dir))
    if run_id:
        ref = RunRef(str(run_id), str(info.get("project") or "imagen-ray"), info.get("entity"))
        run = _init(ref, mode, None)
    else:  # trained without a run id: the artifact gets a run of its own
        run = wandb.init(
            project=str(info.get("project") or "imagen-ray"),
            entity=info.get("entity"),
            job_type="export",
            mode=mode,  # type: ignore[arg-type]
        )
    try:
        aliases = ["latest"] + ([f"step-{extra['step']}"] if extra.get("step") is not None else [])
        run.log_artifact(artifact, aliases=aliases)
        url = getattr(run, "url", None) or run.id
    finally:
        run.finish()
    return f"W&B: logged {stage_dir} as model artifact {artifact.name} to {url}"
