"""SR fidelity: does a super-resolution stage follow its low-res input?

For each SR stage, low-res inputs (synthetic images rendered at the stage's ``lowres_size``,
or the previous stage's generated images) go through the stage; its output is shrunk back
with the stage's own :meth:`~imagen_ray.cascade.Stage.make_lowres` and compared with the
input (PSNR and mean absolute error on the [0, 255] scale). The control runs the same
prompts and seeds with the low-res inputs rotated by one, so every prompt gets another
prompt's image, and compares against the prompt's own input. A stage that ignores its input
(a known failure of other Imagen implementations) makes the same image either way and
scores about the control; a stage that follows it scores far above.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from imagen_ray.data.synthetic import render_sample
from imagen_ray.data.synthetic_spec import SyntheticSpec

if TYPE_CHECKING:
    from imagen_ray.cascade import Cascade, Stage

Source = Literal["synthetic", "generated"]
SOURCES: tuple[Source, ...] = ("synthetic", "generated")
MIN_GAP_DB = 3.0  # PSNR above the control that counts as "follows its input"


def _to_255(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 255] float (B, 3, H, W)."""
    return ((x.float() + 1) * 127.5).clamp(0, 255)


def compare(lowres: Tensor, down: Tensor) -> dict[str, float]:
    """PSNR (dB, mean over images) and mean absolute error of two (B, 3, h, w) [-1, 1] batches.

    PSNR is ``10 * log10(255**2 / MSE)`` per image on the [0, 255] scale, the number
    torchmetrics' ``peak_signal_noise_ratio(..., data_range=255, reduction="none",
    dim=(1, 2, 3))`` gives (checked in tests/eval); written out because importing
    torchmetrics costs seconds of CPU for one line.
    """
    a, b = _to_255(lowres), _to_255(down)
    mse = (a - b).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)  # (B,)
    psnr = 10 * torch.log10(255.0**2 / mse)
    return {"psnr": float(psnr.mean()), "mae": float((a - b).abs().mean())}


def synthetic_lowres(size: int, n: int, *, seed: int = 0) -> tuple[list[str], Tensor]:
    """``n`` synthetic samples rendered at ``size``: captions and (n, 3, s, s) images in [-1, 1]."""
    spec = SyntheticSpec(num_samples=n, size=size, seed=seed)
    captions, images = [], []
    for i in range(n):
        img, caption, _ = render_sample(spec, i)
        captions.append(caption)
        images.append(np.asarray(img))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # (n, 3, s, s)
    return captions, x / 127.5 - 1


def _row_images(*batches: Tensor) -> list[list[Any]]:
    from imagen_ray.images import model_to_uint8, to_pil

    cols = [to_pil(model_to_uint8(b)) for b in batches]  # (B, 3, H, W) in [-1, 1] -> PIL
    return [[c[i] for c in cols] for i in range(len(cols[0]))]


def stage_fidelity(
    cascade: Cascade,
    index: int,
    prompts: list[str],
    lowres: Tensor,
    seeds: list[int],
    *,
    sampling: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[list[Any]]]:
    """Fidelity of SR stage ``index`` on given inputs, and the control.

    Args:
        cascade: the cascade holding the stage (its text encoder encodes ``prompts``).
        index: the stage's index (> 0).
        prompts: B prompts (B >= 2: the control needs another prompt's input).
        lowres: (B, 3, lowres_size, lowres_size) in [-1, 1].
        seeds: one per prompt; input and control runs use the same ones.
        sampling: overrides of the stage's sampling settings.

    Returns:
        ``({"stage", "n", "psnr", "mae", "control_psnr", "control_mae", "gap_db",
        "follows_input"}, rows)`` where rows are PIL images per prompt: input, output,
        output shrunk, control input, control output.
    """
    from imagen_ray.cascade.plan import resolve_sampling, stage_generators

    stage: Stage = cascade.stage_list[index]
    if stage.cfg.lowres_size is None:
        raise ValueError(f"stage {stage.cfg.name!r} is a base stage: SR fidelity needs an SR stage")
    if len(prompts) < 2:
        raise ValueError(
            f"SR fidelity needs at least 2 inputs (the control swaps them), got {len(prompts)}"
        )
    s = resolve_sampling(stage.cfg.sampling, sampling)
    enc = cascade.encoder.encode(prompts)
    dev = stage.device
    shuffled = torch.roll(lowres, shifts=1, dims=0)  # prompt i gets prompt i-1's input

    def run(x: Tensor) -> Tensor:
        gens = stage_generators(seeds, index, dev)
        return stage.sample(enc.emb, enc.mask, lowres=x, sampling=s, generator=gens).float().cpu()

    out, control = run(lowres), run(shuffled)
    down, control_down = stage.make_lowres(out), stage.make_lowres(control)
    m, c = compare(lowres, down), compare(lowres, control_down)
    gap = m["psnr"] - c["psnr"]
    result = {
        "stage": stage.cfg.name,
        "lowres_size": stage.cfg.lowres_size,
        "size": stage.cfg.size,
        "n": len(prompts),
        "psnr": round(m["psnr"], 3),
        "mae": round(m["mae"], 3),
        "control_psnr": round(c["psnr"], 3),
        "control_mae": round(c["mae"], 3),
        "gap_db": round(gap, 3),
        "follows_input": gap >= MIN_GAP_DB,
        "sampling": s.model_dump(mode="json"),
    }
    up = torch.nn.functional.interpolate(lowres, size=stage.cfg.size, mode="nearest")
    up_sh = torch.nn.functional.interpolate(shuffled, size=stage.cfg.size, mode="nearest")
    up_down = torch.nn.functional.interpolate(down, size=stage.cfg.size, mode="nearest")
    rows = _row_images(up, out, up_down, up_sh, control)
    return result, rows


GRID_CELL = 96  # px: grid cells are at least this large (nearest upscaling)
GRID_COLUMNS = ("input", "output", "shrunk", "ctl input", "ctl output")


def _with_header(sheet: Image.Image, labels: tuple[str, ...], pad: int = 2) -> Image.Image:
    """The grid with a row of column labels above it (columns as laid out by images.grid)."""
    cell = (sheet.width - pad) // len(labels) - pad
    out = Image.new("RGB", (sheet.width, sheet.height + 14), (255, 255, 255))
    out.paste(sheet, (0, 14))
    draw = ImageDraw.Draw(out)
    for k, label in enumerate(labels):
        draw.text((pad + k * (cell + pad) + 2, 1), label, fill=(0, 0, 0))
    return out


def sr_fidelity(
    cascade: Cascade,
    *,
    n: int = 8,
    seed: int = 0,
    source: Source = "synthetic",
    sampling: Mapping[str, Mapping[str, Any]] | None = None,
    out_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """SR fidelity of every super-resolution stage of a cascade.

    Args:
        cascade: a loaded cascade with at least one SR stage.
        n: inputs per stage (>= 2).
        seed: synthetic-set seed and base sampling seed (input i uses ``seed + i``).
        source: ``synthetic`` renders the inputs at the stage's ``lowres_size``;
            ``generated`` runs the cascade up to the previous stage on the synthetic
            captions and feeds its images.
        sampling: per-stage sampling overrides (``{"sr64": {"steps": 8}}``).
        out_dir: if given, writes ``sr_<stage>.png`` per stage: one row per input; columns
            input, output, output shrunk back, control input, control output.

    Returns:
        One result dict per SR stage (see :func:`stage_fidelity`), with ``source``.
    """
    from imagen_ray.images import grid, save_image

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    overrides = dict(sampling or {})
    stages = cascade.stage_list
    sr = [i for i, st in enumerate(stages) if st.cfg.lowres_size is not None]
    if not sr:
        names = [st.cfg.name for st in stages]
        raise ValueError(f"the cascade {names} has no super-resolution stage to check")
    results = []
    for i in sr:
        st = stages[i]
        assert st.cfg.lowres_size is not None
        prompts, lowres = synthetic_lowres(st.cfg.lowres_size, n, seed=seed)
        seeds = [seed + k for k in range(n)]
        if source == "generated":
            gen = cascade.generate(prompts, seed=seeds, sampling=overrides, until=i - 1)
            lowres = gen.images[-1] * 2 - 1  # [0, 1] -> [-1, 1]
        result, rows = stage_fidelity(
            cascade, i, prompts, lowres, seeds, sampling=overrides.get(st.cfg.name)
        )
        result["source"] = source
        if out_dir is not None:
            sheet = _with_header(grid(rows, cell=max(st.cfg.size, GRID_CELL)), GRID_COLUMNS)
            path = save_image(sheet, Path(out_dir) / f"sr_{st.cfg.name}.png")
            result["grid_png"] = path.name
        results.append(result)
    return results


def format_results(results: list[dict[str, Any]]) -> str:
    """A text table of :func:`sr_fidelity` results."""
    lines = [
        f"{'stage':<10}{'n':>4}{'PSNR':>9}{'MAE':>8}{'ctl PSNR':>10}{'ctl MAE':>9}{'gap dB':>8}"
        "  verdict"
    ]
    for r in results:
        verdict = "follows its input" if r["follows_input"] else "IGNORES its input (≈ control)"
        lines.append(
            f"{r['stage']:<10}{r['n']:>4}{r['psnr']:>9.2f}{r['mae']:>8.2f}"
            f"{r['control_psnr']:>10.2f}{r['control_mae']:>9.2f}{r['gap_db']:>8.2f}  {verdict}"
        )
    return "\n".join(lines)
