"""``imagen-ray edit`` and ``upscale``: edit a given image with a saved cascade, in this
process (image-to-image, inpainting, variations, upscaling; docs/editing.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from imagen_ray.cli.args import (
    add_cascade_argument,
    add_in_process_arguments,
)

EDIT_EXAMPLES = """\
examples:
  # repaint the white region of mask.png (or the transparent pixels of an RGBA mask)
  imagen-ray edit --cascade runs/demo/cascade --image in.png --mask mask.png \\
      --prompt "a blue square in the center" --out outputs/inpaint
  # image-to-image: keep the layout, change what the prompt says (0 keeps all, 1 keeps none)
  imagen-ray edit --cascade runs/demo/cascade --image in.png --strength 0.6 \\
      --prompt "a green circle on the left" --out outputs/img2img
  # four variations of a picture (no prompt)
  imagen-ray edit --cascade runs/demo/cascade --image in.png --strength 0.7 -n 4 --out outputs/var
"""

UPSCALE_EXAMPLES = """\
examples:
  # a 32 px picture to 64 px through the demo cascade's super-resolution stage
  imagen-ray upscale --cascade runs/demo/cascade --image small.png \\
      --prompt "a red circle on the left" --out outputs/upscaled
"""


def _common(p: argparse.ArgumentParser, *, prompt_help: str) -> None:
    add_cascade_argument(p)
    p.add_argument("--image", required=True, metavar="FILE", help="the picture to start from")
    p.add_argument("--prompt", "-p", default="", help=prompt_help)
    p.add_argument("-n", type=int, default=1, help="images to make (seeds seed..seed+n-1)")
    add_in_process_arguments(p, seed_help="image i uses seed+i (default 0)")


def register(sub: Any) -> None:
    """Add ``edit`` and ``upscale``."""
    p = sub.add_parser(
        "edit",
        help="edit a picture: inpainting with a mask, image-to-image, variations",
        description="Edit IMAGE with a saved cascade.\n\n"
        "With --mask, the mask's white pixels (or an RGBA mask's fully transparent ones, as\n"
        "OpenAI's edits endpoint reads them) are repainted at every stage and every other\n"
        "pixel is kept exactly. With --strength below 1, every stage starts from the picture\n"
        "noised that far: lower values keep more of it. Writes one PNG per image, grid.png\n"
        "(input, mask, then every stage) and settings.json. Guide: docs/editing.md.",
        epilog=EDIT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, prompt_help="what the edited picture shows (default: none, for variations)")
    p.add_argument("--mask", metavar="FILE", help="the region to repaint (white or transparent)")
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="in (0, 1]: how far each stage departs from the picture (default 1 with "
        "--mask, else 0.6)",
    )
    p.add_argument(
        "--resample-times",
        type=int,
        default=1,
        metavar="N",
        help="with --mask: take every step N times, noising back in between (RePaint); "
        "blends the repainted region better at N times the cost (default 1)",
    )
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser(
        "upscale",
        help="upscale a picture through the super-resolution stages",
        description="Upscale IMAGE with a saved cascade.\n\n"
        "The cascade starts at a super-resolution stage with IMAGE as its low-res input\n"
        "(resized to the stage's low-res size) and the noise-conditioning augmentation the\n"
        "stage samples with (its sampling.aug_level). Writes one PNG per image, grid.png\n"
        "(input, then every stage) and settings.json. Guide: docs/editing.md.",
        epilog=UPSCALE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, prompt_help="what the picture shows (the SR stages are text-conditional)")
    p.add_argument(
        "--start",
        metavar="STAGE",
        help="the stage to start at (default: the first super-resolution stage)",
    )
    p.set_defaults(func=cmd_upscale)


def _open(path: str, flag: str) -> Any:
    """A picture from a file, opened fully here so that a bad file is named at once."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{flag} {path}: not a readable image ({e})") from e


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"-n {n}: give at least 1 image")


def cmd_edit(args: argparse.Namespace) -> int:
    """``imagen-ray edit``."""
    from imagen_ray.cli.model import run_sample

    _check_n(args.n)
    image = _open(args.image, "--image")
    mask = _open(args.mask, "--mask") if args.mask else None
    if args.strength is None:
        from imagen_ray.cascade.plan import default_strength

        args.strength = default_strength(mask is not None)
    if args.resample_times != 1 and mask is None:
        raise ValueError("--resample-times applies to inpainting only: give --mask too")
    edit = {"image": image, "mask": mask, "strength": args.strength,
            "resample_times": args.resample_times}  # fmt: skip
    inputs = [image] if mask is None else [image, mask]
    return run_sample(args, [args.prompt] * args.n, edit, inputs)


def first_sr_stage(cascade: Any) -> str:
    """The name of a cascade's first super-resolution stage (what ``upscale`` starts at)."""
    sr = [s.cfg.name for s in cascade.stage_list if s.cfg.is_sr]
    if not sr:
        raise ValueError("this cascade has no super-resolution stage to upscale with")
    return str(sr[0])


def cmd_upscale(args: argparse.Namespace) -> int:
    """``imagen-ray upscale``."""
    from imagen_ray.cli.model import run_sample

    _check_n(args.n)
    image = _open(args.image, "--image")

    def edit(cascade: Any) -> dict[str, Any]:
        args.start = args.start or first_sr_stage(cascade)
        return {"image": image, "start": args.start}

    return run_sample(args, [args.prompt] * args.n, edit, [image])
