"""Offline batch generation: a saved cascade on a Ray Data actor pool over a prompt file.

``imagen-ray generate --cascade DIR --prompts prompts.txt --out out/`` expands every prompt
into ``images_per_prompt`` images, each with a seed derived from (base seed, prompt index,
image index), and sends the work through ``map_batches`` to a pool of actors that each hold
the cascade. Layout of an output directory::

    out/
      images/000003-001.png    prompt 3, image 1 (written to a temp file, then renamed)
      images/000003-001.json   its record, written after the image: the unit of "done"
      manifest.jsonl           every record in prompt/image order, rebuilt at the end

A crash loses only the batches in flight: every finished image has its record beside it.
Running the same command again skips the images whose record and file exist and finishes
the rest; the manifest is then rebuilt from the records. A record made with other settings
(prompt, seed, sampling, stages, negative prompt) is an error, not a silent mix.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from imagen_ray.config import (
    SamplingConfig,
    StageConfig,
    Strict,
    TextEncoderConfig,
    apply_overrides,
    read_yaml,
    validate,
)

PROMPT_FORMATS = (".txt", ".csv", ".jsonl")
# Column names a CSV prompt file may use, first match wins (case-insensitive); DrawBench
# files use "Prompts".
PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")
IMAGES = "images"
MANIFEST = "manifest.jsonl"
ImageFormat = Literal["png", "jpg", "webp"]


class GenerateConfig(Strict):
    """Settings of one batch-generation run (``--config`` YAML, flags, ``--set``)."""

    seed: int = Field(0, ge=0, description="base seed; image seeds derive from it")
    images_per_prompt: int = Field(1, ge=1, le=1000, description="images per prompt")
    negative_prompt: str | None = Field(None, description="steer away from this text")
    until: str | None = Field(None, description="last stage to run (default: all)")
    sampling: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per stage, sampling overrides: {base: {steps: 8}}",
    )
    format: ImageFormat = Field("png", description="image file format")
    batch_size: int = Field(4, ge=1, description="images per cascade call (per replica)")
    replicas: int = Field(1, ge=1, description="actors in the pool, each holding the cascade")
    num_cpus: float = Field(1.0, gt=0.0, description="CPUs reserved per replica")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per replica (fractions share one)")


@dataclass(frozen=True)
class Prompt:
    text: str
    meta: dict[str, Any]  # other CSV columns / JSONL fields, kept in the manifest


@dataclass
class Summary:
    """What a run did: images generated now, skipped as already done, and where."""

    generated: int
    skipped: int
    out: Path
    manifest: Path
    seconds: float


def image_seed(seed: int, prompt_index: int, image_index: int) -> int:
    """The seed of one image, mixed with numpy's SeedSequence so that it depends only on
    (base seed, prompt index, image index): resuming or changing the batch size or the
    number of images per prompt reproduces every image."""
    return int(np.random.SeedSequence([seed, prompt_index, image_index]).generate_state(1)[0])


# ------------------------------------------------------------------------------ prompts


def read_prompt_file(path: str | Path, column: str | None = None) -> list[Prompt]:
    """Prompts of a ``.txt`` (one per line), ``.csv`` (a header naming a prompt column) or
    ``.jsonl`` (one object with a ``"prompt"`` key, or one string, per line) file.

    Raises:
        ValueError: unknown format, missing column/key, empty prompts, or an empty file;
            the message names the file, the line and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        from imagen_ray.cli import read_prompts  # the `sample` command's reader

        try:
            prompts = [Prompt(t, {}) for t in read_prompts([], str(p))]
        except ValueError:
            prompts = []
    elif suffix == ".csv":
        prompts = _read_csv(p, column)
    elif suffix == ".jsonl":
        prompts = _read_jsonl(p, column or "prompt")
    else:
        raise ValueError(
            f"prompt file {str(p)!r}: unknown format {suffix or '(no suffix)'!r}; use one of "
            f"{', '.join(PROMPT_FORMATS)}"
        )
    if not prompts:
        raise ValueError(f"prompt file {str(p)!r} has no prompts")
    return prompts


def _read_csv(p: Path, column: str | None) -> list[Prompt]:
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        lower = {name.strip().lower(): name for name in fields}
        wanted = [column] if column else list(PROMPT_COLUMNS)
        key = next((lower[w.lower()] for w in wanted if w.lower() in lower), None)
        if key is None:
            what = f"column {column!r}" if column else f"a column named one of {PROMPT_COLUMNS}"
            raise ValueError(
                f"prompt file {str(p)!r}: needs a header row with {what}; its columns are "
                f"{fields} (choose one with --prompt-column)"
            )
        out = []
        for row in reader:  # blank lines are skipped; line_num counts them
            text = (row.get(key) or "").strip()
            if not text:
                raise ValueError(f"{p}:{reader.line_num}: empty prompt in column {key!r}")
            meta = {k: v for k, v in row.items() if k != key and k is not None}
            out.append(Prompt(text, meta))
    return out


def _read_jsonl(p: Path, key: str) -> list[Prompt]:
    out = []
    for line, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{line}: not valid JSON ({e.msg})") from None
        if isinstance(item, str):
            item = {key: item}
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            raise ValueError(
                f"{p}:{line}: expected an object with a string {key!r} key (or a JSON string), "
                f"got {raw.strip()[:80]!r}"
            )
        text = item[key].strip()
        if not text:
            raise ValueError(f"{p}:{line}: empty prompt")
        out.append(Prompt(text, {k: v for k, v in item.items() if k != key}))
    return out


# ------------------------------------------------------------------------------ the plan


def load_generate_config(
    path: str | Path | None, flags: dict[str, Any], overrides: Sequence[str]
) -> GenerateConfig:
    """YAML file (optional) < flags that were given < ``--set`` overrides."""
    data = read_yaml(path) if path else {}
    for key, value in flags.items():
        if value is None:
            continue
        if key == "sampling" and isinstance(data.get(key), dict):  # merge per stage
            merged = {s: dict(v) for s, v in data[key].items() if isinstance(v, dict)}
            for stage, kv in value.items():
                merged.setdefault(stage, {}).update(kv)
            value = {**data[key], **merged}
        data[key] = value
    return validate(GenerateConfig, apply_overrides(data, overrides), str(path or "flags"))


def stage_configs(cascade: Sequence[str | Path]) -> list[StageConfig]:
    """The stage configs of a saved cascade, read without loading any weights."""
    from imagen_ray.cascade.io import check_chain, read_cascade_manifest, read_stage_meta

    dirs = read_cascade_manifest(cascade[0]) if len(cascade) == 1 else [Path(c) for c in cascade]
    metas = [read_stage_meta(d) for d in dirs]
    stages = [
        validate(StageConfig, m["stage"], f"{d}/config.json")
        for d, m in zip(dirs, metas, strict=True)
    ]
    text = validate(TextEncoderConfig, metas[0]["text"], f"{dirs[0]}/config.json:text")
    return list(check_chain(text, stages).stages)


def resolved_sampling(stages: list[StageConfig], cfg: GenerateConfig) -> dict[str, Any]:
    """Per stage that runs, the full sampling settings (checked before any actor starts)."""
    from imagen_ray.cascade import resolve_sampling

    names = [s.name for s in stages]
    if cfg.until is not None and cfg.until not in names:
        raise ValueError(f"until={cfg.until!r} is not a stage; stages are {names}")
    unknown = sorted(set(cfg.sampling) - set(names))
    if unknown:
        raise ValueError(f"sampling overrides for unknown stages {unknown}; stages are {names}")
    last = names.index(cfg.until) if cfg.until else len(names) - 1
    out: dict[str, Any] = {}
    for s in stages[: last + 1]:
        sc: SamplingConfig = resolve_sampling(s.sampling, cfg.sampling.get(s.name))
        out[s.name] = sc.model_dump(mode="json")
    return out


def plan_records(
    prompts: Sequence[Prompt], cfg: GenerateConfig, sampling: dict[str, Any]
) -> list[dict[str, Any]]:
    """One record per image to exist when the run is done (``file`` relative to out)."""
    rows = []
    for p, prompt in enumerate(prompts):
        for i in range(cfg.images_per_prompt):
            rows.append(
                {
                    "prompt_index": p,
                    "image_index": i,
                    "prompt": prompt.text,
                    "seed": image_seed(cfg.seed, p, i),
                    "file": f"{IMAGES}/{p:06d}-{i:03d}.{cfg.format}",
                    "negative_prompt": cfg.negative_prompt,
                    "stages": list(sampling),
                    "sampling": sampling,
                    "meta": prompt.meta,
                }
            )
    return rows


# Fields that must match for an existing image to count as this run's image.
_SAME = ("prompt", "seed", "negative_prompt", "stages", "sampling")


def sidecar(out: Path, record: dict[str, Any]) -> Path:
    return (out / record["file"]).with_suffix(".json")


def split_done(out: Path, records: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(done, todo): done when the image and its record exist and match this run."""
    done, todo = [], []
    for r in records:
        side = sidecar(out, r)
        if not (side.is_file() and (out / r["file"]).is_file()):
            todo.append(r)
            continue
        try:
            old = json.loads(side.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            todo.append(r)  # a torn write from an older crash: make it again
            continue
        was = _flatten({k: old.get(k) for k in _SAME})
        now = _flatten({k: r[k] for k in _SAME})
        diff = [
            f"{k}: {was.get(k)!r} there, {now.get(k)!r} now" for k in now if was.get(k) != now[k]
        ]
        diff += [f"{k}: {was[k]!r} there, unset now" for k in was if k not in now]
        if diff:
            raise ValueError(
                f"{side} was made with other settings ({'; '.join(diff[:4])}); use a new "
                "--out directory, or --overwrite to replace the images there"
            )
        done.append(old)
    return done, todo


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (to name the settings that differ)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temp file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    tmp.replace(path)


# ------------------------------------------------------------------------------ workers


class CascadeWorker:
    """One replica of the actor pool: loads the cascade once, then turns batches of
    planned records into images and records on disk."""

    def __init__(self, cascade: list[str], out: str, until: str | None, use_gpu: bool) -> None:
        import torch

        from imagen_ray.cascade import Cascade

        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        path: str | list[str] = cascade[0] if len(cascade) == 1 else cascade
        self.cascade = Cascade.load(path, device=device)
        _ = self.cascade.encoder  # load the text encoder before the first batch
        self.out = Path(out)
        self.until = until

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from imagen_ray.images import save_image, to_pil

        records = [json.loads(r) for r in batch["record"]]
        first = records[0]
        t0 = time.perf_counter()
        out = self.cascade.generate(
            [r["prompt"] for r in records],
            negative_prompt=first["negative_prompt"],
            seed=[r["seed"] for r in records],
            sampling=first["sampling"],
            until=self.until,
        )
        seconds = (time.perf_counter() - t0) / len(records)
        for r, img, trunc in zip(records, to_pil(out.uint8()), out.truncated, strict=True):
            save_image(img, self.out / r["file"])
            r.update(width=img.width, height=img.height, truncated=trunc, seconds=seconds)
            write_json_atomic(sidecar(self.out, r), r)  # after the image: marks it done
        return {"file": np.array([r["file"] for r in records], dtype=object)}


def check_cluster(cfg: GenerateConfig, resources: dict[str, float]) -> None:
    """Fail before any actor starts when the cluster cannot host the pool."""
    need_cpu = cfg.replicas * cfg.num_cpus
    if need_cpu > resources.get("CPU", 0.0):
        raise ValueError(
            f"replicas={cfg.replicas} x num_cpus={cfg.num_cpus:g} = {need_cpu:g} CPUs, but the "
            f"Ray cluster has {resources.get('CPU', 0.0):g}; lower --replicas or --num-cpus"
        )
    need_gpu = cfg.replicas * cfg.num_gpus
    if need_gpu > resources.get("GPU", 0.0):
        raise ValueError(
            f"replicas={cfg.replicas} x num_gpus={cfg.num_gpus:g} = {need_gpu:g} GPUs, but the "
            f"Ray cluster has {resources.get('GPU', 0.0):g}; set --num-gpus 0 or add GPU nodes"
        )


def generate(
    cascade: Sequence[str | Path],
    prompts: Sequence[Prompt],
    out_dir: str | Path,
    cfg: GenerateConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    ray_init: dict[str, Any] | None = None,
) -> Summary:
    """Generate every missing image of the plan on a Ray Data actor pool.

    Args:
        cascade: a saved cascade directory, or stage directories base first.
        prompts: the prompts (``read_prompt_file``).
        out_dir: output directory (created); existing finished images are kept.
        cfg: seeds, sampling, pool size and resources.
        overwrite: make every image again even if it exists.
        progress: show Ray Data's progress bars.
        log: where one-line status messages go.
        ray_init: ``ray.init`` arguments, used only when Ray is not initialised and there
            is something to generate (a run with nothing left to do never starts Ray).

    Returns:
        Summary with the counts and the manifest path.
    """
    import ray

    t0 = time.perf_counter()
    paths = [str(Path(c).resolve()) for c in cascade]
    sampling = resolved_sampling(stage_configs(paths), cfg)
    out = Path(out_dir)
    records = plan_records(prompts, cfg, sampling)
    done, todo = ([], records) if overwrite else split_done(out, records)
    log(
        f"{len(records)} images planned ({len(prompts)} prompts x {cfg.images_per_prompt}); "
        f"{len(done)} already done and skipped; {len(todo)} to generate"
    )
    if todo:
        (out / IMAGES).mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            ray.init(**(ray_init or {}))
        check_cluster(cfg, ray.cluster_resources())
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = progress
        # One block per batch, so that every replica gets work and progress moves per batch.
        blocks = -(-len(todo) // cfg.batch_size)
        ds = ray.data.from_items(
            [{"record": json.dumps(r)} for r in todo], override_num_blocks=blocks
        )
        results = ds.map_batches(
            CascadeWorker,
            fn_constructor_kwargs={
                "cascade": paths,
                "out": str(out.resolve()),
                "until": cfg.until,
                "use_gpu": cfg.num_gpus > 0,
            },
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
        )
        written = sum(len(b["file"]) for b in results.iter_batches(batch_size=None))
        if written != len(todo):
            raise RuntimeError(f"expected {len(todo)} images from the pool, got {written}")
    manifest = write_manifest(out, records)
    seconds = time.perf_counter() - t0
    log(
        f"generated {len(todo)} images, skipped {len(done)} already done; manifest: {manifest} "
        f"({seconds:.1f} s)"
    )
    return Summary(len(todo), len(done), out, manifest, seconds)


def write_manifest(out: Path, records: list[dict[str, Any]]) -> Path:
    """Rebuild ``manifest.jsonl`` from the per-image records, in plan order (atomic)."""
    lines = []
    for r in records:
        side = sidecar(out, r)
        if not side.is_file():
            raise RuntimeError(f"{side} is missing after the run; run the command again")
        lines.append(json.dumps(json.loads(side.read_text())))
    path = out / MANIFEST
    text = "".join(line + "\n" for line in lines)
    if path.is_file() and path.read_text() == text:
        return path  # a run with nothing to do writes nothing
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------ command line

EXAMPLES = """\
examples:
  imagen-ray generate --cascade runs/tiny-random --prompts prompts.txt --out outputs/batch \\
      --images-per-prompt 4 --sampling base.steps=8
  imagen-ray generate --cascade runs/export/base runs/export/sr64 --prompts drawbench.csv \\
      --out outputs/drawbench --replicas 4 --num-gpus 1 --batch-size 16
  RAY_ADDRESS=127.0.0.1:6379 imagen-ray generate ...   # on a running cluster (GCS address)

Run the same command again to finish an interrupted run: finished images are skipped.
Image j of prompt i has seed SeedSequence([seed, i, j]) (in the manifest); `imagen-ray
sample --seed <that seed>` with the prompt alone makes the same image.
"""


def register(sub: Any) -> None:
    """Add ``imagen-ray generate`` to the CLI's subcommands."""
    import argparse

    from imagen_ray.cli import add_cascade_argument, add_overrides_argument, add_sampling_argument

    p = sub.add_parser(
        "generate",
        help="batch-generate images for a prompt file on a Ray Data actor pool (resumable)",
        description="Offline batch generation: every prompt of a .txt/.csv/.jsonl file,\n"
        "N images each, made by a Ray Data pool of actors that each hold the cascade.\n"
        "Writes images/ with a JSON record beside every image, and manifest.jsonl\n"
        "(prompt, seed, settings, file). Re-running skips finished images.\n"
        "Settings: --config YAML (optional), then the flags below, then --set KEY=VALUE\n"
        "(keys: seed, images_per_prompt, negative_prompt, until, sampling.STAGE.KEY,\n"
        "format, batch_size, replicas, num_cpus, num_gpus).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_cascade_argument(p)
    p.add_argument(
        "--prompts",
        required=True,
        metavar="FILE",
        help=".txt (one prompt per line), .csv (header with a prompt/Prompts/text/caption "
        'column; other columns go to the manifest) or .jsonl ({"prompt": ...} per line)',
    )
    p.add_argument("--prompt-column", metavar="NAME", help="CSV column / JSONL key of prompts")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory; on a multi-node cluster, one that every node sees (as the "
        "cascade directory must be)",
    )
    p.add_argument("--config", "-c", metavar="YAML", help="generate settings file (optional)")
    p.add_argument("--seed", type=int, metavar="N", help="base seed (default 0)")
    p.add_argument(
        "--images-per-prompt", "-n", type=int, metavar="N", help="images per prompt (default 1)"
    )
    p.add_argument(
        "--negative-prompt", metavar="TEXT", help="steer away from this text (all stages)"
    )
    p.add_argument("--until", metavar="STAGE", help="last stage to run (default: all)")
    add_sampling_argument(p)
    p.add_argument("--format", choices=["png", "jpg", "webp"], help="image format (png)")
    p.add_argument(
        "--batch-size", type=int, metavar="N", help="images per cascade call (default 4)"
    )
    p.add_argument("--replicas", type=int, metavar="N", help="actors in the pool (default 1)")
    p.add_argument("--num-cpus", type=float, metavar="X", help="CPUs per replica (default 1)")
    p.add_argument(
        "--num-gpus", type=float, metavar="X", help="GPUs per replica, 0.5 shares one (default 0)"
    )
    p.add_argument(
        "--ray-num-cpus",
        type=float,
        metavar="X",
        help="logical CPUs of a LOCAL Ray cluster started for this run (ignored with RAY_ADDRESS)",
    )
    p.add_argument("--overwrite", action="store_true", help="make every image again")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_overrides_argument(p)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: Any) -> int:
    import os

    from imagen_ray.cli import parse_sampling_overrides

    sampling = parse_sampling_overrides(args.sampling) or None
    flags = {
        "seed": args.seed,
        "images_per_prompt": args.images_per_prompt,
        "negative_prompt": args.negative_prompt,
        "until": args.until,
        "sampling": sampling,
        "format": args.format,
        "batch_size": args.batch_size,
        "replicas": args.replicas,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
    }
    cfg = load_generate_config(args.config, flags, args.overrides)
    prompts = read_prompt_file(args.prompts, args.prompt_column)
    local = {"num_cpus": args.ray_num_cpus, "include_dashboard": False}
    generate(
        args.cascade,
        prompts,
        args.out,
        cfg,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        ray_init={} if os.environ.get("RAY_ADDRESS") else local,
    )
    return 0
