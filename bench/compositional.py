"""What makes two-object prompts work: language-understanding levers side by side, one budget.

Renders one synthetic set with two-object scenes (held-out colour-shape bindings, object
pairs and one relation phrasing; ``imagen-ray data synthetic --scene-probs``), encodes its
captions once, then for each variant trains the 32 px base stage through Ray Data -> Ray
Train + DeepSpeed (``configs/compositional/base.yaml`` plus the variant's ``--set``
overrides) for the same number of steps, exports it, and scores the built-in compositional
suite with the scene checker (``imagen-ray eval compositional``): held-out and seen prompts,
per category. Variants that change the data (share of scenes, the encoder's output layer)
render or encode their own set. Each step is the CLI command a user would run; the script
prints them.

    python bench/compositional.py                          # every variant
    python bench/compositional.py --only baseline pooled_only
    python bench/compositional.py --quick                  # smoke run (numbers meaningless)

Prints one JSON line per variant (its overrides, training seconds, and per split the
two-object prompts' accuracy: scene, binding, relation, colour, shape; the single-object
prompts' and the whole suite's scene accuracy), then a summary line. Finished variants
are reused from ``--out`` (delete a variant's folder to run it again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # `python bench/compositional.py` puts bench/ on the path; tests import bench.*
    from bench._common import emit, log, machine_info
except ImportError:
    from _common import emit, log, machine_info

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "compositional" / "base.yaml"
SCENE_PROBS = (0.3, 0.7, 0.0)  # single objects, two-object scenes, three-object scenes

_NO_CROSS = (
    "stage.unet.levels=[{mult: 1, res_blocks: 1}, {mult: 2, res_blocks: 1}, "
    "{mult: 4, res_blocks: 2, self_attn: true}]"
)
_CROSS_ALL = (
    "stage.unet.levels=[{mult: 1, res_blocks: 1, cross_attn: true}, "
    "{mult: 2, res_blocks: 1, cross_attn: true}, "
    "{mult: 4, res_blocks: 2, self_attn: true, cross_attn: true}]"
)
# name -> (what it tests, config overrides, data settings); the baseline is the config itself.
VARIANTS: dict[str, tuple[str, list[str], dict[str, Any]]] = {
    "baseline": ("configs/compositional/base.yaml as it is", [], {}),
    "pooled_only": (
        "pooled text embedding only: no cross-attention, no text layout",
        [_NO_CROSS, "stage.unet.mid_attn=false", "stage.unet.text_layout=false"],
        {},
    ),
    "cross_attn_all_levels": ("cross-attention at 32 px too", [_CROSS_ALL], {}),
    "no_text_layout": ("without the text layout path", ["stage.unet.text_layout=false"], {}),
    "no_pos_emb": ("without position embeddings", ["stage.unet.pos_emb=false"], {}),
    "text_drop_0": (
        "no text dropout (no guidance signal)",
        ["stage.diffusion.text_drop_prob=0"],
        {},
    ),
    "text_drop_0.2": ("text dropout 0.2", ["stage.diffusion.text_drop_prob=0.2"], {}),
    "scenes_0.9": ("90 % two-object scenes", [], {"scene_probs": (0.1, 0.9, 0.0)}),
    "wide_half_steps": (
        "twice the width, half the steps",
        ["stage.unet.channels=32"],
        {"steps": 0.5},
    ),
    "lr_decay": (
        "cosine LR decay to 0.1x instead of a constant LR",
        ["train.min_lr_ratio=0.1"],
        {},
    ),
    "text_mlp": (
        "the tokens projected through an MLP instead of a linear map",
        ["stage.unet.text_mlp=true"],
        {},
    ),
    "mean_pool": (
        "the pooled embedding as the tokens' mean instead of attention pooling",
        ["stage.unet.text_pooling=mean"],
        {},
    ),
    "text_layers_2": (
        "two trainable transformer blocks over the frozen tokens",
        ["stage.unet.text_layers=2"],
        {},
    ),
    "text_stack_2x": (
        "text_mlp + text_layers_2 + lr_decay, trained for twice the steps (the 15 min budget)",
        ["stage.unet.text_mlp=true", "stage.unet.text_layers=2", "train.min_lr_ratio=0.1"],
        {"steps": 2.0},
    ),
    "ordered_captions": (
        "diagnostic: captions always name the left (or top) object first, one phrasing",
        [],
        {
            "scenes": (
                "ordered",
                {
                    "relations": ["left of", "above"],
                    "relation_templates": ["{a} {rel} {b}"],
                    "heldout_relation_template": None,
                },
            )
        },
    ),
    "schedule_shift_4": (
        "noise schedule shifted by 4 instead of 2: more training at the noise where layout is set",
        ["stage.diffusion.schedule_shift=4"],
        {},
    ),
    "high_noise_0.5": (
        "half of each batch at SNR < 1e-3, where only the text can place things",
        ["stage.diffusion.high_noise_share=0.5"],
        {},
    ),
    "high_noise_0.5_2x": (
        "high_noise_0.5 + text_layers_2 + lr_decay for twice the steps: as many low-SNR "
        "samples as the layout probe needs to learn the side, as many others as the baseline",
        [
            "stage.diffusion.high_noise_share=0.5",
            "stage.unet.text_layers=2",
            "train.min_lr_ratio=0.1",
        ],
        {"steps": 2.0},
    ),
    "layout_init_normal": (
        "the text layout's output projection initialised normal instead of zero, so that "
        "its queries and keys learn from the first step (bench/layout_probe.py --init)",
        ["stage.unet.text_layout_init=normal"],
        {},
    ),
    "high_noise_layout_2x": (
        "high_noise_0.5_2x with the text layout's output starting random: both obstacles "
        "the probes found removed at once, for the 15 min budget",
        [
            "stage.diffusion.high_noise_share=0.5",
            "stage.unet.text_layout_init=normal",
            "stage.unet.text_layers=2",
            "train.min_lr_ratio=0.1",
        ],
        {"steps": 2.0},
    ),
    "layout_head": (
        "the text layouts trained to draw the clean image from the text alone (a per-cell "
        "head, as bench/layout_probe.py) through their own token projection, by that loss "
        "alone; the U-Net reads their cells",
        ["stage.unet.layout_head=true", "stage.unet.text_layout_init=normal"],
        {},
    ),
    "layout_head_2x": (
        "layout_head for twice the steps (the 15 min budget): the layout path learns the "
        "side between 1400 and 2800 steps",
        ["stage.unet.layout_head=true", "stage.unet.text_layout_init=normal"],
        {"steps": 2.0},
    ),
    "layout_head_2x_seed1": (
        "layout_head_2x with other initial weights, noise and data order (train.seed=1): "
        "whether the layout path learns the side within the budget every time",
        ["stage.unet.layout_head=true", "stage.unet.text_layout_init=normal", "train.seed=1"],
        {"steps": 2.0},
    ),
    "layout_tokens_2x": (
        "layout_head_2x with the layout's token projection added to the U-Net's tokens "
        "(unet.layout_tokens): keys that tell each object's words apart by its side, so that "
        "a place can find its own object's shape",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "stage.unet.layout_tokens=true",
        ],
        {"steps": 2.0},
    ),
    "layout_pixels_2x": (
        "layout_tokens_2x with heads that draw every pixel (unet.layout_head_pixels): a "
        "drawing that holds each object's shape, to start sampling from (sampling.layout_start)",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "stage.unet.layout_tokens=true",
            "stage.unet.layout_head_pixels=true",
        ],
        {"steps": 2.0},
    ),
    "layout_pixels_2x_seed1": (
        "layout_pixels_2x from other initial weights, noise and data order (train.seed=1): "
        "whether per-pixel heads or the seed kept its layout from learning the side",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "stage.unet.layout_tokens=true",
            "stage.unet.layout_head_pixels=true",
            "train.seed=1",
        ],
        {"steps": 2.0},
    ),
    "layout_input_2x": (
        "layout_tokens_2x with the layout heads' drawing, pooled to 4 x 4 cells, as three more "
        "input channels (unet.layout_input), as an SR stage reads its low-res image; half the "
        "training samples read the clean image's own 4 x 4 layout (diffusion.layout_teacher)",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "stage.unet.layout_tokens=true",
            "stage.unet.layout_input=true",
        ],
        {"steps": 2.0},
    ),
    "layout_input_2x_seed1": (
        "layout_input_2x from other initial weights, noise and data order (train.seed=1)",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "stage.unet.layout_tokens=true",
            "stage.unet.layout_input=true",
            "train.seed=1",
        ],
        {"steps": 2.0},
    ),
    "layout_input8_2x": (
        "layout_input_2x with the drawing pooled to 8 x 8 cells (unet.layout_input_grid): "
        "cells small enough that the heads' drawing of an object can hold its outline",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "stage.unet.layout_tokens=true",
            "stage.unet.layout_input=true",
            "stage.unet.layout_input_grid=8",
        ],
        {"steps": 2.0},
    ),
    "layout_head_2x_lr_decay": (
        "layout_head_2x with the learning rate decayed (cosine, to 0.1x): the U-Net's last "
        "steps, after the layout has learned the side, at a lower rate",
        [
            "stage.unet.layout_head=true",
            "stage.unet.text_layout_init=normal",
            "train.min_lr_ratio=0.1",
        ],
        {"steps": 2.0},
    ),
    "encoder_layer_-2": (
        "MiniLM's second-to-last layer",
        ["text.hidden_layer=-2"],
        {"encode": True},
    ),
    "encoder_layer_-4": (
        "MiniLM's fourth-to-last layer (its tokens hold the side most linearly)",
        ["text.hidden_layer=-4"],
        {"encode": True},
    ),
}
GUIDANCE = (1.0, 3.0, 10.0)  # also scored on the baseline, beside the config's own scale
LAYOUT_STARTS = (0.9, 0.7, 0.5)  # also scored with a layout head (sampling.layout_start)


def run(cmd: list[str], log_file: Path) -> None:
    """Run one CLI command, its output into ``log_file``; raise with the tail on failure."""
    log("$ " + " ".join(cmd))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}); see {log_file}")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "imagen_ray", *args]


def dataset(
    out: Path,
    samples: int,
    scene_probs: tuple[float, ...],
    overrides: list[str],
    scenes: tuple[str, dict[str, Any]] | None = None,
) -> tuple[Path, Path]:
    """(rendered, encoded) shards for these scene settings and text overrides (reused);
    ``scenes``: (a name for the folder, scene settings for ``--scenes``)."""
    name = "raw-" + "-".join(f"{p:g}" for p in scene_probs) + (f"-{scenes[0]}" if scenes else "")
    raw = out / "data" / name
    text = [o for o in overrides if o.startswith("text.")]
    enc = raw.with_name(raw.name.replace("raw", "enc") + "".join(f"_{o}" for o in text))
    if not (raw / "summary.json").is_file():
        probs = [f"{p:g}" for p in scene_probs]
        extra = []
        if scenes:
            import yaml

            settings = out / "data" / f"scenes-{scenes[0]}.yaml"
            settings.parent.mkdir(parents=True, exist_ok=True)
            settings.write_text(yaml.safe_dump(scenes[1]))
            extra = ["--scenes", str(settings)]
        run(
            cli("data", "synthetic", "--out", str(raw), "--num-samples", str(samples),
                "--sizes", "large", "--backgrounds", "black",
                "--scene-probs", *probs, "--samples-per-shard", "1000", "--no-progress", *extra),
            out / "data.log",
        )  # fmt: skip
    if not (enc / "encoding.json").is_file():
        sets = [a for o in text for a in ("--set", o)]
        run(
            cli(
                "data", "encode", "--shards", str(raw), "--out", str(enc), "-c", str(CONFIG), *sets
            ),
            out / "data.log",
        )
    return raw, enc


def evaluate(stage: Path, heldout: Path, out: Path, n: int, sampling: str | None = None) -> dict:
    """``imagen-ray eval compositional`` on one stage (``sampling``: one KEY=VALUE of the
    base stage's sampling settings); its metrics.json."""
    if not (out / "metrics.json").is_file():
        extra = [] if sampling is None else ["--sampling", f"base.{sampling}"]
        run(
            cli("eval", "compositional", "--cascade", str(stage), "--heldout", str(heldout),
                "-n", str(n), "--out", str(out), "--no-progress", *extra),
            out.parent / "eval.log",
        )  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


TWO_OBJECT = ("colour binding", "spatial relation")  # the categories of two-object prompts
KEYS = ("scene", "binding", "relation", "colour", "shape")


def _pooled(scores: list[dict[str, Any]], key: str) -> float | None:
    """The accuracy ``key`` over several categories' scores, weighted by their prompts."""
    have = [(s["n"], s["accuracy"][key]) for s in scores if s["accuracy"].get(key) is not None]
    n = sum(k for k, _ in have)
    return sum(k * v for k, v in have) / n if n else None


def summarise(metrics: dict[str, Any]) -> dict[str, Any]:
    """Per split: accuracy on the two-object prompts (colour binding and spatial relation
    pooled), the single-object prompts' scene accuracy (``single``) and the whole suite's
    (``all``, counting included); and scene accuracy per category."""
    cats = metrics["categories"]
    row: dict[str, Any] = {}
    for split, score in metrics["splits"].items():
        two = [cats[c][split] for c in TWO_OBJECT if split in cats.get(c, {})]
        row[split] = {k: _pooled(two, k) for k in KEYS}
        single = cats.get("single object", {}).get(split)
        row[split]["single"] = None if single is None else single["accuracy"]["scene"]
        row[split]["all"] = score["accuracy"]["scene"]
    row["categories"] = {
        cat: {s: v["accuracy"]["scene"] for s, v in splits.items()} for cat, splits in cats.items()
    }
    return row


def variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train, export and score one variant; its JSON row."""
    what, overrides, data = VARIANTS[name]
    steps = max(1, round(args.steps * data.get("steps", 1.0)))
    raw, shards = dataset(
        args.out, args.samples, data.get("scene_probs", SCENE_PROBS), overrides, data.get("scenes")
    )
    vdir = args.out / name
    vdir.mkdir(parents=True, exist_ok=True)
    stage, timing = vdir / "stage", vdir / "train_s.json"
    if not (stage / "config.json").is_file():
        t0 = time.perf_counter()
        sets = [
            f"data.shards={shards}", f"train.storage_path={vdir / 'runs'}", f"train.name={name}",
            f"train.steps={steps}", f"train.warmup_steps={min(50, steps // 2)}",
            f"train.ema_warmup_steps={steps}",
            f"train.checkpoint_every={steps}", f"train.sample_every={steps}",
            f"wandb.dir={vdir / 'wandb'}", *overrides,
        ]  # fmt: skip
        run(
            cli("train", "-c", str(CONFIG), *[a for s in sets for a in ("--set", s)]),
            vdir / "train.log",
        )
        run(
            cli("export", "--checkpoint", str(vdir / "runs" / name), "--out", str(stage)),
            vdir / "train.log",
        )
        timing.write_text(json.dumps({"train_s": round(time.perf_counter() - t0, 1)}))
    heldout = raw / "heldout.json"
    row = {"variant": name, "what": what, "overrides": overrides, "steps": steps}
    row["train_s"] = json.loads(timing.read_text())["train_s"] if timing.is_file() else None
    row |= summarise(evaluate(stage, heldout, vdir / "eval", args.images_per_prompt))
    n = args.images_per_prompt
    if name == "baseline" and not args.quick:
        row["guidance"] = {
            g: summarise(evaluate(stage, heldout, vdir / f"eval-g{g:g}", n, f"guidance_scale={g}"))
            for g in GUIDANCE
        }
    layout_in = "stage.unet.layout_input=true" in overrides  # its start is the layout already
    if "stage.unet.layout_head=true" in overrides and not layout_in and not args.quick:
        row["layout_start"] = {
            t: summarise(evaluate(stage, heldout, vdir / f"eval-ls{t:g}", n, f"layout_start={t:g}"))
            for t in LAYOUT_STARTS
        }
    return row


def figure(out: Path, variants: list[str], prompts: int = 8) -> Any:
    """Side by side: each variant's first image of the first ``prompts`` held-out two-object
    prompts (one column per variant, one row per prompt), with what the checker read."""
    from PIL import Image, ImageDraw

    from imagen_ray.eval.report import failure_grid, failure_tile

    def records(name: str) -> list[dict[str, Any]]:
        lines = (out / name / "eval" / "readings.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    runs = {v: records(v) for v in variants}
    first = runs[variants[0]]
    seen: set[str] = set()
    picked = []
    for i, r in enumerate(first):  # the first image of each prompt
        if r["split"] == "heldout" and r["category"] in TWO_OBJECT and r["prompt"] not in seen:
            seen.add(r["prompt"])
            picked.append(i)
    picked = picked[:: max(1, len(picked) // prompts)][:prompts]  # spread over the suite
    tiles = []
    for i in picked:
        for v in variants:
            r = runs[v][i]
            if r["prompt"] != first[i]["prompt"]:
                raise ValueError(f"{v}'s eval has other prompts than {variants[0]}'s")
            read = r["read"]
            found = [read["found"][k] for k in read["matched"] if k is not None]
            lines = [
                (f"{o['colour']} {o['shape']}", not (c and sh))
                for o, c, sh in zip(found, read["colour"], read["shape"], strict=False)
            ]
            ok = bool(read["relation"])
            lines.append((f"relation {'right' if ok else 'wrong'}", not ok))
            image = Image.open(out / v / "eval" / r["file"]).convert("RGB")
            tile = failure_tile(np.asarray(image), r["prompt"], lines)
            ImageDraw.Draw(tile).text((3, 2), v, fill=(255, 255, 255))  # the variant, on top
            tiles.append(tile)
    return failure_grid(tiles, cols=len(variants) * 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="work directory (default runs/compositional; --quick: runs/compositional-quick, so "
        "its small set is never reused by a full run)",
    )
    p.add_argument(
        "--only", nargs="+", choices=list(VARIANTS), help="variants to run (default all)"
    )
    p.add_argument(
        "--steps", type=int, default=None, help="training steps per variant (default: the config's)"
    )
    p.add_argument("--samples", type=int, default=8000, help="synthetic samples (default 8000)")
    p.add_argument(
        "--images-per-prompt", type=int, default=2, help="images per suite prompt (default 2)"
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: 300 samples, 20 steps, baseline only"
    )
    p.add_argument(
        "--figure",
        type=Path,
        metavar="PNG",
        help="after the runs, write a picture of the --only variants side by side on held-out "
        "two-object prompts (what the checker read under each image) to PNG",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.steps, args.only, args.images_per_prompt = 300, 20, ["baseline"], 1
    if args.out is None:
        args.out = ROOT / "runs" / ("compositional-quick" if args.quick else "compositional")
    if args.steps is None:
        import yaml

        args.steps = int(yaml.safe_load(CONFIG.read_text())["train"]["steps"])
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = []
    for name in args.only or list(VARIANTS):
        try:
            rows.append(variant(name, args))
        except RuntimeError as e:
            rows.append({"variant": name, "error": str(e)})
        emit(rows[-1])
    if args.figure is not None and not any("error" in r for r in rows):
        figure(args.out, [r["variant"] for r in rows]).save(args.figure)
        log(f"figure: {args.figure}")
    emit({"summary": {r["variant"]: r.get("heldout", {}).get("scene") for r in rows},
          "machine": machine_info(), "quick": args.quick})  # fmt: skip
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
