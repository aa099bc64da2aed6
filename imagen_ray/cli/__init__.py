"""The ``imagen-ray`` command line: a thin shell over library calls.

Every command group is a module here with ``register(sub)`` (adds its subcommands to the
top-level subparsers) and ``cmd_*`` handlers; ``COMMANDS`` lists them in ``--help`` order.
Configuration errors, unloadable checkpoints and missing models print one clear message and
exit with status 2 (:func:`imagen_ray.cli.args.run_handler`). Only the ``__main__.py`` entry
points (``python -m imagen_ray``, ``python -m imagen_ray.train``) import it from outside this
package; no library module does.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Sequence

from imagen_ray.cli.args import Handler, run_handler

__all__ = ["COMMANDS", "build_parser", "main"]

# Command-group modules of imagen_ray.cli, in the order `imagen-ray --help` lists them.
COMMANDS = (
    "model", "edit", "train", "plan", "cascade", "serve", "generate", "demo", "data", "eval",
)  # fmt: skip

EXAMPLES = """\
examples:
  imagen-ray config --config configs/tiny/base.yaml --set stage.unet.channels=48
  imagen-ray params --config configs/paper/cascade.yaml
  imagen-ray init --config configs/tiny/cascade.yaml --out runs/tiny-random
  imagen-ray sample --cascade runs/tiny-random --prompt "a red circle on the left" \\
      --sampling base.steps=8 --out outputs/sample
  imagen-ray edit --cascade runs/demo/cascade --image in.png --mask mask.png \\
      --prompt "a blue square in the center" --out outputs/inpaint   (see `edit --help`)
  imagen-ray data synthetic --out data/synthetic --num-samples 2000 --size 64
  imagen-ray data shards --from-folder photos/ --out data/photos
  imagen-ray train --config configs/tiny/base.yaml --set data.shards=data/synthetic
  imagen-ray export --checkpoint runs/base --out runs/export/base
  imagen-ray cascade assemble --stage runs/export/base --stage runs/export/sr64 \\
      --out runs/export/cascade
  imagen-ray generate --cascade runs/tiny-random --prompts prompts.txt --out outputs/batch
  imagen-ray eval probe --cascade runs/tiny-random --out eval/probe   (see `eval --help`)
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``imagen-ray`` parser with every command group of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="imagen-ray",
        description="Imagen (text-to-image diffusion cascade) on Ray: configs, models, "
        "sampling. Run `imagen-ray COMMAND --help` for each command.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagen-ray {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"imagen_ray.cli.{name}").register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("imagen-ray")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``imagen-ray`` console script and ``python -m imagen_ray``."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    return run_handler(func, args)
