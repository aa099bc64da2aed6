"""Editing quality on the demo's trained cascade: inpainting, image-to-image, upscaling.

Every case starts from a picture drawn by the synthetic renderer as the demo's set draws
them (one large object on black, 64 px), and every target is one of the demo's held-out
prompts (a colour-shape or shape-position pair never trained on):

- **inpainting**: a picture of another colour and shape at the target's position; the
  object's square (1.4x its side) is masked and the held-out prompt asks for the target
  there. The probe (``imagen_ray.eval.probe``) reads colour, shape and position of the
  output; the unmasked pixels must equal the input's.
- **image-to-image** at strength 0.6: the picture has the target's shape and position in
  another colour; the prompt changes only the colour. Scored: the colour follows the prompt
  and the position (and shape) are kept.
- **upscaling**: the picture of the target rendered at 32 px goes through the SR stage
  (``start`` at it); PSNR against the same picture rendered at 64 px, beside bicubic
  upsampling of the same 32 px input (``eval sr-fidelity``'s PSNR).

    python bench/editing.py                                 # runs/demo/cascade (make demo)
    python bench/editing.py --cascade DIR --out runs/editing --cases 24

Prints one JSON line per task and a summary with the targets (inpainting >= 80 %,
image-to-image colour >= 80 % with position kept, upscaling above bicubic); writes
a grid per task (``inpainting.png``: input, mask, base stage, last stage per case;
``image_to_image.png``; ``upscaling.png``: input, SR, truth), ``examples.png`` (the figure
of docs/editing.md) and ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

try:  # `python bench/editing.py` puts bench/ on the path; tests import bench.*
    from bench._common import emit, log, machine_info
except ImportError:
    from _common import emit, log, machine_info

ROOT = Path(__file__).resolve().parents[1]
STRENGTH = 0.6
MASK_SCALE = 1.4  # the mask's side / the object's side


def picture(colour: str, shape: str, position: str, size: int = 64) -> np.ndarray:
    """One large object on black at the position's anchor, as the demo's set draws it."""
    from imagen_ray.data.synthetic_draw import render_objects
    from imagen_ray.data.synthetic_vocab import ATTRIBUTES

    attrs = {
        "shape": shape,
        "rgb": list(ATTRIBUTES.colours[colour]),
        "object_size": ATTRIBUTES.sizes["large"],
        "centers": [list(ATTRIBUTES.positions[position])],
    }
    return np.asarray(render_objects([attrs], [0, 0, 0], size).convert("RGB"))


def object_mask(position: str, size: int = 64) -> np.ndarray:
    """(size, size) uint8, 255 (repaint) over the object's square at ``position``."""
    from imagen_ray.data.synthetic_vocab import ATTRIBUTES

    cx, cy = ATTRIBUTES.positions[position]
    half = ATTRIBUTES.sizes["large"] * MASK_SCALE / 2
    m = np.zeros((size, size), np.uint8)
    x0, x1 = int(np.floor((cx - half) * size)), int(np.ceil((cx + half) * size))
    y0, y1 = int(np.floor((cy - half) * size)), int(np.ceil((cy + half) * size))
    m[max(0, y0) : y1, max(0, x0) : x1] = 255
    return m


def cases(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` held-out targets of the demo's set, each with a source of another colour
    and shape (inpainting) and one of another colour only (image-to-image)."""
    from imagen_ray.data.synthetic import heldout_prompts
    from imagen_ray.data.synthetic_vocab import ATTRIBUTES
    from imagen_ray.demo.run import demo_spec

    rng = np.random.default_rng(seed)
    items = heldout_prompts(demo_spec())
    picked = [items[int(i)] for i in rng.permutation(len(items))[:n]]
    colours, shapes = list(ATTRIBUTES.colours), list(ATTRIBUTES.shapes)
    out = []
    for item in picked:
        a = item["attributes"]
        other_colours = [c for c in colours if c != a["colour"]]
        other_shapes = [s for s in shapes if s != a["shape"]]
        out.append({
            "prompt": item["prompt"], "colour": a["colour"], "shape": a["shape"],
            "position": a["position"],
            "inpaint_from": (str(rng.choice(other_colours)), str(rng.choice(other_shapes))),
            "recolour_from": str(rng.choice(other_colours)),
        })  # fmt: skip
    return out


def _read(images: np.ndarray) -> list[dict[str, Any]]:
    from imagen_ray.eval.probe import read_image

    return [read_image(x).to_dict() for x in images]


def inpainting(cascade: Any, items: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Repaint each source's object as the held-out target; score the reading and the kept
    pixels."""
    sources = [picture(*c["inpaint_from"], c["position"]) for c in items]
    masks = [object_mask(c["position"]) for c in items]
    out = cascade.generate([c["prompt"] for c in items], image=sources, mask=masks, seed=seed)
    last = out.uint8()
    reads = _read(last)
    right = [
        r["colour"] == c["colour"] and r["shape"] == c["shape"] and r["position"] == c["position"]
        for r, c in zip(reads, items, strict=True)
    ]
    kept = [
        bool(np.array_equal(x[m == 0], s[m == 0]))
        for x, m, s in zip(last, masks, sources, strict=True)
    ]
    pairs = list(zip(reads, items, strict=True))
    return {
        "task": "inpainting", "cases": len(items), "accuracy": float(np.mean(right)),
        "colour": float(np.mean([r["colour"] == c["colour"] for r, c in pairs])),
        "shape": float(np.mean([r["shape"] == c["shape"] for r, c in pairs])),
        "unmasked_pixels_unchanged": float(np.mean(kept)),
        "_grid": [[s, np.dstack([m] * 3), b, x] for s, m, b, x in
                  zip(sources, masks, out.uint8(0), last, strict=True)],
    }  # fmt: skip


def image_to_image(cascade: Any, items: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Recolour each source (the target's shape and place in another colour) at STRENGTH."""
    sources = [picture(c["recolour_from"], c["shape"], c["position"]) for c in items]
    out = cascade.generate(
        [c["prompt"] for c in items], image=sources, strength=STRENGTH, seed=seed
    )
    reads = _read(out.uint8())
    pairs = list(zip(reads, items, strict=True))
    colour = [r["colour"] == c["colour"] for r, c in pairs]
    kept = [r["position"] == c["position"] for r, c in pairs]
    return {
        "task": "image_to_image", "strength": STRENGTH, "cases": len(items),
        "colour_follows_prompt": float(np.mean(colour)),
        "position_kept": float(np.mean(kept)),
        "shape_kept": float(np.mean([r["shape"] == c["shape"] for r, c in pairs])),
        "colour_and_position": float(np.mean([a and b for a, b in zip(colour, kept, strict=True)])),
        "_grid": [[s, b, x] for s, b, x in zip(sources, out.uint8(0), out.uint8(), strict=True)],
    }  # fmt: skip


def upscaling(cascade: Any, items: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """32 px pictures through the first SR stage vs bicubic, PSNR against the 64 px truth."""
    import torch.nn.functional as F

    from imagen_ray.eval.sr_fidelity import compare

    sr = next(s for s in cascade.stage_list if s.cfg.is_sr)
    low_size, size = sr.cfg.lowres_size, sr.cfg.size
    lows = [picture(c["colour"], c["shape"], c["position"], low_size) for c in items]
    truth = [picture(c["colour"], c["shape"], c["position"], size) for c in items]
    out = cascade.generate(
        [c["prompt"] for c in items], image=lows, start=sr.cfg.name, seed=seed, until=sr.cfg.name
    )

    def t(a: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2).float() / 127.5 - 1

    bicubic = F.interpolate(t(lows), size=size, mode="bicubic", align_corners=False).clamp(-1, 1)
    ours = compare(t(list(out.uint8())), t(truth))
    base = compare(bicubic, t(truth))
    return {
        "task": "upscaling", "stage": sr.cfg.name, "cases": len(items),
        "psnr_sr": round(ours["psnr"], 2), "psnr_bicubic": round(base["psnr"], 2),
        "gain_db": round(ours["psnr"] - base["psnr"], 2),
        "_grid": [[np.asarray(Image.fromarray(lo).resize((size, size), Image.Resampling.NEAREST)),
                   x, tr] for lo, x, tr in zip(lows, out.uint8(), truth, strict=True)],
    }  # fmt: skip


def examples(grids: dict[str, list[list[np.ndarray]]], rows: int = 3) -> Image.Image:
    """The figure of docs/editing.md: per case, the inpainting's input, mask and result,
    then the image-to-image input and result (64 px cells shown at 128)."""
    from imagen_ray.images import grid, to_pil

    def big(a: np.ndarray) -> Image.Image:
        return to_pil(a[None])[0].resize((128, 128), Image.Resampling.NEAREST)

    picked = [
        [big(x) for x in (ip[0], ip[1], ip[3], ii[0], ii[2])]
        for ip, ii in zip(grids["inpainting"][:rows], grids["image_to_image"][:rows], strict=True)
    ]
    return grid(picked, cell=128)


TARGETS = {
    "inpainting": ("accuracy", 0.8),
    "image_to_image": ("colour_and_position", 0.8),
    "upscaling": ("gain_db", 0.0),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cascade", type=Path, default=ROOT / "runs" / "demo" / "cascade",
                   help="a trained cascade (default: make demo's)")  # fmt: skip
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "editing", help="output folder")
    p.add_argument("--cases", type=int, default=24, help="held-out targets per task (24)")
    p.add_argument("--seed", type=int, default=0, help="generation seed (case i: seed + i)")
    p.add_argument("--tasks", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    args = p.parse_args(argv)
    if not (args.cascade / "cascade.json").is_file():
        p.error(f"--cascade {args.cascade}: no trained cascade there; run `make demo` first")
    torch.set_num_threads(2)
    from imagen_ray.cascade import Cascade
    from imagen_ray.images import grid, save_image, to_pil

    cascade = Cascade.load(args.cascade)
    items = cases(args.cases)
    log(f"{len(items)} held-out cases from {args.cascade}")
    tasks = {"inpainting": inpainting, "image_to_image": image_to_image, "upscaling": upscaling}
    rows, summary, grids = [], {}, {}
    for name in args.tasks:
        t0 = time.perf_counter()
        row = tasks[name](cascade, items, args.seed)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        cells = grids[name] = row.pop("_grid")
        side = max(c.shape[0] for c in cells[0])
        img = grid([[to_pil(c[None])[0].resize((side, side), Image.Resampling.NEAREST)
                     for c in r] for r in cells], cell=side)  # fmt: skip
        save_image(img, args.out / f"{name}.png")
        key, target = TARGETS[name]
        row["target"] = {key: target, "met": bool(row[key] >= target if name != "upscaling"
                                                   else row[key] > target)}  # fmt: skip
        summary[name] = {key: row[key], "met": row["target"]["met"]}
        emit(row)
        rows.append(row)
    if "inpainting" in grids and "image_to_image" in grids:
        save_image(examples(grids), args.out / "examples.png")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "prompts": items}, indent=1))
    emit({"summary": summary, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
