"""imagen-pytorch on the two-object set: the reference row of the language-understanding table.

Trains lucidrains' imagen-pytorch 2.1.0 (an ``Imagen`` with one ``Unet``, the reference of
``bench/unet.py``) on the synthetic set of ``bench/compositional.py`` (30 % single objects,
70 % two-object scenes, held-out bindings, pairs and phrasing), from the same encoded shards
(our frozen MiniLM's token embeddings, 64 px images resized to 32 px by our pipeline's
decode step), for the same number of samples as our base stage
(``configs/compositional/base.yaml``: steps x global batch). Its ``Unet`` has our U-Net's
layout (widths, blocks and attention per level, head size), so the two have about as many
parameters; the optimizer recipe is the config's (AdamW betas and weight decay, linear
warm-up, gradient clipping, EMA) at the reference's own learning rate (``--lr``). One
process, ``torch.set_num_threads(2)``.

Then it samples the compositional suite (``imagen-ray eval compositional --prompts-only``)
with imagen-pytorch's own sampler (16 steps, the config's guidance scale and thresholding),
prompts encoded by our ``FrozenTextEncoder``, and scores the PNGs with our scene checker
(``imagen-ray eval compositional --images``).

    python bench/compositional_reference.py              # ~ the baseline's budget
    python bench/compositional_reference.py --quick      # smoke run (< 2 min; meaningless)
    python bench/compositional_reference.py --lr 1e-3 --out runs/compositional/ref-lr1e-3

Prints one JSON row (``bench.compositional.summarise`` of the report, parameters of both
U-Nets, samples, seconds, machine). Finished work in ``--out`` is reused: the trained
weights (``model.pt``), the samples (``samples/``) and the report (``eval/``); delete one to
redo it and what follows. Without imagen-pytorch it prints the pip command and a
``reference_missing`` row, and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:  # `python bench/compositional_reference.py` puts bench/ on the path; tests import bench.*
    from bench._common import emit, log, machine_info
    from bench.compositional import CONFIG, SCENE_PROBS, cli, dataset, run, summarise
    from bench.unet import import_reference
except ImportError:
    from _common import emit, log, machine_info
    from compositional import CONFIG, SCENE_PROBS, cli, dataset, run, summarise
    from unet import import_reference

from imagen_ray.config import RunConfig, UNetConfig, load_run_config

ROOT = Path(__file__).resolve().parents[1]
VARIANT = "imagen-pytorch"
# In 50-step probes 3e-4 barely moved the loss; 3e-3 fell fastest, 1e-3 is the safer constant rate
LR = 1e-3
SET_SAMPLES = 8000  # the set bench/compositional.py renders (its default --samples)
SAMPLE_BATCH = 32  # prompts per Imagen.sample call
TRAIN_FILE, MODEL_FILE, SAMPLES_DIR, EVAL_DIR = "train.json", "model.pt", "samples", "eval"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/compositional_reference.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "compositional" / "imagen-pytorch",
        help="work directory (default runs/compositional/imagen-pytorch)",
    )  # fmt: skip
    p.add_argument(
        "--data", type=Path, default=ROOT / "runs" / "compositional",
        help="bench/compositional.py's --out: the set is DATA/data/{raw,enc}-0.3-0.7-0, "
        "rendered and encoded there when missing (default runs/compositional)",
    )  # fmt: skip
    p.add_argument(
        "--samples", type=int, default=None,
        help="training samples (default: the config's steps x global batch, 22,400)",
    )  # fmt: skip
    p.add_argument("--lr", type=float, default=LR, help=f"peak learning rate (default {LR:g})")
    p.add_argument(
        "--limit", type=int, default=None, help="load at most this many samples of the set"
    )
    p.add_argument(
        "--images-per-prompt", "-n", type=int, default=2, help="images per suite prompt (2)"
    )
    p.add_argument(
        "--sample-steps", type=int, default=None,
        help="sampling steps (default: the config's, 16; quick: 4)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and sampling")
    p.add_argument(
        "--quick", action="store_true",
        help="smoke run: 300 samples loaded, 64 trained on, 1 image per prompt, 4 sampling "
        "steps",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.quick:
        args.limit, args.samples, args.images_per_prompt = 300, 64, 1
        args.sample_steps = args.sample_steps or 4
        if args.out == p.get_default("out"):
            args.out = args.out.with_name(args.out.name + "-quick")
    for name in ("samples", "limit", "images_per_prompt", "sample_steps", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run_config(shards: Path | str, sample_steps: int | None = None) -> RunConfig:
    """The baseline's run config, reading ``shards`` (and sampling in ``sample_steps``)."""
    steps = [] if sample_steps is None else [f"stage.sampling.steps={sample_steps}"]
    return load_run_config(CONFIG, [f"data.shards={shards}", *steps])


def budget(cfg: RunConfig, samples: int | None) -> tuple[int, int, int]:
    """``(samples, global batch, steps)``: the config's steps x global batch by default."""
    batch = cfg.data.batch_size * cfg.train.num_workers * cfg.train.grad_accum
    samples = samples or cfg.train.steps * batch
    return samples, batch, math.ceil(samples / batch)


# --------------------------------------------------------------------------- data


def _table(rows: list[dict[str, Any]]) -> Any:
    """Reader samples (``__key__`` and bytes per entry) as the Arrow batch the decode step
    takes."""
    import pyarrow as pa

    from imagen_ray.data.reader import KEY_COLUMN

    exts = sorted({k for r in rows for k in r if k != KEY_COLUMN})
    cols = {e: pa.array([r.get(e) for r in rows], pa.binary()) for e in exts}
    return pa.table({KEY_COLUMN: pa.array([r[KEY_COLUMN] for r in rows], pa.string()), **cols})


def load_set(cfg: RunConfig, limit: int | None = None) -> dict[str, Any]:
    """The encoded shards of ``cfg.data.shards`` in memory, through the pipeline's own
    decode step (filters, Lanczos resize to ``stage.size``, the ``text.npz`` entry).

    Returns:
        ``image`` (N, S, S, 3) uint8, ``emb`` (N, L, D) float16, ``mask`` (N, L) bool,
        ``caption`` (N,) str; the shards' order, at most ``limit`` samples.
    """
    from imagen_ray.data.decode import decode_filter_resize
    from imagen_ray.data.encoding import resolve_encoding
    from imagen_ray.data.reader import expand_shards, iter_tar_samples

    paths = expand_shards(cfg.data.shards)
    info = resolve_encoding(cfg, paths)  # the run's text config must match the shards'
    if info is None:
        raise FileNotFoundError(f"{cfg.data.shards}: no precomputed embeddings (encoding.json)")
    parts: list[dict[str, np.ndarray]] = []
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            rows = list(iter_tar_samples(f, path))
        batch = decode_filter_resize(
            _table(rows),
            data_cfg=cfg.data.model_dump(),
            stage_cfg=cfg.stage.model_dump(),
            precomputed=True,
            emb_shape=(cfg.text.max_length, int(info["dim"])),
            columns=["image", "emb", "mask", "caption"],
        )
        if isinstance(batch, dict):
            parts.append(batch)
            n += len(batch["image"])
        if limit is not None and n >= limit:
            break
    if not parts:
        raise ValueError(f"{cfg.data.shards}: no usable samples")
    out = {k: np.concatenate([p[k] for p in parts])[:limit] for k in parts[0]}
    out["dim"] = int(info["dim"])
    return out


# --------------------------------------------------------------------------- models


def reference_unet_kwargs(unet: UNetConfig, text_dim: int) -> dict[str, Any]:
    """imagen-pytorch ``Unet`` arguments with our U-Net's layout: the base width, each
    level's multiplier, residual blocks, self- and cross-attention, and the head size
    (heads: as many as our deepest level has)."""
    levels = unet.levels
    return {
        "dim": unet.channels,
        "dim_mults": tuple(lv.mult for lv in levels),
        "num_resnet_blocks": tuple(lv.res_blocks for lv in levels),
        "layer_attns": tuple(lv.self_attn for lv in levels),
        "layer_cross_attns": tuple(lv.cross_attn for lv in levels),
        "attn_dim_head": unet.head_dim,
        "attn_heads": max(2, unet.channels * levels[-1].mult // unet.head_dim),
        "text_embed_dim": text_dim,
    }


def ours_params(cfg: RunConfig, text_dim: int) -> int:
    """Parameters of our base stage's U-Net built from the config."""
    from imagen_ray.cascade import Stage
    from imagen_ray.unet import count_parameters

    return count_parameters(Stage(cfg.stage, text_dim=text_dim).unet)


def build_imagen(mod: Any, cfg: RunConfig, unet_kwargs: dict[str, Any]) -> Any:
    """``Imagen`` with one ``Unet`` at ``stage.size``: 10 % text dropout, the config's
    sampling steps, and dynamic thresholding only if the config samples with it. Images go
    in and come out in [-1, 1] (``auto_normalize_img=False``), as our pipeline makes them."""
    s = cfg.stage.sampling
    with contextlib.redirect_stdout(sys.stderr):  # it prints a "dim < 128" advice
        unet = mod.Unet(**unet_kwargs)
        return mod.Imagen(
            unets=(unet,),
            image_sizes=(cfg.stage.size,),
            text_embed_dim=unet_kwargs["text_embed_dim"],
            timesteps=s.steps,  # continuous times in training; the sampling grid
            cond_drop_prob=0.1,
            auto_normalize_img=False,
            dynamic_thresholding=s.threshold == "dynamic",
            dynamic_thresholding_percentile=s.percentile,
        )


# --------------------------------------------------------------------------- training


def batches(data: dict[str, Any], batch: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches of the in-memory set, each epoch in a new order (seeded), as the
    pipeline's :func:`~imagen_ray.data.pipeline.collate` makes them: images in [-1, 1]."""
    from imagen_ray.data.pipeline import collate

    gen = torch.Generator().manual_seed(seed)
    order = torch.empty(0, dtype=torch.long)
    while True:
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(len(data["image"]), generator=gen)])
        idx, order = order[:batch].numpy(), order[batch:]
        yield collate({k: data[k][idx] for k in ("image", "emb", "mask")})


def train(imagen: Any, data: dict[str, Any], cfg: RunConfig, args: argparse.Namespace) -> dict:
    """AdamW with the config's betas, weight decay, warm-up, clipping and EMA, at ``args.lr``,
    on shuffled batches of the in-memory set; the EMA weights end up in ``imagen``."""
    from imagen_ray.train.ema import EMA

    t = cfg.train
    _, batch, steps = budget(cfg, args.samples)
    unet = imagen.unets[0]
    opt = torch.optim.AdamW(
        unet.parameters(), lr=args.lr, betas=t.betas, weight_decay=t.weight_decay
    )
    warmup = min(t.warmup_steps, steps // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / max(1, warmup)))
    ema = EMA(unet, t.ema_decay, min(t.ema_warmup_steps, steps))
    losses: list[float] = []
    imagen.train()
    t0 = time.perf_counter()
    for step, b in zip(range(steps), batches(data, batch, args.seed), strict=False):
        loss = imagen(b["image"], text_embeds=b["emb"], text_masks=b["mask"], unet_number=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), t.grad_clip)
        opt.step()
        sched.step()
        ema.update()
        losses.append(float(loss.detach()))
        if (step + 1) % t.log_every == 0 or step + 1 == steps:
            left = (time.perf_counter() - t0) / (step + 1) * (steps - step - 1)
            log(f"step {step + 1}/{steps}: loss {np.mean(losses[-t.log_every :]):.4f}, "
                f"~{left / 60:.1f} min left")  # fmt: skip
    train_s = time.perf_counter() - t0
    with torch.no_grad():  # sample from the EMA weights, as our export does
        for shadow, p in zip(ema.shadow, ema.params, strict=True):
            p.copy_(shadow)
    first, last = losses[: t.log_every], losses[-t.log_every :]
    return {"samples": steps * batch, "steps": steps, "batch": batch, "lr": args.lr,
            "warmup_steps": warmup, "ema_decay": t.ema_decay, "grad_clip": t.grad_clip,
            "train_s": round(train_s, 1), "loss_first": round(float(np.mean(first)), 4),
            "loss_last": round(float(np.mean(last)), 4)}  # fmt: skip


# --------------------------------------------------------------------------- sampling


def suite_files(prompts: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Each suite prompt ``n`` times in a row, each with its image's ``file``
    (``00000.png``, ...), the layout ``imagen-ray eval compositional --images`` reads."""
    items = [dict(it) for it in prompts for _ in range(n)]
    return [{**it, "file": f"{k:05d}.png"} for k, it in enumerate(items)]


def sample(
    imagen: Any, items: list[dict[str, Any]], cfg: RunConfig, folder: Path, seed: int
) -> float:
    """Every item's image from imagen-pytorch's ``Imagen.sample`` (its ``p_sample_loop``
    with classifier-free guidance at the config's scale), prompts encoded by our frozen
    encoder; batch ``k`` of :data:`SAMPLE_BATCH` prompts draws from ``seed + k``. Returns
    the seconds it took."""
    from imagen_ray.images import model_to_uint8, save_image
    from imagen_ray.text.encoder import FrozenTextEncoder

    encoder = FrozenTextEncoder(cfg.text)
    imagen.eval()
    t0 = time.perf_counter()
    for k, i in enumerate(range(0, len(items), SAMPLE_BATCH)):
        part = items[i : i + SAMPLE_BATCH]
        enc = encoder.encode([it["prompt"] for it in part])
        torch.manual_seed(seed + k)  # imagen-pytorch draws its noise from the global RNG
        x = imagen.sample(
            text_embeds=enc.emb, text_masks=enc.mask,
            cond_scale=cfg.stage.sampling.guidance_scale, use_tqdm=False,
        )  # fmt: skip  # (B, 3, S, S) in [-1, 1]
        for it, image in zip(part, model_to_uint8(x), strict=True):
            save_image(image, folder / it["file"])
        log(f"sampled {i + len(part)}/{len(items)} images")
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- the run


def _settings(args: argparse.Namespace, cfg: RunConfig, kwargs: dict[str, Any]) -> dict:
    """What the trained weights depend on (a reused ``model.pt`` must match it)."""
    samples, batch, steps = budget(cfg, args.samples)
    return {"unet": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            "samples": samples, "batch": batch, "steps": steps, "lr": args.lr,
            "seed": args.seed, "limit": args.limit, "shards": str(cfg.data.shards)}  # fmt: skip


def trained(mod: Any, cfg: RunConfig, enc: Path, args: argparse.Namespace) -> tuple[Any, dict]:
    """The trained ``Imagen`` (``model.pt`` reused when its settings match) and its
    ``train.json``."""
    from imagen_ray.data.encoding import read_encoding_info

    info = read_encoding_info(str(enc))
    assert info is not None  # dataset() made it
    kwargs = reference_unet_kwargs(cfg.stage.unet, int(info["dim"]))
    settings = _settings(args, cfg, kwargs)
    imagen = build_imagen(mod, cfg, kwargs)
    model, record = args.out / MODEL_FILE, args.out / TRAIN_FILE
    if model.is_file() and record.is_file():
        done = json.loads(record.read_text())
        if done["settings"] != settings:
            raise SystemExit(
                f"{args.out} holds a model trained with other settings ({done['settings']}); "
                "delete it or choose another --out"
            )
        imagen.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
        log(f"reusing {model}")
        return imagen, done
    log(f"loading {enc}")
    data = load_set(cfg, args.limit)
    samples, batch, steps = budget(cfg, args.samples)
    log(f"{len(data['image'])} samples in memory; training {steps} steps x {batch} ({samples})")
    done = {"settings": settings, **train(imagen, data, cfg, args)}
    done["params"] = sum(p.numel() for p in imagen.unets[0].parameters())
    done["ours_params"] = ours_params(cfg, int(info["dim"]))
    args.out.mkdir(parents=True, exist_ok=True)
    for stale in (args.out / SAMPLES_DIR, args.out / EVAL_DIR):  # made by other weights
        _remove(stale)
    torch.save(imagen.state_dict(), model)
    record.write_text(json.dumps(done, indent=1))
    return imagen, done


def _remove(folder: Path) -> None:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)


def samples_of(imagen: Any, cfg: RunConfig, raw: Path, args: argparse.Namespace) -> dict:
    """The suite's images in ``samples/`` with their prompts file (reused when complete);
    ``{"sample_s", "images", "sampling"}`` (the settings they were sampled with)."""
    folder = args.out / SAMPLES_DIR
    record = folder / "sample.json"
    s = cfg.stage.sampling
    sampling = {"steps": s.steps, "guidance_scale": s.guidance_scale, "threshold": s.threshold,
                "images_per_prompt": args.images_per_prompt, "seed": args.seed}  # fmt: skip
    if record.is_file() and json.loads(record.read_text())["sampling"] == sampling:
        return dict(json.loads(record.read_text()))
    _remove(folder)
    _remove(args.out / EVAL_DIR)
    suite = args.out / "suite"
    run(
        cli("eval", "compositional", "--prompts-only", "--heldout", str(raw / "heldout.json"),
            "--out", str(suite)),
        args.out / "eval.log",
    )  # fmt: skip
    prompts = [json.loads(line) for line in (suite / "prompts.jsonl").read_text().splitlines()]
    items = suite_files(prompts, args.images_per_prompt)
    log(f"sampling {len(items)} images ({len(prompts)} prompts x {args.images_per_prompt})")
    sample_s = sample(imagen, items, cfg, folder, args.seed)
    from imagen_ray.eval.compositional_prompts import write_prompts

    write_prompts(items, folder / "prompts.jsonl")
    done = {"sample_s": round(sample_s, 1), "images": len(items), "sampling": sampling}
    record.write_text(json.dumps(done))
    return done


def scored(args: argparse.Namespace) -> dict[str, Any]:
    """``imagen-ray eval compositional --images samples/`` (reused); its metrics.json."""
    out, folder = args.out / EVAL_DIR, args.out / SAMPLES_DIR
    if not (out / "metrics.json").is_file():
        run(
            cli("eval", "compositional", "--images", str(folder),
                "--prompts", str(folder / "prompts.jsonl"), "--out", str(out)),
            args.out / "eval.log",
        )  # fmt: skip
    return dict(json.loads((out / "metrics.json").read_text()))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    mod, facts = import_reference()
    if mod is None:
        log(facts["reference_missing"])
        emit({"variant": VARIANT, **facts, "machine": machine_info(), "quick": args.quick})
        return 0
    machine = machine_info()
    raw, enc = dataset(args.data, SET_SAMPLES, SCENE_PROBS, [])
    cfg = run_config(enc, args.sample_steps)
    try:
        imagen, done = trained(mod, cfg, enc, args)
        sampled = samples_of(imagen, cfg, raw, args)
        metrics = scored(args)
    except RuntimeError as e:
        emit({"variant": VARIANT, "error": str(e)})
        return 1
    row = {"variant": VARIANT, "params": done["params"], "ours_params": done["ours_params"],
           "samples": done["samples"], "train_s": done["train_s"],
           "sample_s": sampled["sample_s"], **summarise(metrics),
           "train": {k: v for k, v in done.items() if k not in ("params", "ours_params")},
           "sampling": sampled["sampling"],
           **facts, "machine": machine, "quick": args.quick}  # fmt: skip
    emit(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
