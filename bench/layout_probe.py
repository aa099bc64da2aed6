"""Can the U-Net's text path learn *where* a caption puts each colour, without the noise?

The diffusion model has to learn which side each object goes to from the denoising loss
alone. This probe asks the same question of the text path in isolation: the frozen
encoder's tokens go through the U-Net's own text modules (projection, optional
``text_layers`` blocks) and are read by the ``text_layout`` cross-attention, whose queries
come from each cell's position alone, then a per-cell MLP predicts the clean image at
8 x 8. It trains on the language study's synthetic set with a plain regression loss, with
the study's batch size, and reports after each budget the share of held-out two-object
captions (20 % of the set, never trained on) whose prediction is closer to the true image
than to the same image mirrored along the relation's axis (the objects swapped: 50 % is
chance, a model that does not read the side draws both sides alike).

If this learns the side within the study's 22,400 samples, the text path can carry it and
the denoising loss is what hides it; if not, the tokens or the path are the wall.

    python bench/layout_probe.py                               # the study's set
    python bench/layout_probe.py --variants linear text_layers_2
    python bench/layout_probe.py --variants linear --init zero --seeds 0 1   # as the U-Net

Prints one JSON line per variant and budget, then a summary line.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from imagen_ray.unet.layers import Attention, TextBlock, position_features
from imagen_ray.unet.network import _text_projection

try:  # `python bench/layout_probe.py` puts bench/ on the path; tests import bench.*
    from bench._common import emit, log, machine_info
    from bench.compositional import SCENE_PROBS, dataset
except ImportError:
    from _common import emit, log, machine_info
    from compositional import SCENE_PROBS, dataset

ROOT = Path(__file__).resolve().parents[1]
GRID = 8  # the U-Net's lowest level in the study's base stage (32 px / 4)
CTX = 64  # the study's token width (channels 16 x mult 4)
HEAD_DIM = 16
# name -> (text_mlp, text_layers): the text-path levers of bench/compositional.py
VARIANTS = {
    "linear": (False, 0),
    "text_mlp": (True, 0),
    "text_layers_2": (False, 2),
    "text_stack": (True, 2),
}


class LayoutProbe(nn.Module):
    """Frozen tokens -> the U-Net's text path -> position-only cross-attention -> 8 x 8 RGB."""

    def __init__(self, text_dim: int, *, mlp: bool, layers: int, init: str = "normal") -> None:
        super().__init__()
        self.text_in = _text_projection(text_dim, CTX, mlp=mlp)
        self.text_norm = nn.LayerNorm(CTX)
        self.blocks = nn.ModuleList([TextBlock(CTX, HEAD_DIM, 2) for _ in range(layers)])
        self.register_buffer("feats", position_features(GRID, GRID), persistent=False)
        self.layout_q = nn.Linear(self.feats.shape[1], CTX)
        self.layout = Attention(CTX, HEAD_DIM, CTX)
        if init == "normal":  # "zero": as the U-Net's text_layout_init=zero
            nn.init.normal_(self.layout.out.weight, std=CTX**-0.5)
        self.head = nn.Sequential(nn.Linear(CTX, 4 * CTX), nn.GELU(), nn.Linear(4 * CTX, 3))

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = self.text_norm(self.text_in(emb))
        for block in self.blocks:
            tokens = block(tokens, mask)
        q = self.layout_q(self.feats)[None].expand(emb.shape[0], -1, -1)
        cells = self.layout(q, tokens, mask)  # (B, HW, C)
        return self.head(cells).view(-1, GRID, GRID, 3)


def read_set(
    shards: Path, image_size: int | None = None, limit: int | None = None
) -> dict[str, Any]:
    """Tokens, masks, 8 x 8 targets in [-1, 1] and each sample's relation axis (-1: one
    object) from the encoded shards; with ``image_size``, also the images at that size as
    (B, 3, S, S) in [-1, 1] ("image"); ``limit``: stop after that many samples."""
    from imagen_ray.data.encoding import EMBEDDING_ENTRY, load_embedding

    embs, targets, axes, images = [], [], [], []
    for shard in sorted(shards.glob("*.tar")):
        if limit is not None and len(axes) >= limit:
            break
        entries: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m)
                if f is not None:
                    key, ext = m.name.split(".", 1)
                    entries.setdefault(key, {})[ext] = f.read()
        for e in list(entries.values())[: None if limit is None else limit - len(axes)]:
            emb, _ = load_embedding(e[EMBEDDING_ENTRY], None)
            full = Image.open(io.BytesIO(e["png"])).convert("RGB")
            img = full.resize((GRID, GRID), Image.BOX)
            if image_size is not None:
                big = full.resize((image_size, image_size), Image.Resampling.LANCZOS)  # as training
                images.append(np.asarray(big, np.float32).transpose(2, 0, 1) / 127.5 - 1)
            objs = json.loads(e["json"]).get("objects", [])
            axis = -1
            if len(objs) == 2:
                (ax, ay), (bx, by) = objs[0]["center"], objs[1]["center"]
                axis = 0 if abs(ax - bx) > abs(ay - by) else 1
            embs.append(np.asarray(emb, np.float32))
            targets.append(np.asarray(img, np.float32) / 127.5 - 1)
            axes.append(axis)
    length = max(len(x) for x in embs)
    emb = np.zeros((len(embs), length, embs[0].shape[1]), np.float32)
    mask = np.zeros((len(embs), length), bool)
    for i, x in enumerate(embs):
        emb[i, : len(x)], mask[i, : len(x)] = x, True
    out = {
        "emb": torch.from_numpy(emb),
        "mask": torch.from_numpy(mask),
        "target": torch.from_numpy(np.stack(targets)),
        "axis": torch.tensor(axes),
    }
    if image_size is not None:
        out["image"] = torch.from_numpy(np.stack(images))
    return out


def side_accuracy(pred: torch.Tensor, target: torch.Tensor, axis: torch.Tensor) -> float:
    """Share of two-object samples whose prediction is nearer the true image than the
    image mirrored along its relation axis (x: width, y: height of the (B, H, W, 3) grid)."""
    mirrored = torch.where((axis == 0)[:, None, None, None], target.flip(2), target.flip(1))
    near = ((pred - target) ** 2).mean((1, 2, 3)) < ((pred - mirrored) ** 2).mean((1, 2, 3))
    return float(near.float().mean())


def train(
    data: dict[str, Any],
    name: str,
    budgets: list[int],
    batch: int,
    lr: float,
    seed: int = 0,
    init: str = "normal",
) -> list[dict[str, Any]]:
    """Train one variant; score the held-out 20 % after each budget (in steps)."""
    torch.manual_seed(seed)
    n = len(data["axis"])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    cut = int(0.8 * n)
    tr, te = order[:cut], order[cut:]
    te = te[data["axis"][te] >= 0]  # two-object scenes only
    mlp, layers = VARIANTS[name]
    model = LayoutProbe(data["emb"].shape[2], mlp=mlp, layers=layers, init=init)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rows, step, t0 = [], 0, time.perf_counter()
    for budget in budgets:
        model.train()
        while step < budget:
            idx = tr[torch.randint(len(tr), (batch,))]
            pred = model(data["emb"][idx], data["mask"][idx])
            loss = ((pred - data["target"][idx]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            pred = model(data["emb"][te], data["mask"][te])
        rows.append({
            "variant": name, "init": init, "seed": seed, "steps": step, "samples": step * batch,
            "side_accuracy": round(side_accuracy(pred, data["target"][te], data["axis"][te]), 4),
            "heldout_mse": round(float(((pred - data["target"][te]) ** 2).mean()), 5),
            "train_s": round(time.perf_counter() - t0, 1), "test_scenes": len(te),
        })  # fmt: skip
        emit(rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shards", type=Path, help="encoded shards (default: the study's set)")
    p.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "compositional", help="the study's folder"
    )
    p.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
        help="text paths to probe (default: all)",
    )  # fmt: skip
    p.add_argument(
        "--budgets", type=int, nargs="+", default=[350, 1400, 5600],
        help="steps after which to score (default 350 1400 5600; the study trains 1400)",
    )  # fmt: skip
    p.add_argument("--batch", type=int, default=16, help="samples per step (the study's 16)")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (the study's)")
    p.add_argument(
        "--init", choices=["normal", "zero"], default="normal",
        help="the layout attention's output projection at the start: normal, or zero as "
        "the U-Net's text_layout_init=zero (default normal)",
    )  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (0)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    shards = args.shards or dataset(args.out, 8000, SCENE_PROBS, [])[1]
    data = read_set(shards)
    log(f"{len(data['axis'])} samples from {shards}")
    budgets = sorted(args.budgets)
    rows = [
        r
        for v in args.variants
        for seed in args.seeds
        for r in train(data, v, budgets, args.batch, args.lr, seed, args.init)
    ]
    summary = {f"{r['variant']}/{r['init']}/seed{r['seed']}@{r['steps']}": r["side_accuracy"]
               for r in rows}  # fmt: skip
    emit({"summary": summary, "machine": machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
