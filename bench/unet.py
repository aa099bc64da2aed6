#!/usr/bin/env python
"""U-Net benchmark: our Efficient U-Net vs lucidrains' imagen-pytorch 2.1.0 ``Unet`` on CPU.

Measures, in ONE process and with the same settings for both models:

* parameters;
* training throughput (samples/s): forward + backward + ``torch.optim.AdamW`` step on a batch
  of 8 64x64 images (ours: ``Stage.loss``, i.e. the real diffusion loss with text dropout;
  reference: ``Imagen.forward`` -> ``Imagen.p_losses``, i.e. its Unet called with text
  embeddings + mask, continuous times ``U(0, 1)`` and ``cond_drop_prob=0.1``, MSE loss);
* sampling throughput (images/s): a batch of 4, 16 steps, classifier-free guidance
  (guidance_scale 5) and dynamic thresholding (ours: ``Stage.sample`` with the config's
  sampling settings, one doubled batch per step; reference: ``Imagen.sample`` with 16
  timesteps, i.e. ``Unet.forward_with_cond_scale`` = two forward passes per step, plus its
  dynamic-thresholding quantile);

with ``torch.set_num_threads(2)``. Text conditioning is random (B, 32, 384) embeddings with a
mask (MiniLM-sized); no text encoder is loaded.

Method: warm-up (one training step and one short sampling run per model), then R rounds of
ABAB repetitions (N training steps ours, N reference, M sampling batches ours, M reference).
Reported: per-round throughputs, their medians and the ratio of the medians (ours / reference).

Output: one JSON object per line on stdout (one per round, then the summary, always last);
progress on stderr. ``--quick`` is a < 1 minute smoke run (numbers not meaningful).

If imagen-pytorch is not installed the script measures ours only, prints ``"reference": null``
and a ``"reference_missing"`` message with the pip command, and exits 0. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.metadata
import math
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imagen_ray.cli.args import add_overrides_argument

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach the Hugging Face hub

try:  # imported as bench.unet (tests) or run as a script (python bench/unet.py)
    from bench._common import emit, loadavg, log, machine_info, median, rnd, timed
except ImportError:  # pragma: no cover - script mode: bench/ is sys.path[0]
    from _common import emit, loadavg, log, machine_info, median, rnd, timed

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "bench" / "unet27m.yaml"

REF_PACKAGE = "imagen-pytorch"
REF_VERSION = "2.1.0"
REF_UNET_KWARGS: dict[str, Any] = {
    "dim": 64,
    "dim_mults": (1, 2, 3, 4),
    "num_resnet_blocks": 2,
    "layer_cross_attns": (False, True, True, True),
    "layer_attns": (False, False, False, True),
    "text_embed_dim": 384,
}
REF_DESCRIPTION = (
    "imagen-pytorch 2.1.0 Unet(dim=64, dim_mults=(1,2,3,4), num_resnet_blocks=2, "
    "layer_cross_attns=(False,True,True,True), layer_attns=(False,False,False,True), "
    "text_embed_dim=384)"
)
PIP_HINT = (
    "pip install --no-deps imagen-pytorch==2.1.0 && "
    "pip install -c constraints.txt accelerate beartype ema-pytorch kornia pytorch-warmup datasets"
    " (never torch/torchvision; see bench/README.md)"
)
TEXT_LEN = 32
LR = 1e-4
TARGET_SPEEDUP = 2.0
# channels_last for both models and both workloads: the faster in each (docs/benchmarks.md).
DEFAULT_FORMATS = {
    "ours_train": "channels_last",
    "ours_sample": "channels_last",
    "ref_train": "channels_last",
    "ref_sample": "channels_last",
}
FORMATS = ("contiguous", "channels_last")
METRICS = ("train_samples_per_s", "sample_images_per_s")
RATIOS = {"train": "train_samples_per_s", "sample": "sample_images_per_s"}  # ours / reference


# --------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python bench/unet.py",
        description=(
            "Benchmark our Efficient U-Net (configs/bench/unet27m.yaml) against imagen-pytorch "
            "2.1.0's Unet on CPU: parameters, training samples/s (fwd + bwd + AdamW, batch 8, "
            "64x64) and sampling images/s (batch 4, 16 steps, CFG, dynamic thresholding), "
            "2 threads, same run, interleaved rounds. JSON lines on stdout (summary last), "
            "progress on stderr."
        ),
        epilog="examples:\n  python bench/unet.py\n  python bench/unet.py --quick\n"
        "  python bench/unet.py --no-reference --set stage.unet.channels=48\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="run config of our U-Net")
    add_overrides_argument(p)  # the CLI's own --set
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, tiny work, < 1 min")
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="ABAB rounds (default: 3-5, as many as fit --budget; quick 1)",
    )
    p.add_argument(
        "--train-steps", type=int, default=None, help="training steps per model per round (2)"
    )
    p.add_argument(
        "--sample-batches", type=int, default=1, help="sampling batches per model per round"
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--train-batch", type=int, default=None, help="default 8 (quick: 2)")
    p.add_argument("--sample-batch", type=int, default=None, help="default 4 (quick: 2)")
    p.add_argument(
        "--sample-steps",
        type=int,
        default=None,
        help="sampling steps (default: the config's, 16; quick: 2)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds the measured rounds should take; picks --rounds (default 420)",
    )
    p.add_argument("--no-reference", action="store_true", help="measure ours only")
    for key, default in DEFAULT_FORMATS.items():
        p.add_argument(
            "--" + key.replace("_", "-") + "-format",
            dest=key + "_format",
            choices=FORMATS,
            default=default,
            help=f"memory format of the model and inputs (default {default})",
        )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = args.rounds or 1
        args.train_steps = args.train_steps or 1
        args.train_batch = args.train_batch or 2
        args.sample_batch = args.sample_batch or 2
        args.sample_steps = args.sample_steps or 2
    args.train_steps = args.train_steps or 2
    args.train_batch = args.train_batch or 8
    args.sample_batch = args.sample_batch or 4
    for name in ("train_steps", "sample_batches", "threads", "train_batch", "sample_batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("rounds", "sample_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


# --------------------------------------------------------------------------- inputs


def text_inputs(b: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random MiniLM-sized token embeddings (B, 32, dim) and a mask of 4..32 real tokens."""
    emb = torch.randn(b, TEXT_LEN, dim, generator=gen)
    lengths = torch.randint(4, TEXT_LEN + 1, (b, 1), generator=gen)
    mask = torch.arange(TEXT_LEN)[None] < lengths  # (B, L) bool
    return emb * mask[..., None], mask


def to_format(x: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def make_adamw(params: Any) -> torch.optim.Optimizer:
    """The same optimizer for both models (torch's default AdamW implementation)."""
    return torch.optim.AdamW(params, lr=LR)


@dataclass
class Contender:
    """One model under test: a training step and a sampling batch, ready to time."""

    name: str
    params: int
    formats: dict[str, str]
    train_step: Callable[[], None]
    sample_batch: Callable[[int], None]  # steps -> runs one batch
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- ours


def build_ours(args: argparse.Namespace, gen: torch.Generator) -> Contender:
    from imagen_ray.cascade import Stage
    from imagen_ray.config import load_run_config
    from imagen_ray.unet import count_parameters

    cfg = load_run_config(args.config, args.overrides)
    if cfg.text.dim is None:
        raise SystemExit(f"{args.config}: set text.dim (the benchmark loads no text encoder)")
    s = cfg.stage.sampling
    if s.guidance_scale == 1.0 or s.threshold != "dynamic":
        raise SystemExit(
            f"{args.config}: the benchmark needs guidance_scale != 1 and threshold: dynamic "
            f"(got {s.guidance_scale}, {s.threshold})"
        )
    size, text_dim = cfg.stage.size, cfg.text.dim
    f_train, f_sample = args.ours_train_format, args.ours_sample_format

    train_stage = Stage(cfg.stage, text_dim=text_dim)
    sample_stage = Stage(cfg.stage, text_dim=text_dim)
    sample_stage.load_state_dict(train_stage.state_dict())
    train_stage.train()
    sample_stage.eval()
    if f_train == "channels_last":
        train_stage.to(memory_format=torch.channels_last)
    if f_sample == "channels_last":
        sample_stage.to(memory_format=torch.channels_last)
    opt = make_adamw(train_stage.parameters())

    b = args.train_batch
    x0 = to_format(torch.rand(b, 3, size, size, generator=gen) * 2 - 1, f_train)
    emb, mask = text_inputs(b, text_dim, gen)
    s_emb, s_mask = text_inputs(args.sample_batch, text_dim, gen)
    sample_gen = torch.Generator().manual_seed(args.seed + 1)

    def train_step() -> None:
        loss = train_stage.loss(x0, emb, mask).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample_batch(steps: int) -> None:
        out = sample_stage.sample(
            s_emb, s_mask, sampling=s.model_copy(update={"steps": steps}), generator=sample_gen
        )
        assert out.shape == (args.sample_batch, 3, size, size)

    return Contender(
        name="ours",
        params=count_parameters(train_stage.unet),
        formats={"train": f_train, "sample": f_sample},
        train_step=train_step,
        sample_batch=sample_batch,
        info={
            "config": _rel(args.config),
            "overrides": list(args.overrides),
            "size": size,
            "unet": cfg.stage.unet.model_dump(mode="json"),
            "sampling": s.model_dump(mode="json"),
            "text_dim": text_dim,
            "objective": cfg.stage.diffusion.objective,
            "text_drop_prob": cfg.stage.diffusion.text_drop_prob,
        },
    )


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- reference


class _StubTransform:
    """Placeholder for a torchvision transform: fine to reference, an error to use."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            "torchvision is stubbed by bench/unet.py (only imagen-pytorch's data/PIL helpers "
            "use it, never its Unet)"
        )


def _stub_module(name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so `import torchvision.transforms` resolves the submodule

    def __getattr__(attr: str) -> Any:  # module-level __getattr__ (PEP 562)
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StubTransform

    mod.__getattr__ = __getattr__  # type: ignore[method-assign]
    return mod


@contextlib.contextmanager
def _torchvision_stub() -> Iterator[str]:
    """Make ``import torchvision`` / ``import torchvision.transforms as T`` succeed.

    PyPI's torchvision cannot be imported beside the CPU torch wheel ('operator
    torchvision::nms does not exist'), and imagen-pytorch imports it at module level only for
    data transforms (``T.Compose``, ``T.Resize``, ``T.ToPILImage``, ...), which its ``Unet``
    and ``Imagen`` training/sampling never touch. If the real import fails we insert a minimal
    stub package (``torchvision`` + ``torchvision.transforms``, every attribute a placeholder
    class that raises when instantiated) for the duration of the imagen-pytorch import, then
    remove it again. transformers and datasets check for torchvision when they are first
    imported, so they are imported before the stub goes in (they then correctly see none).
    Yields "imported" or "stubbed" (reported as ``reference_torchvision``).
    """
    try:
        importlib.import_module("torchvision")
        real = True
    except Exception:  # ImportError, or RuntimeError from a mismatched wheel
        real = False
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
    if real:
        yield "imported"
        return
    for dep in ("transformers", "datasets"):
        with contextlib.suppress(Exception):
            importlib.import_module(dep)
    tv, tr = _stub_module("torchvision"), _stub_module("torchvision.transforms")
    tv.transforms = tr  # type: ignore[attr-defined]
    sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    try:
        yield "stubbed"
    finally:
        for name in ("torchvision", "torchvision.transforms"):
            if sys.modules.get(name) in (tv, tr):
                del sys.modules[name]


@contextlib.contextmanager
def _no_t5_download() -> Iterator[None]:
    """imagen-pytorch evaluates ``text_embed_dim=get_encoded_dim('google/t5-v1_1-base')`` as a
    default argument at import time, which fetches that T5 config from the Hugging Face hub.
    We always pass ``text_embed_dim=384``, so during the import ``T5Config.from_pretrained``
    returns a local ``T5Config(d_model=768)`` (t5-v1_1-base's width) instead: no network."""
    try:
        from transformers import T5Config
    except Exception:
        yield
        return
    had_own = "from_pretrained" in T5Config.__dict__
    old = T5Config.__dict__.get("from_pretrained")

    def offline(cls: Any, name: Any, *args: Any, **kwargs: Any) -> Any:
        return cls(d_model=768)

    T5Config.from_pretrained = classmethod(offline)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        if had_own:
            T5Config.from_pretrained = old  # type: ignore[method-assign]
        else:
            del T5Config.from_pretrained


def import_reference() -> tuple[Any, dict[str, Any]]:
    """Import imagen-pytorch; returns (module or None, facts / missing message)."""
    try:
        version = importlib.metadata.version(REF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None, {"reference_missing": f"{REF_PACKAGE} is not installed: {PIP_HINT}"}
    facts: dict[str, Any] = {"reference_version": version}
    if version != REF_VERSION:
        log(f"warning: {REF_PACKAGE} {version} is installed, the benchmark pins {REF_VERSION}")
    try:
        with _torchvision_stub() as tv_state, _no_t5_download():
            mod = importlib.import_module("imagen_pytorch")
    except Exception as e:
        return None, {
            **facts,
            "reference_missing": f"importing {REF_PACKAGE} failed ({type(e).__name__}: {e}); "
            f"its import needs: {PIP_HINT}",
        }
    facts["reference_torchvision"] = tv_state
    facts["reference_t5_config"] = "not fetched (unused default; text_embed_dim=384 passed)"
    return mod, facts


def build_reference(
    mod: Any, args: argparse.Namespace, gen: torch.Generator, ours: Contender
) -> Contender:
    """imagen-pytorch's Unet wrapped in its Imagen (for p_losses and its sampling loop)."""
    size = ours.info["size"]
    s = ours.info["sampling"]
    steps = args.sample_steps or s["steps"]
    f_train, f_sample = args.ref_train_format, args.ref_sample_format

    def make(timesteps: int) -> Any:
        unet = mod.Unet(**REF_UNET_KWARGS)
        return mod.Imagen(
            unets=(unet,),
            image_sizes=(size,),
            text_embed_dim=REF_UNET_KWARGS["text_embed_dim"],
            timesteps=timesteps,  # the base unet's sampling grid has this many steps
            cond_drop_prob=0.1,
            dynamic_thresholding=True,
            dynamic_thresholding_percentile=s["percentile"],
        )

    with contextlib.redirect_stdout(sys.stderr):  # it prints a "dim < 128" advice
        train_imagen = make(steps)
        sample_imagen = make(steps)
    sample_imagen.load_state_dict(train_imagen.state_dict())
    unet = train_imagen.unets[0]
    if f_train == "channels_last":
        train_imagen.to(memory_format=torch.channels_last)
    if f_sample == "channels_last":
        sample_imagen.to(memory_format=torch.channels_last)
    opt = make_adamw(unet.parameters())
    schedulers: dict[int, Any] = {steps: sample_imagen.noise_schedulers[0]}
    diffusion_times = importlib.import_module(
        "imagen_pytorch.imagen_pytorch"
    ).GaussianDiffusionContinuousTimes

    b = args.train_batch
    images = to_format(torch.rand(b, 3, size, size, generator=gen), f_train)  # in [0, 1]
    emb, mask = text_inputs(b, REF_UNET_KWARGS["text_embed_dim"], gen)
    s_emb, s_mask = text_inputs(args.sample_batch, REF_UNET_KWARGS["text_embed_dim"], gen)

    def train_step() -> None:
        # Imagen.forward: times ~ U(0, 1) (continuous), then p_losses: q_sample, the Unet with
        # text_embeds / text_mask / cond_drop_prob=0.1, MSE (min-SNR weighted) loss.
        loss = train_imagen(images, text_embeds=emb, text_masks=mask, unet_number=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample_batch(n_steps: int) -> None:
        if n_steps not in schedulers:
            schedulers[n_steps] = diffusion_times(noise_schedule="cosine", timesteps=n_steps)
        sample_imagen.noise_schedulers[0] = schedulers[n_steps]
        out = sample_imagen.sample(
            text_embeds=s_emb,
            text_masks=s_mask,
            cond_scale=s["guidance_scale"],
            use_tqdm=False,
        )
        assert out.shape == (args.sample_batch, 3, size, size)

    return Contender(
        name="reference",
        params=sum(p.numel() for p in unet.parameters()),
        formats={"train": f_train, "sample": f_sample},
        train_step=train_step,
        sample_batch=sample_batch,
        info={
            "model": REF_DESCRIPTION,
            "train": "Imagen(cond_drop_prob=0.1).forward -> p_losses (continuous times, MSE)",
            "sampling": f"Imagen.sample, {steps} timesteps, cond_scale={s['guidance_scale']} "
            "(Unet.forward_with_cond_scale: 2 forward passes per step), dynamic thresholding "
            f"(percentile {s['percentile']})",
        },
    )


# --------------------------------------------------------------------------- measurement


def _timed_clean(fn: Callable[[], object], repeat: int = 1) -> float:
    """Wall-clock seconds, after a garbage collection outside the timing."""
    gc.collect()
    return timed(fn, repeat)


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    machine = machine_info()

    log("building our U-Net")
    ours = build_ours(args, gen)
    steps = args.sample_steps or ours.info["sampling"]["steps"]

    ref: Contender | None = None
    ref_facts: dict[str, Any] = {}
    if args.no_reference:
        ref_facts = {"reference_missing": f"skipped (--no-reference); to compare: {PIP_HINT}"}
    else:
        log(f"importing the reference ({REF_PACKAGE} {REF_VERSION})")
        mod, ref_facts = import_reference()
        if mod is None:
            log(ref_facts["reference_missing"])
        else:
            ref = build_reference(mod, args, gen, ours)
    contenders = [c for c in (ours, ref) if c is not None]
    for c in contenders:
        log(f"{c.name}: {c.params / 1e6:.2f}M parameters, formats {c.formats}")

    # Warm-up: one training step and one short sampling run each (kernels, allocator).
    # --quick skips it (its single round is a smoke test, not a measurement).
    warm_steps = min(2, steps)
    warm: dict[str, dict[str, float]] = {c.name: {} for c in contenders}
    for c in contenders if not args.quick else ():
        t_train = _timed_clean(c.train_step)
        t_sample = _timed_clean(lambda c=c: c.sample_batch(warm_steps))
        warm[c.name] = {"train_step_s": t_train, "sample_step_s": t_sample / warm_steps}
        log(
            f"warm-up {c.name}: train step {t_train:.2f}s, sampling step "
            f"{t_sample / warm_steps:.2f}s"
        )

    # Pick the number of rounds (3-5) that fits the budget; estimate the run time.
    per_round_s = sum(
        args.train_steps * w.get("train_step_s", 0.0)
        + args.sample_batches * steps * w.get("sample_step_s", 0.0)
        for w in warm.values()
    )
    if args.rounds is None:
        args.rounds = max(3, min(5, math.floor(args.budget / max(per_round_s, 1e-9))))
    estimate = args.rounds * per_round_s
    if args.quick:
        log("quick smoke run: no warm-up, tiny batches; the numbers are not meaningful")
    else:
        log(
            f"estimate: {args.rounds} rounds x ({args.train_steps} train steps + "
            f"{args.sample_batches} sampling batch(es) of {steps} steps) per model = "
            f"~{estimate / 60:.1f} min more (so far {(time.perf_counter() - t_start) / 60:.1f} "
            "min)"
        )
    if estimate > 1.5 * args.budget:
        log(
            "warning: this is well over the budget; the machine is slow or busy "
            f"(loadavg {loadavg()}). --rounds/--train-steps make it shorter."
        )

    # Rounds: A B A B (ours first, then the reference), training then sampling.
    per_round: dict[str, dict[str, list[float]]] = {
        c.name: {k: [] for k in METRICS} for c in contenders
    }
    for r in range(args.rounds):
        record: dict[str, Any] = {"event": "round", "round": r + 1}
        for c in contenders:
            t = _timed_clean(c.train_step, args.train_steps)
            per_round[c.name]["train_samples_per_s"].append(args.train_steps * args.train_batch / t)
        for c in contenders:
            t = _timed_clean(lambda c=c: c.sample_batch(steps), args.sample_batches)
            n = args.sample_batches * args.sample_batch
            per_round[c.name]["sample_images_per_s"].append(n / t)
        for c in contenders:
            record[c.name] = {k: rnd(v[-1]) for k, v in per_round[c.name].items()}
        if ref is not None:
            record["ratio"] = {
                name: rnd(per_round["ours"][k][-1] / per_round["reference"][k][-1])
                for name, k in RATIOS.items()
            }
        record["loadavg"] = loadavg()
        emit(record)
        log(f"round {r + 1}/{args.rounds}: {record}")

    def summary_of(c: Contender) -> dict[str, Any]:
        pr = per_round[c.name]
        return {
            "params": c.params,
            "memory_format": c.formats,
            **{k: rnd(median(v)) for k, v in pr.items()},
            **{k + "_rounds": [rnd(x) for x in v] for k, v in pr.items()},
            "warmup": {k: rnd(v) for k, v in warm[c.name].items()},
            **c.info,
        }

    summary: dict[str, Any] = {
        "event": "summary",
        "bench": "unet",
        "quick": bool(args.quick),
        "settings": {
            "threads": args.threads,
            "train_batch": args.train_batch,
            "image_size": ours.info["size"],
            "optimizer": f"torch.optim.AdamW(lr={LR}) (same for both)",
            "sample_batch": args.sample_batch,
            "sample_steps": steps,
            "guidance_scale": ours.info["sampling"]["guidance_scale"],
            "threshold": "dynamic",
            "text": f"random (B, {TEXT_LEN}, {ours.info['text_dim']}) embeddings + mask",
            "rounds": args.rounds,
            "train_steps_per_round": args.train_steps,
            "sample_batches_per_round": args.sample_batches,
            "order": "per round: ours train, ref train, ours sample, ref sample",
            "statistic": "median over rounds; ratio = median(ours) / median(reference)",
        },
        "machine": machine,
        "ours": summary_of(ours),
        "reference": summary_of(ref) if ref is not None else None,
        **ref_facts,
    }
    if ref is not None:
        o, rf = summary["ours"], summary["reference"]
        ratio: dict[str, Any] = {name: rnd(o[k] / rf[k]) for name, k in RATIOS.items()}
        ratio["params"] = rnd(ours.params / ref.params)
        summary["ratio"] = ratio
        po, pr = per_round["ours"], per_round["reference"]
        summary["ratio_paired_median"] = {
            name: rnd(median([a / b for a, b in zip(po[k], pr[k], strict=True)]))
            for name, k in RATIOS.items()
        }
        summary["target"] = {
            "speedup": TARGET_SPEEDUP,
            "train_met": ratio["train"] >= TARGET_SPEEDUP,
            "sample_met": ratio["sample"] >= TARGET_SPEEDUP,
            "params_within_5pct": abs(ours.params / ref.params - 1) <= 0.05,
        }
    summary["loadavg_end"] = loadavg()
    summary["elapsed_s"] = rnd(time.perf_counter() - t_start)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    emit(summary)  # always the last line on stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
