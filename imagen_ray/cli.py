"""The ``imagen-ray`` command line.

Each subcommand is a small function over the library; configuration errors, unloadable
checkpoints and missing models print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXAMPLES = """\
examples:
  imagen-ray config --config configs/tiny/base.yaml --set stage.unet.channels=48
  imagen-ray params --config configs/paper/cascade.yaml
  imagen-ray init --config configs/tiny/cascade.yaml --out runs/tiny-random
  imagen-ray sample --cascade runs/tiny-random --prompt "a red circle on the left" \\
      --sampling base.steps=8 --out outputs/sample
  imagen-ray data synthetic --out data/synthetic --num-samples 2000 --size 64
  imagen-ray data shards --from-folder photos/ --out data/photos
  imagen-ray train --config configs/tiny/base.yaml --set data.shards=data/synthetic
  imagen-ray export --checkpoint runs/base --out runs/export/base
  imagen-ray generate --cascade runs/tiny-random --prompts prompts.txt --out outputs/batch
  imagen-ray eval probe --cascade runs/tiny-random --out eval/probe   (see `eval --help`)
"""


def add_overrides_argument(p: argparse.ArgumentParser, help: str | None = None) -> None:
    """The ``--set KEY=VALUE`` flag every config-reading command shares."""
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=help
        or "override a config value by dotted path, value read as YAML "
        "(repeatable): --set stage.unet.channels=64 --set train.lr=1e-4",
    )


def add_cascade_argument(p: argparse.ArgumentParser) -> None:
    """``--cascade DIR [DIR ...]``: a saved cascade, or stage directories base first."""
    p.add_argument(
        "--cascade",
        required=True,
        nargs="+",
        metavar="DIR",
        help="saved cascade directory, or stage directories base first",
    )


def add_sampling_argument(p: argparse.ArgumentParser) -> None:
    """``--sampling STAGE.KEY=VALUE`` (repeatable), read by ``parse_sampling_overrides``."""
    p.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override a stage's sampling setting: base.steps=8, sr64.aug_level=0.1, "
        "base.sampler=ddim, base.guidance_scale=3, base.threshold=static (repeatable)",
    )


def _add_config_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--config", "-c", required=True, metavar="YAML", help=what)
    add_overrides_argument(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagen-ray",
        description="Imagen (text-to-image diffusion cascade) on Ray: configs, models, "
        "sampling. Run `imagen-ray COMMAND --help` for each command.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagen-ray {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "config",
        help="validate a config file and print it fully resolved (defaults + --set)",
        description="Load a run config (one stage) or a cascade config, apply --set "
        "overrides, validate every field and cross-field rule, and print the resolved YAML.",
    )
    _add_config_args(p, "run config (configs/*/base.yaml) or cascade config (cascade.yaml)")
    p.set_defaults(func=cmd_config)
    p.add_argument(
        "--reference",
        action="store_true",
        help="print every config key with its type, default and meaning (Markdown) instead",
    )
    for action in p._actions:  # --config is not needed with --reference
        if action.dest == "config":
            action.required = False

    p = sub.add_parser(
        "params",
        help="count the U-Net parameters of each stage (no weights are allocated)",
        description="Build every stage's U-Net on the meta device and print parameter "
        "counts as JSON. Works for the paper-size configs on any machine.",
    )
    _add_config_args(p, "run config or cascade config")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser(
        "init",
        help="write a randomly initialised cascade (safetensors + config) to a directory",
        description="Create a cascade from a cascade config with random U-Net weights and "
        "save it in the format `sample`, serving and training exports use.",
    )
    _add_config_args(p, "cascade config (configs/*/cascade.yaml)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "sample",
        help="generate images from a saved cascade in this process",
        description="Load a saved cascade (a directory with cascade.json, or stage "
        "directories in order) and generate images for prompts. Writes one PNG per prompt "
        "for the last stage run, a grid.png with every stage side by side, and "
        "settings.json with everything needed to reproduce the images.",
    )
    add_cascade_argument(p)
    p.add_argument("--prompt", "-p", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts-file", metavar="TXT", help="a text file with one prompt per line")
    p.add_argument("--negative-prompt", help="steer away from this text (all stages)")
    p.add_argument("--seed", type=int, default=0, help="prompt i uses seed+i (default 0)")
    p.add_argument("--until", metavar="STAGE", help="last stage to run (default: all)")
    add_sampling_argument(p)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_sample)

    from imagen_ray.train import cli as train_cli

    train_cli.register(sub)
    from imagen_ray.serve import cli as serve_cli

    serve_cli.register(sub)
    from imagen_ray import generate

    generate.register(sub)
    from imagen_ray import demo

    demo.register(sub)

    p = sub.add_parser(
        "data",
        help="write webdataset shards (real or synthetic), precompute embeddings, preview",
        description="Data commands: `shards` from a folder or table, `synthetic` for the "
        "built-in caption->image set, `encode` to precompute text embeddings, `preview` to "
        "look at what the Ray Data pipeline feeds a stage.",
    )
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    from imagen_ray.data import cli_shards

    cli_shards.register(data_sub)
    from imagen_ray.data import cli_pipeline

    cli_pipeline.register(data_sub)
    from imagen_ray.eval import cli as eval_cli

    eval_cli.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagen-ray")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


# ---------------------------------------------------------------------------- commands


def cmd_config(args: argparse.Namespace) -> int:
    from imagen_ray.config import config_reference_markdown, load_any_config, to_yaml

    if args.reference:
        print(config_reference_markdown(), end="")
        return 0
    if not args.config:
        raise ValueError("pass --config YAML (or --reference for the list of keys)")
    print(to_yaml(load_any_config(args.config, args.overrides)), end="")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    import torch

    from imagen_ray.config import CascadeConfig, load_any_config
    from imagen_ray.unet import EfficientUNet, count_parameters

    cfg = load_any_config(args.config, args.overrides)
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
    from imagen_ray.cascade import Cascade
    from imagen_ray.config import load_cascade_config

    cfg = load_cascade_config(args.config, args.overrides)
    cascade = Cascade.from_config(cfg, seed=args.seed)
    out = cascade.save(args.out)
    print(f"saved a randomly initialised cascade {[s.name for s in cfg.stages]} to {out}")
    return 0


def parse_sampling_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``base.steps=8`` -> ``{"base": {"steps": 8}}`` (values read as YAML)."""
    from imagen_ray.config import ConfigError, parse_override

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        path, value = parse_override(item)
        if len(path) != 2:
            raise ConfigError(f"--sampling {item!r}: expected STAGE.KEY=VALUE, e.g. base.steps=8")
        out.setdefault(path[0], {})[path[1]] = value
    return out


def read_prompts(prompts: Sequence[str], prompts_file: str | None) -> list[str]:
    """Prompts from flags and/or a file (blank lines skipped)."""
    out = list(prompts)
    if prompts_file:
        out += [ln.strip() for ln in Path(prompts_file).read_text().splitlines() if ln.strip()]
    if not out:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return out


def cmd_sample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from imagen_ray.cascade import Cascade
    from imagen_ray.images import grid, save_image, to_pil

    prompts = read_prompts(args.prompt, args.prompts_file)
    sampling = parse_sampling_overrides(args.sampling)
    path = args.cascade[0] if len(args.cascade) == 1 else args.cascade
    cascade = Cascade.load(path, device=args.device)
    last = cascade.stage_index(args.until)
    _ = cascade.encoder  # load it before the progress bar starts
    total = 0
    for stage in cascade.stage_list[: last + 1]:
        name = stage.cfg.name
        total += int(sampling.get(name, {}).get("steps", stage.cfg.sampling.steps))
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
    )
    bar.close()
    seconds = time.perf_counter() - t0
    out_dir = Path(args.out)
    per_stage = [to_pil(out.uint8(i)) for i in range(len(out.images))]
    files = []
    for i, img in enumerate(per_stage[-1]):
        files.append(str(save_image(img, out_dir / f"{i:04d}.png").name))
    rows = [[per_stage[s][i] for s in range(len(per_stage))] for i in range(len(prompts))]
    save_image(grid(rows, cell=out.images[-1].shape[-1]), out_dir / "grid.png")
    settings = {
        "prompts": prompts,
        "negative_prompt": args.negative_prompt,
        "seeds": out.seeds,
        "stages": out.stages,
        "sampling": dict(zip(out.stages, out.sampling, strict=True)),
        "truncated": out.truncated,
        "files": files,
        "cascade": [str(p) for p in args.cascade],
        "seconds": round(seconds, 3),
    }
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    print(f"wrote {len(files)} images, grid.png and settings.json to {out_dir} ({seconds:.1f} s)")
    return 0


# ---------------------------------------------------------------------------- entry point

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imagen-ray`` console script and ``python -m imagen_ray``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    from imagen_ray.cascade.io import CheckpointError
    from imagen_ray.config import ConfigError

    expected: tuple[type[BaseException], ...] = (
        ConfigError,
        CheckpointError,
        FileNotFoundError,
        ValueError,
    )
    func: Handler = args.func
    try:
        return func(args)
    except expected as e:
        print(f"imagen-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
