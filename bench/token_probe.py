"""Is "which side is this object on" in the frozen text encoder's tokens, and how?

For every two-object caption of the language study's synthetic set (bench/compositional.py),
take the frozen encoder's embedding of each object's colour word and shape word, and label
it with the side its object is on (the first along the relation's axis: left or top, or
not). Probes trained on 80% of the captions and scored on the other 20%:

- ``linear``: logistic regression, what a cross-attention key (a linear map) can read;
- ``mlp``: one hidden layer of 256, what a per-token MLP in front of the keys can read.

    python bench/token_probe.py                  # the study's set (rendered if missing)
    python bench/token_probe.py --shards DIR     # any encoded shards with scene samples

Prints one JSON line per feature (colour token, shape token, both) with the test accuracy
of each probe, then a summary line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imagen_ray.cli.args import add_overrides_argument

try:  # `python bench/token_probe.py` puts bench/ on the path; tests import bench.*
    from bench._common import emit, log, machine_info
    from bench.compositional import CONFIG, SCENE_PROBS, dataset
except ImportError:
    from _common import emit, log, machine_info
    from compositional import CONFIG, SCENE_PROBS, dataset

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = 256
ITERS = 1500


def word_index(words: list[str], word: str, start: int = 0) -> int | None:
    """The first token at or after ``start`` that begins ``word`` (WordPiece may split it)."""
    for i in range(start, len(words)):
        if words[i] == word or (len(words[i]) > 2 and word.startswith(words[i])):
            return i
    return None


def examples(
    sample: dict[str, Any], words: list[str], emb: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(colour token, shape token, first along the axis) for each object of a two-object
    sample whose words are found among its tokens (captions cut at ``max_length`` may lose
    some)."""
    objs = sample.get("objects", [])
    if len(objs) != 2:
        return []
    (ax, ay), (bx, by) = objs[0]["center"], objs[1]["center"]
    axis = 0 if abs(ax - bx) > abs(ay - by) else 1
    out = []
    for obj, other in ((objs[0], objs[1]), (objs[1], objs[0])):
        ci = word_index(words, obj["colour"])
        si = None if ci is None else word_index(words, obj["shape"], ci + 1)
        if ci is None or si is None:
            return []
        first = int(obj["center"][axis] < other["center"][axis])
        out.append((emb[ci].astype(np.float32), emb[si].astype(np.float32), first))
    return out


def read_set(shards: Path, tokenizer: Any, limit: int) -> dict[str, np.ndarray]:
    """Features and labels of up to ``limit`` objects from the encoded shards."""
    from imagen_ray.data.encoding import EMBEDDING_ENTRY, load_embedding

    rows: list[tuple[np.ndarray, np.ndarray, int]] = []
    for shard in sorted(shards.glob("*.tar")):
        entries: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m)
                if f is not None:
                    key, ext = m.name.split(".", 1)
                    entries.setdefault(key, {})[ext] = f.read()
        for e in entries.values():
            emb, _ = load_embedding(e[EMBEDDING_ENTRY], None)
            ids = tokenizer(e["txt"].decode(), add_special_tokens=True)["input_ids"]
            words = tokenizer.convert_ids_to_tokens(ids[: len(emb)])
            rows += examples(json.loads(e["json"]), words, emb)
        if len(rows) >= limit:
            break
    colour, shape, label = (np.stack(x) for x in zip(*rows[:limit], strict=True))
    return {
        "colour": colour,
        "shape": shape,
        "both": np.concatenate([colour, shape], 1),
        "label": label,
    }


def probe(x: np.ndarray, y: np.ndarray, kind: str, seed: int = 0) -> float:
    """Test accuracy of a ``linear`` or ``mlp`` probe trained on the first 80%."""
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).float()
    cut = int(0.8 * len(yt))
    mu, sd = xt[:cut].mean(0), xt[:cut].std(0) + 1e-6
    xt = (xt - mu) / sd
    model = (
        torch.nn.Linear(x.shape[1], 1)
        if kind == "linear"
        else torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 1)
        )
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    for _ in range(ITERS):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(xt[:cut])[:, 0], yt[:cut])
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = model(xt[cut:])[:, 0] > 0
    return float((pred.float() == yt[cut:]).float().mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--shards", type=Path, help="encoded shards (default: the study's set)")
    p.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "compositional", help="the study's folder"
    )
    p.add_argument("--limit", type=int, default=6000, help="objects to probe (default 6000)")
    add_overrides_argument(
        p, "text encoder overrides, e.g. --set text.hidden_layer=-2 (encodes a copy)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    from imagen_ray.config import load_run_config
    from imagen_ray.text.encoder import FrozenTextEncoder

    shards = args.shards or dataset(args.out, 8000, SCENE_PROBS, args.overrides)[1]
    cfg = load_run_config(CONFIG, [f"data.shards={shards}", *args.overrides])
    tokenizer = FrozenTextEncoder(cfg.text).tokenizer
    data = read_set(shards, tokenizer, args.limit)
    log(f"{len(data['label'])} objects from {shards}")
    rows = []
    for feature in ("colour", "shape", "both"):
        row = {"feature": feature, "objects": len(data["label"])}
        row |= {
            kind: round(probe(data[feature], data["label"], kind), 4) for kind in ("linear", "mlp")
        }
        rows.append(row)
        emit(row)
    emit({"summary": {r["feature"]: {"linear": r["linear"], "mlp": r["mlp"]} for r in rows},
          "text": cfg.text.model_dump(), "machine": machine_info()})  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
