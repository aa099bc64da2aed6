"""``imagen-ray cascade assemble | push``: exported stages -> a servable cascade, and sharing it."""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLES = """\
examples:
  imagen-ray export --checkpoint runs/base --out export/base
  imagen-ray export --checkpoint runs/sr64 --out export/sr64
  imagen-ray cascade assemble --stage export/base --stage export/sr64 --out export/cascade
  imagen-ray serve -c configs/tiny/serve.yaml --cascade export/cascade
  imagen-ray cascade push --cascade export/cascade --repo my-org/imagen-tiny
"""


def register(sub: Any) -> None:
    """Add ``imagen-ray cascade`` and its subcommands."""
    p = sub.add_parser(
        "cascade",
        help="assemble exported stages into one servable cascade directory; push it to the Hub",
        description="`assemble` checks that exported stage directories form a cascade (one "
        "text encoder, sizes chain) and writes them as one directory that `sample`, "
        "`generate`, `serve` and `eval` take, with a generated model card (README.md). "
        "`push` uploads a cascade directory to a Hugging Face Hub repo.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmds = p.add_subparsers(dest="cascade_command", metavar="SUBCOMMAND", required=True)

    a = cmds.add_parser(
        "assemble",
        help="exported stage directories (base first) -> one cascade directory",
        description="Write a cascade directory from stage directories written by "
        "`imagen-ray export`, base first. Checks every stage expects the same text encoder "
        "and that each super-resolution stage takes the previous stage's output size; the "
        "error names the stage and the mismatch. The directory is written atomically; the "
        "weights are hard-linked when --out is on the same filesystem as the stages (no copy, "
        "no extra disk; safe because saves replace files, never rewrite them), else copied.",
    )
    a.add_argument(
        "--stage",
        action="append",
        required=True,
        metavar="DIR",
        help="an exported stage directory (config.json + model.safetensors); repeat, base first",
    )
    a.add_argument("--out", required=True, metavar="DIR", help="the cascade directory to write")
    a.add_argument(
        "--copy", action="store_true", help="always copy the weights (never hard-link them)"
    )
    a.set_defaults(func=cmd_assemble)

    h = cmds.add_parser(
        "push",
        help="upload a cascade directory (with a generated model card) to the Hugging Face Hub",
        description="Load a cascade (or stage) directory and upload it with a generated "
        "model card to a Hub model repo, created if missing. Uses the token of `hf auth "
        "login` or HF_TOKEN. Load it back with imagen_ray.publish.from_pretrained(REPO).",
    )
    h.add_argument("--cascade", required=True, metavar="DIR", help="cascade or stage directory")
    h.add_argument("--repo", required=True, metavar="ORG/NAME", help="the Hub repo id")
    h.add_argument("--private", action="store_true", help="create the repo private")
    h.set_defaults(func=cmd_push)


def cmd_assemble(args: argparse.Namespace) -> int:
    """``imagen-ray cascade assemble``: check the stages, write the cascade directory."""
    from imagen_ray.publish.assemble import assemble_cascade

    done = assemble_cascade(args.stage, args.out, link=not args.copy)
    how = ", ".join(f"{name} {done.weights[name]}" for name in done.stages)
    print(f"assembled cascade {done.stages} in {done.out} (weights: {how})")
    print(f"next: imagen-ray sample --cascade {done.out} --prompt '...' --out outputs/sample")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``imagen-ray cascade push``: upload with a model card."""
    from imagen_ray.publish import load_cascade, push_to_hub

    info = push_to_hub(load_cascade(args.cascade), args.repo, private=args.private)
    print(f"pushed {args.cascade} to {args.repo}: {getattr(info, 'commit_url', info)}")
    return 0
