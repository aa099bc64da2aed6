"""``imagen-ray demo`` (``make demo``): the whole product on one machine, on embedded defaults.

Synthetic shards -> precomputed MiniLM embeddings -> the base and SR stages trained AT THE
SAME TIME through Ray Data -> Ray Train + DeepSpeed ZeRO-2 (two workers each) -> exported
EMA weights -> Ray Serve -> images for held-out (colour, shape) prompts over HTTP -> the
alignment probe -> ``report.html`` + ``metrics.json`` + ``grid.png``.

No GPU, network or account is needed; W&B runs offline unless a key is configured. Every
step prints what it does and how long it took; a finished step is reused when the demo runs
again in the same ``--out`` (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "demo"
# What `make demo` must show (issue: colour >= 90%, shape >= 70%, position >= 80% on
# held-out combinations); the demo exits 1 when a target is missed.
TARGETS = {"colour": 0.9, "shape": 0.7, "position": 0.8}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="working directory (default: runs/demo)")
    p.add_argument(
        "--configs",
        default=str(CONFIGS),
        metavar="DIR",
        help="directory with base.yaml, sr64.yaml and serve.yaml (default: configs/demo)",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=None,
        help="synthetic training samples (default: the demo spec's count)",
    )
    p.add_argument("--base-steps", type=int, help="override train.steps of the base stage")
    p.add_argument("--sr-steps", type=int, help="override train.steps of the SR stage")
    p.add_argument(
        "--images-per-prompt",
        type=int,
        default=4,
        help="images per held-out prompt (seeds 0..N-1 per prompt; default 4)",
    )
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP port (127.0.0.1)")
    p.add_argument(
        "--fresh", action="store_true", help="delete --out first instead of reusing its steps"
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="exit 0 even when an accuracy target is missed (the report still says so)",
    )


class Timer:
    """Step banners with the elapsed time, and the per-step durations for the report."""

    def __init__(self, total_steps: int) -> None:
        self.start = time.monotonic()
        self.total = total_steps
        self.n = 0
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> str:
        s = int(time.monotonic() - self.start)
        return f"{s // 60:02d}:{s % 60:02d}"

    @contextmanager
    def step(self, name: str, what: str) -> Iterator[None]:
        self.n += 1
        print(f"\n[demo {self.elapsed()}] {self.n}/{self.total} {what}", flush=True)
        t = time.monotonic()
        yield
        self.seconds[name] = round(time.monotonic() - t, 1)
        print(f"[demo {self.elapsed()}] done in {self.seconds[name]:.0f} s", flush=True)


def demo_spec(samples: int | None = None) -> Any:
    """The synthetic set the demo trains on: one large object per image on a black
    background, 64 px (the SR stage's size; the base stage reads it resized to 32 px).

    One background because mixed ones (black, white, gray, named in only some captions) hide
    the position signal in the loss: in a single-process run of the demo's base recipe (without
    the schedule shift) they left held-out colour at 30 % and shape at 17 % after 600 steps.
    """
    from imagen_ray.data.synthetic import SyntheticSpec

    return SyntheticSpec(
        num_samples=8000 if samples is None else samples,
        size=64,
        seed=0,
        count_probs=(1.0, 0.0, 0.0),
        sizes=("large",),
        backgrounds=("black",),
        samples_per_shard=1000,
    )


def _same_spec(shard_dir: Path, spec: Any) -> bool:
    summary = shard_dir / "summary.json"
    if not summary.is_file():
        return False
    try:
        return json.loads(summary.read_text()).get("synthetic") == spec.to_dict()
    except (OSError, ValueError):
        return False


def _run_configs(args: argparse.Namespace, out: Path, shards: Path) -> list[Any]:
    from imagen_ray.config import load_run_config

    cfgs = []
    for name, steps in (("base", args.base_steps), ("sr64", args.sr_steps)):
        overrides = [
            f"data.shards={shards}",
            f"train.storage_path={out / 'runs'}",
            f"train.name={name}",
            f"wandb.dir={out / 'wandb'}",
        ]
        if steps is not None:
            overrides.append(f"train.steps={steps}")
        cfgs.append(load_run_config(Path(args.configs) / f"{name}.yaml", overrides))
    return cfgs


def _post(url: str, body: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _wait_healthy(url: str, timeout: float = 300.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(1.0)


def generate_over_http(
    base_url: str, items: Sequence[dict[str, Any]], images_per_prompt: int, max_prompts: int
) -> tuple[list[np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    """POST every (prompt, seed) to ``/v1/generate``; images decoded to uint8 arrays."""
    from PIL import Image
    from tqdm import tqdm

    jobs = [(it, k) for k in range(images_per_prompt) for it in items]
    images: list[np.ndarray] = []
    expected: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    with tqdm(total=len(jobs), desc="generate (HTTP)", unit="img") as bar:
        # one request per seed group: prompt i of a request gets seed + i, so seed k of
        # prompt j is k * 1000 + j and every image is reproducible from the manifest
        for k in range(images_per_prompt):
            for start in range(0, len(items), max_prompts):
                chunk = items[start : start + max_prompts]
                body = {"prompts": [it["prompt"] for it in chunk], "seed": k * 1000 + start}
                resp = _post(f"{base_url}/v1/generate", body)
                settings = resp["settings"]
                for it, img in zip(chunk, resp["images"], strict=True):
                    pil = Image.open(io.BytesIO(base64.b64decode(img["image"]))).convert("RGB")
                    images.append(np.asarray(pil))
                    expected.append({**it, "seed": img["seed"]})
                bar.update(len(chunk))
    return images, expected, settings


def _labelled_grid(
    images: Sequence[np.ndarray], captions: Sequence[str], ok: Sequence[bool], cols: int
) -> Any:
    """Images upscaled 2x with a green (all right) or red frame and a caption underneath."""
    from PIL import Image, ImageDraw

    scale, pad, text_h = 2, 4, 24
    h, w = images[0].shape[:2]
    cw, ch = w * scale + 2 * pad, h * scale + 2 * pad + text_h
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cw, rows * ch), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (img, cap, good) in enumerate(zip(images, captions, ok, strict=True)):
        r, c = divmod(i, cols)
        x, y = c * cw, r * ch
        draw.rectangle(
            (x, y, x + cw - 1, y + h * scale + 2 * pad - 1),
            fill=(0, 160, 0) if good else (210, 0, 0),
        )
        tile = Image.fromarray(img).resize((w * scale, h * scale), Image.Resampling.NEAREST)
        grid.paste(tile, (x + pad, y + pad))
        words = cap.split()
        line1 = " ".join(words[: (len(words) + 1) // 2])
        line2 = " ".join(words[(len(words) + 1) // 2 :])
        draw.text((x + 2, y + h * scale + 2 * pad), line1, fill=(0, 0, 0))
        draw.text((x + 2, y + h * scale + 2 * pad + 11), line2, fill=(0, 0, 0))
    return grid


def write_report(
    out: Path,
    images: Sequence[np.ndarray],
    expected: Sequence[dict[str, Any]],
    timer: Timer,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The probe's report (:func:`~imagen_ray.eval.alignment.evaluate_probe`: images/,
    readings.jsonl, failures.png) plus the targets, grid.png and report.html, under
    ``out/report``; metrics.json holds the held-out scores, the targets and the timings."""
    from imagen_ray.eval.alignment import HELDOUT, evaluate_probe

    rep = out / "report"
    if rep.exists():
        shutil.rmtree(rep)
    items = [{**e, "split": HELDOUT} for e in expected]
    probe = evaluate_probe(images, items, rep, seeds=[e["seed"] for e in expected])
    rows = [json.loads(line) for line in (rep / "readings.jsonl").read_text().splitlines()]
    ok = [not set(r["wrong"]) & set(TARGETS) for r in rows]
    result = probe["splits"][HELDOUT]
    passed = {a: result["accuracy"].get(a, 0.0) >= t for a, t in TARGETS.items()}
    metrics = {
        "heldout": result,
        "targets": TARGETS,
        "passed": passed,
        "all_passed": all(passed.values()),
        "failures_png": probe["failures_png"],
        "seconds": timer.seconds,
        "total_seconds": round(time.monotonic() - timer.start, 1),
        **extra,
    }
    (rep / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cols = max(1, len(images) // max(1, len({e["prompt"] for e in expected})))
    grid = _labelled_grid(images, [e["prompt"] for e in expected], ok, cols=min(15, max(cols, 8)))
    grid.save(rep / "grid.png")
    (rep / "report.html").write_text(_html(metrics, rows, ok))
    return metrics


def _html(metrics: dict[str, Any], rows: list[dict[str, Any]], ok: Sequence[bool]) -> str:
    acc = metrics["heldout"]["accuracy"]
    trs = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{acc.get(a, 0):.1%}</td><td>{t:.0%}</td>"
        f"<td class={'ok' if metrics['passed'][a] else 'bad'}>"
        f"{'met' if metrics['passed'][a] else 'missed'}</td></tr>"
        for a, t in metrics["targets"].items()
    )
    times = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.0f} s</td></tr>"
        for k, v in metrics["seconds"].items()
    )
    cards = "".join(
        f"<figure class={'ok' if good else 'bad'}><img src='{html.escape(r['file'])}' "
        f"width=128 height=128><figcaption>{html.escape(r['prompt'])} (seed {r['seed']})<br>"
        f"read: {html.escape(str(r['read']['colour']))} {html.escape(str(r['read']['shape']))} "
        f"{html.escape(str(r['read']['position']))}</figcaption></figure>"
        for r, good in zip(rows, ok, strict=True)
    )
    failures = (
        " <a href='failures.png'>failures.png</a> shows each miss with what the probe read."
        if metrics.get("failures_png")
        else ""
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>imagen-ray demo</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px}}
.ok{{color:#080}}.bad{{color:#c00}}figure{{display:inline-block;margin:4px;width:140px;
font-size:11px;vertical-align:top}}figure img{{image-rendering:pixelated;border:3px solid}}
figure.ok img{{border-color:#0a0}}figure.bad img{{border-color:#d00}}</style></head><body>
<h1>imagen-ray demo</h1>
<p>A tiny two-stage cascade (32 px base, 32&rarr;64 px super-resolution) trained on the
synthetic shapes set, served by Ray Serve, asked over HTTP for colour/shape pairs that
never occur in its training data. The alignment probe reads each image back.</p>
<h2>Held-out combinations: {metrics["heldout"]["n"]} images</h2>
<table><tr><th>attribute</th><th>accuracy</th><th>target</th><th></th></tr>{trs}
<tr><td>colour + shape + position</td><td>{metrics["heldout"]["all"]:.1%}</td>
<td></td><td></td></tr>
</table>
<h2>Time</h2><table>{times}<tr><th>total</th><th>{metrics["total_seconds"]:.0f} s</th></tr></table>
<h2>Images</h2><p>Green frame: colour, shape and position all read back as prompted.{failures}</p>
{cards}
</body></html>
"""


def run(args: argparse.Namespace) -> int:
    import ray

    out = Path(args.out).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_MODE", "offline")
    timer = Timer(total_steps=6)
    spec = demo_spec(args.samples)
    raw, encoded = out / "data" / "shards", out / "data" / "encoded"
    print(
        f"imagen-ray demo -> {out}\n"
        "Trains a tiny text-to-image cascade on 2 CPU cores and checks that it follows "
        "prompts it has never seen. About 15 minutes on a 2-core machine.",
        flush=True,
    )

    cfgs = _run_configs(args, out, encoded)

    with timer.step("data", f"synthetic shards: {spec.num_samples} images at {spec.size} px"):
        if _same_spec(raw, spec):
            print(f"reusing {raw}")
        else:
            from imagen_ray.data.synthetic import write_synthetic

            write_synthetic(spec, raw)
            shutil.rmtree(encoded, ignore_errors=True)

    ray.init(num_cpus=max(8, os.cpu_count() or 2), include_dashboard=False, log_to_driver=True)
    try:
        with timer.step("encode", "text embeddings, computed once (MiniLM on Ray Data)"):
            if (encoded / "encoding.json").is_file():
                print(f"reusing {encoded}")
            else:
                from imagen_ray.data.precompute import encode_shards

                encode_shards(
                    raw,
                    encoded,
                    cfgs[0].text,
                    concurrency=1,
                    num_cpus=1.0,
                    max_tasks=cfgs[0].data.read_tasks,
                )

        stage_dirs = []
        with timer.step(
            "train",
            " and ".join(
                f"{c.stage.name} ({c.train.steps} steps, {c.train.num_workers} "
                f"worker{'s' if c.train.num_workers > 1 else ''})"
                for c in cfgs
            )
            + f" at once: Ray Data -> Ray Train + DeepSpeed ZeRO-{cfgs[0].train.zero_stage}",
        ):
            stage_dirs = _train(cfgs, out)

        cascade_dir = out / "cascade"
        with timer.step("export", "EMA weights -> one cascade directory (safetensors)"):
            from imagen_ray.cascade import Cascade

            Cascade.load(stage_dirs).save(cascade_dir)
            print(f"cascade: {cascade_dir}")

        from imagen_ray.data.synthetic import heldout_prompts

        items = heldout_prompts(spec)
        with timer.step(
            "serve",
            f"Ray Serve on 127.0.0.1:{args.port}; {len(items)} held-out prompts x "
            f"{args.images_per_prompt} seeds over HTTP",
        ):
            images, expected, settings = _serve_and_generate(args, cascade_dir, items)

        with timer.step("eval", "alignment probe + report"):
            metrics = write_report(
                out,
                images,
                expected,
                timer,
                {
                    "settings": settings,
                    "heldout_pairs": [list(p) for p in spec.heldout],
                    "train_steps": {c.stage.name: c.train.steps for c in cfgs},
                },
            )
    finally:
        ray.shutdown()
    # the report was written inside the last step: add that step's time and the final total
    metrics["seconds"] = dict(timer.seconds)
    metrics["total_seconds"] = round(time.monotonic() - timer.start, 1)
    (out / "report" / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")

    acc = metrics["heldout"]["accuracy"]
    print(f"\n[demo {timer.elapsed()}] held-out prompts ({metrics['heldout']['n']} images):")
    for a, t in TARGETS.items():
        mark = "ok " if metrics["passed"][a] else "MISSED"
        print(f"  {a:9s} {acc.get(a, 0):6.1%}   target {t:.0%}   {mark}")
    print(f"  all three {metrics['heldout']['all']:6.1%}")
    print(f"report: {out / 'report' / 'report.html'}  (grid.png, metrics.json)")
    if not metrics["all_passed"] and not args.no_check:
        print("some accuracy target was missed (see the report)", file=sys.stderr)
        return 1
    return 0


def _train(cfgs: list[Any], out: Path) -> list[Path]:
    from concurrent.futures import ThreadPoolExecutor

    from imagen_ray.train.export import export_checkpoint
    from imagen_ray.train.launcher import build_trainer, run_dir

    dirs, todo = [], []
    for cfg in cfgs:
        stage_dir = out / "stages" / cfg.stage.name
        dirs.append(stage_dir)
        if (stage_dir / "config.json").is_file():
            print(f"reusing {stage_dir} (delete it, or pass --fresh, to train again)")
        else:
            todo.append(cfg)
    trainers = [build_trainer(c) for c in todo]
    with ThreadPoolExecutor(max_workers=max(1, len(trainers))) as pool:
        results = list(pool.map(lambda t: t.fit(), trainers))
    for cfg, res in zip(todo, results, strict=True):
        ckpt = res.checkpoint.path if res.checkpoint else run_dir(cfg)
        export_checkpoint(ckpt, out / "stages" / cfg.stage.name)
    return dirs


def _serve_and_generate(
    args: argparse.Namespace, cascade_dir: Path, items: list[dict[str, Any]]
) -> tuple[list[np.ndarray], list[dict[str, Any]], dict[str, Any]]:
    from ray import serve

    from imagen_ray.serve.app import build_application, load_serve_config

    cfg = load_serve_config(
        Path(args.configs) / "serve.yaml",
        [f"serve.cascade={cascade_dir}", f"serve.port={args.port}", "serve.host=127.0.0.1"],
    )
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    try:
        serve.run(build_application(cfg), name=cfg.app_name, route_prefix="/")
        base = f"http://{cfg.host}:{cfg.port}"
        _wait_healthy(f"{base}/healthz")
        print(f"serving at {base}/ (web page), {base}/docs (API)")
        return generate_over_http(base, items, args.images_per_prompt, cfg.max_prompts)
    finally:
        serve.shutdown()


def register(sub: Any) -> None:
    """Add ``imagen-ray demo`` to the CLI's subparsers."""
    p = sub.add_parser(
        "demo",
        help="the whole system on one machine: data, training, serving, evaluation",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        epilog="Targets on held-out prompts: "
        + ", ".join(f"{a} >= {t:.0%}" for a, t in TARGETS.items())
        + ". Exit status 1 when one is missed.",
    )
    add_arguments(p)
    p.set_defaults(func=run)
