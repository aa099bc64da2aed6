"""CLIP score of images against their prompts, with a CLIP model from a local directory.

The score follows torchmetrics' ``CLIPScore`` (Hessel et al. 2021, arXiv 2104.08718):
``max(100 * mean(cos(E_image, E_text)), 0)`` with the model's projected embeddings. It is
computed here with transformers' ``CLIPModel`` rather than torchmetrics' class because that
class loads only hub names (``openai/...``) and, with transformers 5, fails on
``get_image_features`` returning a model output instead of a tensor.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor


def read_manifest(path: str | Path, images: str | Path | None = None) -> list[tuple[Path, str]]:
    """(image file, prompt) pairs from a manifest.

    Args:
        path: ``.jsonl`` with ``{"file": ..., "prompt": ...}`` per line (what
            ``imagen-ray generate`` writes as manifest.jsonl) or ``.csv`` with ``file`` and
            ``prompt`` columns.
        images: folder that relative ``file`` paths are under (default: the manifest's).

    Returns:
        The pairs, in file order.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--prompts {path}: no such file")
    base = Path(images) if images is not None else p.parent
    if images is not None and not base.is_dir():
        raise FileNotFoundError(f"--images {images}: no such directory")
    rows: list[dict[str, Any]] = []
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    elif p.suffix.lower() in (".jsonl", ".json"):
        for ln in p.read_text().splitlines():
            if ln.strip():
                rows.append(json.loads(ln))
    else:
        raise ValueError(f"--prompts {path}: expected a .jsonl or .csv manifest")
    out = []
    for k, r in enumerate(rows, start=1):
        missing = [key for key in ("file", "prompt") if not r.get(key)]
        if missing:
            raise ValueError(
                f"--prompts {path}: record {k} lacks {' and '.join(missing)}; every record "
                "needs 'file' (image path) and 'prompt'"
            )
        image = Path(r["file"])
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            raise FileNotFoundError(f"--prompts {path}: record {k}: image {image} not found")
        out.append((image, str(r["prompt"])))
    if not out:
        raise ValueError(f"--prompts {path}: no records")
    return out


def load_clip(model_dir: str | Path, *, device: str = "cpu") -> tuple[Any, Any]:
    """``CLIPModel`` and ``CLIPProcessor`` from a local directory (never the hub)."""
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(
            f"--clip {model_dir}: no CLIP model there (config.json missing); pass a local "
            "directory saved with CLIPModel/CLIPProcessor.save_pretrained, e.g. a copy of "
            "openai/clip-vit-large-patch14; nothing is downloaded"
        )
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(d, local_files_only=True)
    model = model.to(device).eval()  # type: ignore[arg-type]
    processor = CLIPProcessor.from_pretrained(d, local_files_only=True)
    return model, processor


def _features(out: Any) -> Tensor:
    """Projected features whether ``get_*_features`` returns a tensor or a model output."""
    return out if isinstance(out, Tensor) else out.pooler_output


@torch.no_grad()
def clip_score(
    pairs: Sequence[tuple[Path, str]],
    model: Any,
    processor: Any,
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, Any]:
    """CLIP score of images against prompts.

    Args:
        pairs: (image file, prompt) pairs.
        model / processor: from :func:`load_clip`.
        batch_size: pairs per forward pass.
        progress: show a progress bar.

    Returns:
        ``{"clip_score": float, "n": int, "per_image": [100 * cos, ...]}``.
    """
    from tqdm import tqdm

    dev = next(model.parameters()).device
    max_len = int(model.config.text_config.max_position_embeddings)
    scores: list[float] = []
    with tqdm(total=len(pairs), desc="CLIP score", unit="img", disable=not progress) as bar:
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            images = []
            for f, _ in chunk:
                with Image.open(f) as im:
                    images.append(im.convert("RGB"))
            img_in = processor(images=images, return_tensors="pt")
            txt_in = processor(
                text=[t for _, t in chunk],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_len,
            )
            e_img = _features(model.get_image_features(pixel_values=img_in["pixel_values"].to(dev)))
            e_txt = _features(
                model.get_text_features(
                    input_ids=txt_in["input_ids"].to(dev),
                    attention_mask=txt_in["attention_mask"].to(dev),
                )
            )
            cos = torch.nn.functional.cosine_similarity(e_img.float(), e_txt.float(), dim=-1)
            scores.extend((100 * cos).cpu().tolist())
            bar.update(len(chunk))
    mean = sum(scores) / len(scores)
    return {"clip_score": max(mean, 0.0), "n": len(scores), "per_image": scores}
