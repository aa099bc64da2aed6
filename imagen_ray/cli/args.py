"""Argparse helpers every command group shares, and the rule that turns an expected error
into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

Handler = Callable[[argparse.Namespace], int]


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


def add_verbose_argument(p: argparse.ArgumentParser) -> None:
    """``--verbose``: forward the cluster's own output (Ray, Serve, DeepSpeed, W&B) here."""
    p.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="show what Ray, Ray Data, Serve, DeepSpeed and W&B print in every process "
        "(default: it goes to Ray's log files, whose place the command prints and links "
        "as logs/ from its output directory)",
    )


def add_config_arguments(p: argparse.ArgumentParser, what: str, *, required: bool = True) -> None:
    """``--config/-c YAML`` (``what`` is its help) and ``--set KEY=VALUE``."""
    p.add_argument("--config", "-c", required=required, metavar="YAML", help=what)
    add_overrides_argument(p)


def add_cascade_argument(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--cascade DIR [DIR ...]``: a saved cascade, a stage directory, or stage directories
    base first."""
    p.add_argument(
        "--cascade",
        required=required,
        nargs="+",
        metavar="DIR",
        help="saved cascade directory, one exported stage directory (a one-stage cascade), "
        "or stage directories base first",
    )


def add_dtype_argument(p: argparse.ArgumentParser, *, default: str | None = "auto") -> None:
    """``--dtype``: the U-Nets' inference dtype (:mod:`imagen_ray.config.dtypes`)."""
    from imagen_ray.config.dtypes import INFERENCE_DTYPES

    p.add_argument(
        "--dtype",
        choices=INFERENCE_DTYPES,
        default=default,
        help="U-Net inference dtype; auto (default): bfloat16 on CUDA, float32 on CPU. "
        "Sampler state, guidance and thresholding stay float32; float16 needs CUDA",
    )


def cascade_path(dirs: Sequence[str]) -> str | list[str]:
    """What ``publish.load_cascade`` takes for ``--cascade``: one directory, or the stage list."""
    return dirs[0] if len(dirs) == 1 else list(dirs)


def add_in_process_arguments(p: argparse.ArgumentParser, *, seed_help: str) -> None:
    """What every in-process sampling command (``sample``, ``edit``, ``upscale``) takes
    after its inputs: negative prompt, seed, last stage, sampling overrides, device, dtype,
    output directory, progress bar."""
    p.add_argument("--negative-prompt", help="steer away from this text (all stages)")
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--until", metavar="STAGE", help="last stage to run (default: all)")
    add_sampling_argument(p)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    add_dtype_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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


def positive(name: str, value: int, minimum: int = 1) -> None:
    """Raise ValueError naming the flag when ``value < minimum``."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def run_handler(func: Handler, args: argparse.Namespace) -> int:
    """Run a command; configuration errors, unloadable checkpoints, missing files, a full
    disk, storage that stays unreachable and bad values print ``imagen-ray COMMAND: error:
    ...`` and return 2, Ctrl-C returns 130."""
    from imagen_ray.cascade.io import CheckpointError
    from imagen_ray.config import ConfigError
    from imagen_ray.fs import NoSpaceError
    from imagen_ray.storage import StorageUnavailable

    expected: tuple[type[BaseException], ...] = (
        ConfigError,
        CheckpointError,
        FileNotFoundError,
        NoSpaceError,
        StorageUnavailable,
        ValueError,
    )
    try:
        return func(args)
    except expected as e:
        print(f"imagen-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
