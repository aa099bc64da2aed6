"""The model card (``README.md``) of a cascade directory, generated from its stages' configs.

Everything comes from the files: each stage's ``config.json`` (architecture, diffusion and
sampling settings, and the training facts ``imagen-ray export`` stores under ``extra``:
step, examples seen, data, last metrics) and the weights' safetensors header (parameter
counts, read without loading a tensor).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from imagen_ray.cascade.io import CONFIG, WEIGHTS, read_stage_meta, stage_dirs

CARD = "README.md"


def count_parameters(weights: Path) -> int:
    """Parameters in a safetensors file, from its JSON header alone."""
    with weights.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _training(name: str, extra: dict[str, Any]) -> str:
    """One line of training facts of a stage (what its export recorded)."""
    if not extra.get("step"):
        return f"- `{name}`: no training record (randomly initialised or saved without one)"
    parts = [f"{extra['step']} steps"]
    if extra.get("samples"):
        parts.append(f"{extra['samples']} examples seen")
    if extra.get("weights"):
        parts.append(f"{extra['weights']} weights")
    data = extra.get("data")
    if data:
        shards = [data] if isinstance(data, str) else list(data)
        parts.append("data " + ", ".join(f"`{s}`" for s in shards))
    metrics = {k: v for k, v in (extra.get("metrics") or {}).items() if k not in {"step"}}
    if metrics:
        parts.append(
            "last metrics "
            + ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in sorted(metrics.items())
            )
        )
    run = extra.get("wandb") or {}
    if run.get("run_id"):  # the training run, as `eval --wandb-run` takes it
        path = "/".join(str(x) for x in (run.get("entity"), run.get("project")) if x)
        parts.append(f"W&B run `{path + '/' if path else ''}{run['run_id']}`")
    return f"- `{name}`: " + "; ".join(parts)


# long: most of it is the card's Markdown, one source line per line of the card
def model_card(cascade: str | Path, *, title: str | None = None) -> str:
    """The Markdown model card of a saved cascade (or stage) directory.

    Args:
        cascade: a cascade directory or a single stage directory.
        title: the heading (default: the directory's name).

    Returns:
        The card: Hugging Face metadata front matter, architecture per stage, text encoder,
        training (data, steps, metrics) and how to use it.
    """
    root = Path(cascade)
    dirs = stage_dirs(root)
    metas = [read_stage_meta(d) for d in dirs]
    text = metas[0]["text"]
    rows, training = [], []
    for d, m in zip(dirs, metas, strict=True):
        s = m["stage"]
        unet, diff, samp = s["unet"], s["diffusion"], s["sampling"]
        levels = " / ".join(
            f"{unet['channels'] * lv['mult']}"
            + ("+attn" if lv.get("self_attn") else "")
            + ("+xattn" if lv.get("cross_attn") else "")
            for lv in unet["levels"]
        )
        kind = f"{s['lowres_size']}→{s['size']} SR" if s.get("lowres_size") else "base"
        params = _human(count_parameters(d / WEIGHTS)) if (d / WEIGHTS).is_file() else "?"
        rows.append(
            f"| `{s['name']}` | {kind} | {s['size']} px | {params} | {levels} | "
            f"{diff['objective']}, {diff['schedule']} | {samp['sampler']}, {samp['steps']} "
            f"steps, guidance {samp['guidance_scale']:g}, {samp['threshold']} threshold |"
        )
        training.append(_training(s["name"], m.get("extra") or {}))
    names = [m["stage"]["name"] for m in metas]
    where = title or root.resolve().name
    return "\n".join(
        [
            "---",
            "library_name: imagen-ray",
            "pipeline_tag: text-to-image",
            "tags: [imagen, diffusion, text-to-image, imagen-ray]",
            "---",
            "",
            f"# {where}",
            "",
            f"An Imagen text-to-image cascade ({' → '.join(names)}) saved by imagen-ray: a "
            "frozen text encoder, a "
            "base diffusion model and super-resolution models, each an Efficient U-Net "
            "(safetensors weights + JSON config per stage, nothing pickled).",
            "",
            "## Architecture",
            "",
            "| stage | kind | output | parameters | channels per level | prediction, schedule "
            "| default sampling |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "## Text encoder",
            "",
            f"`{text['name']}`, {text['max_length']} tokens per prompt, embeddings of width "
            f"{metas[0]['text_dim']}; loaded by that name when the cascade generates (it is "
            "not stored in this directory).",
            "",
            "## Training",
            "",
            *training,
            "",
            "## Use",
            "",
            "```bash",
            'imagen-ray sample --cascade DIR --prompt "a red circle on the left" --out out/',
            "imagen-ray serve -c configs/tiny/serve.yaml --cascade DIR",
            "```",
            "",
            "```python",
            "from imagen_ray.publish import from_pretrained",
            "",
            'cascade = from_pretrained("DIR or org/name", dtype="auto")',
            'images = cascade.generate(["a red circle on the left"], seed=0).uint8()',
            "```",
            "",
            f"Files: `cascade.json` (stage order), and per stage `<stage>/{CONFIG}` and "
            f"`<stage>/{WEIGHTS}`.",
            "",
        ]
    )
