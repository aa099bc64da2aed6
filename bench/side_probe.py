"""Where does a trained base stage take each object's side from: the caption or the noise?

The diffusion loss only asks the text for the layout where the noisy image ``x_t`` no
longer shows it. This probe measures where that is for a trained stage. For two-object
scenes of the study's set, at fixed noise levels ``t``, it builds ``x_t`` twice with the same
noise: once from the true image and once from the image mirrored along the relation's axis
(the two objects swapped), and asks the stage for ``x0`` with the true caption (no
guidance). Each prediction, at 8 x 8, scores a hit when it is nearer the true image than
the mirrored one (``bench/layout_probe.py``'s side accuracy; 50 % is chance):

- ``side_from_true``: how often the side is right when ``x_t`` agrees with the caption;
- ``side_from_mirrored``: how often the caption wins over an ``x_t`` that says the
  opposite. Near 50 % the stage draws what it sees, whatever the text says; well above,
  it follows the caption.

At the highest noise both readings are the stage's text-only guess of the side. The SNR
at which ``side_from_mirrored`` drops tells where training stops needing the text for the
layout (``stage.diffusion.high_noise_share`` moves training there).

    python bench/side_probe.py runs/compositional/baseline/stage
    python bench/side_probe.py runs/compositional/*/stage --times 0.999 0.99 0.9

A stage with layout heads (``unet.layout_head``) also gets ``layout_head_side``: the side
accuracy of their drawing from the caption alone, which ``sampling.layout_start`` starts
from.

Prints one JSON line per stage and ``t``, then a summary line (``side_from_mirrored`` at
each ``t``, per stage). The samples come from the set the stage was trained on: the probe
asks what the stage uses, not how well it generalises (``imagen-ray eval compositional``
does that on held-out prompts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:  # `python bench/side_probe.py` puts bench/ on the path; tests import bench.*
    from bench._common import emit, log, machine_info
    from bench.compositional import SCENE_PROBS, dataset
    from bench.layout_probe import GRID, read_set, side_accuracy
except ImportError:
    from _common import emit, log, machine_info
    from compositional import SCENE_PROBS, dataset
    from layout_probe import GRID, read_set, side_accuracy

ROOT = Path(__file__).resolve().parents[1]
TIMES = [0.999, 0.99, 0.97, 0.95, 0.9, 0.8, 0.6]


def mirror(images: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) images flipped along each one's relation axis (0: x, 1: y)."""
    return torch.where((axis == 0)[:, None, None, None], images.flip(3), images.flip(2))


@torch.no_grad()
def predict_x0(
    stage: Any, x_t: torch.Tensor, t: float, emb: torch.Tensor, mask: torch.Tensor, batch: int
) -> torch.Tensor:
    """The stage's conditional x0 prediction at time ``t`` (no guidance), in batches."""
    from imagen_ray.diffusion import pred_to_x0

    out = []
    for i in range(0, len(x_t), batch):
        xs = x_t[i : i + batch]
        ts = torch.full((len(xs),), t)
        pred = stage.unet(xs, ts, emb[i : i + batch], mask[i : i + batch])
        x0 = pred_to_x0(pred.float(), xs, stage.log_snr_fn(ts), stage.cfg.diffusion.objective)
        out.append(x0.clamp(-1, 1))
    return torch.cat(out)


def to_grid(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, GRID, GRID, 3), box-filtered as the probe's targets are."""
    return F.adaptive_avg_pool2d(images, GRID).permute(0, 2, 3, 1)


def probe(
    stage: Any, data: dict[str, Any], times: list[float], batch: int, seed: int
) -> list[dict[str, Any]]:
    """One row per ``t``: the SNR and both side accuracies of ``stage`` on ``data``."""
    from imagen_ray.diffusion import q_sample

    images, axis = data["image"], data["axis"]
    target = to_grid(images)
    eps = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for t in times:
        log_snr = stage.log_snr_fn(torch.full((len(images),), t))
        row: dict[str, Any] = {"t": t, "snr": float(log_snr[0].exp())}
        for name, x0 in (("true", images), ("mirrored", mirror(images, axis))):
            x_t = q_sample(x0, log_snr, eps)
            pred = predict_x0(stage, x_t, t, data["emb"], data["mask"], batch)
            row[f"side_from_{name}"] = round(side_accuracy(to_grid(pred), target, axis), 4)
        rows.append(row | {"scenes": len(images)})
    return rows


@torch.no_grad()
def layout_head_side(stage: Any, data: dict[str, Any]) -> float:
    """Side accuracy of the stage's layout heads' drawing from the caption alone
    (``unet.layout_head``; what ``sampling.layout_start`` starts from)."""
    drawing = stage.layout_image(data["emb"], data["mask"], data["image"].shape[-1])
    return round(side_accuracy(to_grid(drawing), to_grid(data["image"]), data["axis"]), 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("stages", type=Path, nargs="+", help="exported base stage folders")
    p.add_argument("--shards", type=Path, help="encoded shards (default: the study's set)")
    p.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "compositional", help="the study's folder"
    )
    p.add_argument("--scenes", type=int, default=256, help="two-object scenes to probe (256)")
    p.add_argument("--times", type=float, nargs="+", default=TIMES, help="the t to probe at")
    p.add_argument("--batch", type=int, default=64, help="scenes per forward pass (64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared noise")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from imagen_ray.cascade.io import read_stage_meta

    size = int(read_stage_meta(args.stages[0])["stage"]["size"])
    shards = args.shards or dataset(args.out, 8000, SCENE_PROBS, [])[1]
    data = read_set(shards, image_size=size, limit=4 * args.scenes)
    keep = (data["axis"] >= 0).nonzero().squeeze(1)[: args.scenes]
    data = {k: v[keep] for k, v in data.items()}
    log(f"{len(keep)} two-object scenes from {shards}")
    from imagen_ray.cascade import load_stage

    summary = {}
    for stage_dir in args.stages:
        stage, _ = load_stage(stage_dir)
        for row in probe(stage, data, sorted(args.times, reverse=True), args.batch, args.seed):
            emit({"stage": str(stage_dir), **row})
            summary[f"{stage_dir}@{row['t']}"] = row["side_from_mirrored"]
        if stage.cfg.unet.layout_head:
            side = layout_head_side(stage, data)
            emit({"stage": str(stage_dir), "layout_head_side": side, "scenes": len(keep)})
            summary[f"{stage_dir}@layout_head"] = side
    emit({"summary": summary, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
