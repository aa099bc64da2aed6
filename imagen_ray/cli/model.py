"""``imagen-ray config``, ``params``, ``init``, ``sample``: configs and models in this process."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import (
    add_cascade_argument,
    add_config_arguments,
    add_in_process_arguments,
    cascade_path,
    parse_sampling_overrides,
)


def register(sub: Any) -> None:
    """Add ``config``, ``params``, ``init`` and ``sample``."""
    p = sub.add_parser(
        "config",
        help="validate a config file and print it fully resolved (defaults + --set)",
        description="Load a run config (one stage) or a cascade config, apply --set "
        "overrides, validate every field and cross-field rule, and print the resolved YAML.",
    )
    # --config is not needed with --reference
    add_config_arguments(
        p,
        "run config (configs/*/base.yaml) or cascade config (cascade.yaml)",
        required=False,
    )
    p.set_defaults(func=cmd_config)
    p.add_argument(
        "--reference",
        action="store_true",
        help="print every config key with its type, default and meaning (Markdown) instead",
    )

    p = sub.add_parser(
        "params",
        help="count the U-Net parameters of each stage (no weights are allocated)",
        description="Build every stage's U-Net on the meta device and print parameter "
        "counts as JSON. Works for the paper-size configs on any machine.",
    )
    add_config_arguments(p, "run config or cascade config")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "init",
        help="write a randomly initialised cascade (safetensors + config) to a directory",
        description="Create a cascade from a cascade config with random U-Net weights and "
        "save it in the format `sample`, serving and training exports use.",
    )
    add_config_arguments(p, "cascade config (configs/*/cascade.yaml)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "sample",
        help="generate images from a saved cascade in this process",
        description="Load a saved cascade (a directory with cascade.json, one exported stage "
        "directory, or stage directories in order) and generate images for prompts. "
        "Writes one PNG per prompt for the last stage run, a grid.png with every stage "
        "side by side, and settings.json with everything needed to reproduce the images.",
    )
    add_cascade_argument(p)
    p.add_argument("--prompt", "-p", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument(
        "--prompts-file",
        metavar="FILE",
        help="a prompt file: .csv or .jsonl as `generate` reads them, any other file one "
        "prompt per line",
    )
    add_in_process_arguments(p, seed_help="prompt i uses seed+i (default 0)")
    p.set_defaults(func=cmd_sample)


def cmd_config(args: argparse.Namespace) -> int:
    """``imagen-ray config``: the resolved YAML, or the reference table with --reference."""
    from imagen_ray.config import config_reference_markdown, load_any_config, to_yaml

    if args.reference:
        print(config_reference_markdown(), end="")
        return 0
    if not args.config:
        raise ValueError("pass --config YAML (or --reference for the list of keys)")
    print(to_yaml(load_any_config(args.config, args.overrides)), end="")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    """``imagen-ray params``: U-Net parameter counts per stage, built on the meta device."""
    import torch

    from imagen_ray.config import CascadeConfig, load_model_config
    from imagen_ray.unet import EfficientUNet, count_parameters

    cfg = load_model_config(args.config, args.overrides)
    stages = cfg.stages if isinstance(cfg, CascadeConfig) else (cfg.stage,)
    dim = cfg.text.dim
    if dim is None:
        from imagen_ray.text import text_dim

        dim = text_dim(cfg.text)
    rows = []
    for s in stages:
        with torch.device("meta"):
            n = count_parameters(EfficientUNet(s.unet, text_dim=dim, lowres=s.is_sr))
        rows.append({"stage": s.name, "size": s.size, "lowres_size": s.lowres_size, "params": n})
        print(json.dumps(rows[-1]))
    print(json.dumps({"total_params": sum(r["params"] for r in rows), "text_dim": dim}))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """``imagen-ray init``: a randomly initialised cascade saved to --out."""
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    cfg = load_cascade_config(args.config, args.overrides)
    cascade = Cascade.from_config(cfg, seed=args.seed)
    out = cascade.save(args.out)
    print(f"saved a randomly initialised cascade {[s.name for s in cfg.stages]} to {out}")
    return 0


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """Prompts from ``--prompt`` flags, then ``--prompts-file`` (blank lines skipped)."""
    from imagen_ray.prompts import read_prompt_file

    out = list(prompts)
    if prompts_file:
        found = read_prompt_file(prompts_file, default_format="txt", allow_empty=True)
        out += [p.text for p in found]
    if not out:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return out


def cmd_sample(args: argparse.Namespace) -> int:
    """``imagen-ray sample``: images, grid.png and settings.json from a saved cascade."""
    return run_sample(args, read_prompts(args.prompt, args.prompts_file))


def planned_steps(planned: dict[str, Any], edit: dict[str, Any] | None) -> int:
    """Sampler steps of a run (what the progress bar counts): an edit's strength shortens
    every stage as :meth:`imagen_ray.cascade.Stage.sample` does; a later start skips stages."""
    from imagen_ray.cascade import last_stage

    names = list(planned)
    first = 0 if not edit or edit.get("start") is None else last_stage(names, edit["start"])
    strength = float(edit.get("strength", 1.0)) if edit else 1.0
    steps = [s.steps for s in planned.values()][first:]
    return sum(n if strength >= 1 else max(1, round(n * strength)) for n in steps)


def run_sample(
    args: argparse.Namespace,
    prompts: list[str],
    edit: dict[str, Any] | Callable[[Any], dict[str, Any]] | None = None,
    inputs: list[Any] | None = None,
) -> int:
    """Generate (or edit, with ``edit``: :meth:`Cascade.generate`'s edit arguments, or a
    function of the loaded cascade that returns them) and write one PNG per prompt for the
    last stage, grid.png (``inputs`` first, then every stage) and settings.json."""
    from tqdm import tqdm

    from imagen_ray.cascade import plan_sampling
    from imagen_ray.fs import atomic_write_json
    from imagen_ray.images import grid, save_image, to_pil
    from imagen_ray.publish import load_cascade

    sampling = parse_sampling_overrides(args.sampling)
    cascade = load_cascade(cascade_path(args.cascade), device=args.device, dtype=args.dtype)
    planned = plan_sampling(
        [s.cfg for s in cascade.stage_list], until=args.until, sampling=sampling
    )  # checked before the encoder loads
    if callable(edit):
        edit = edit(cascade)
    total = planned_steps(planned, edit)
    _ = cascade.encoder  # load it before the progress bar starts
    bar = tqdm(total=total, desc="sampling", unit="step", disable=args.no_progress)

    def progress(info: dict[str, Any]) -> None:
        bar.set_postfix_str(f"stage {info['stage']}")
        bar.update(1)

    t0 = time.perf_counter()
    out = cascade.generate(
        prompts,
        negative_prompt=args.negative_prompt,
        seed=args.seed,
        sampling=sampling,
        until=args.until,
        progress=progress,
        **(edit or {}),
    )
    bar.close()
    seconds = time.perf_counter() - t0
    out_dir = Path(args.out)
    per_stage = [to_pil(out.uint8(i)) for i in range(len(out.images))]
    files = []
    for i, img in enumerate(per_stage[-1]):
        files.append(str(save_image(img, out_dir / f"{i:04d}.png").name))
    side = out.images[-1].shape[-1]
    rows = [
        [x.convert("RGB").resize((side, side)) for x in inputs or []]
        + [per_stage[s][i] for s in range(len(per_stage))]
        for i in range(len(prompts))
    ]
    save_image(grid(rows, cell=side), out_dir / "grid.png")
    settings = {
        "prompts": prompts,
        "negative_prompt": args.negative_prompt,
        "seeds": out.seeds,
        "stages": out.stages,
        "sampling": dict(zip(out.stages, out.sampling, strict=True)),
        "truncated": out.truncated,
        "files": files,
        "cascade": [str(p) for p in args.cascade],
        "dtype": cascade.dtypes,
        "seconds": round(seconds, 3),
    }
    if edit:
        settings["edit"] = {k: v for k, v in vars(args).items() if k in EDIT_SETTINGS}
    atomic_write_json(out_dir / "settings.json", settings)
    print(f"wrote {len(files)} images, grid.png and settings.json to {out_dir} ({seconds:.1f} s)")
    return 0


# what settings.json records of an edit (the arguments of `edit` and `upscale`)
EDIT_SETTINGS = ("image", "mask", "strength", "resample_times", "start", "n")
