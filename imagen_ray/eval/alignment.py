"""Text-image alignment on the synthetic set: prompts, generation, reading back, the report.

Generation and scoring are separate so that images made in this process
(:func:`generate_images`) and images that came back from the HTTP API share one report
(:func:`evaluate_probe`): accuracy per attribute for held-out and for seen combinations,
``metrics.json``, ``readings.jsonl``, the images and a grid of the failures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from imagen_ray.data.scene_spec import SceneSpec
from imagen_ray.data.synthetic import heldout_prompts, prompt_item
from imagen_ray.data.synthetic_spec import SyntheticSpec, allowed_triples
from imagen_ray.eval.probe import PROBED, Reading, read_image, score
from imagen_ray.eval.report import MAX_FAILURES, failure_tile, write_report
from imagen_ray.images import save_image

if TYPE_CHECKING:
    from imagen_ray.cascade import Cascade

HELDOUT, SEEN = "heldout", "seen"


# ---------------------------------------------------------------------------- prompts


def load_spec(path: str | Path | None) -> SyntheticSpec:
    """The synthetic-set settings whose held-out pairs the probe uses.

    Args:
        path: ``heldout.json`` of a synthetic shard directory, the directory itself, or None
            for the default :class:`SyntheticSpec` (its default held-out pairs).

    Returns:
        A spec with the held-out (colour, shape) and (shape, position) pairs of ``path``,
        and its scene settings when the set has scenes (else the default held-out scenes).
    """
    if path is None:
        return SyntheticSpec()
    p = Path(path)
    if p.is_dir():
        p = p / "heldout.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"--heldout {path}: no such file; pass the heldout.json that "
            "`imagen-ray data synthetic` wrote (or its shard directory)"
        )
    d = json.loads(p.read_text())
    if "pairs" not in d:
        raise ValueError(f"--heldout {p}: expected a heldout.json with a 'pairs' list")
    scenes = {k: v for k, v in d.get("scenes", {}).items() if k not in ("prompts", "items")}
    return SyntheticSpec(
        heldout=tuple((c, s) for c, s in d["pairs"]),
        heldout_shape_positions=tuple((s, q) for s, q in d.get("shape_position_pairs", [])),
        scenes=SceneSpec.model_validate(scenes),
    )


def seen_prompts(spec: SyntheticSpec, n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` single-object prompts for (colour, shape, position) combinations that training saw.

    Drawn without replacement (seeded) from every combination not excluded by the spec's
    held-out pairs, phrased like :func:`heldout_prompts` (``a {colour} {shape} {where}``).

    Args:
        spec: the set's settings (its held-out pairs are avoided).
        n: how many (fewer when there are fewer combinations).
        seed: sampling seed.

    Returns:
        Items shaped like :func:`heldout_prompts` returns.
    """
    combos = allowed_triples(spec)
    rng = np.random.default_rng(seed)
    picks = rng.permutation(len(combos))[: max(0, n)]
    return [prompt_item(*combos[k]) for k in sorted(int(i) for i in picks)]


def probe_items(
    spec: SyntheticSpec, *, num_seen: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Held-out items then seen items, each tagged with ``"split"`` (``heldout``/``seen``).

    Args:
        spec: the set's settings.
        num_seen: seen combinations to add (default: as many as there are held-out ones).
        seed: seed for choosing the seen combinations.
    """
    held = [{**it, "split": HELDOUT} for it in heldout_prompts(spec)]
    n = len(held) if num_seen is None else num_seen
    return held + [{**it, "split": SEEN} for it in seen_prompts(spec, n, seed=seed)]


# ---------------------------------------------------------------------------- generation


def generate_images(
    cascade: Cascade,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    sampling: Mapping[str, Mapping[str, Any]] | None = None,
    until: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "generating",
) -> list[np.ndarray]:
    """Images of the last stage run for each (prompt, seed), in batches with a progress bar.

    Args:
        cascade: a loaded cascade.
        prompts / seeds: one seed per prompt (a prompt may repeat with other seeds).
        sampling: per-stage sampling overrides (``{"base": {"steps": 8}}``).
        until: last stage to run (default: all).
        batch_size: prompts per ``generate`` call.
        progress: show a progress bar (one tick per image).

    Returns:
        One (H, W, 3) uint8 array per prompt.
    """
    from tqdm import tqdm

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    images: list[np.ndarray] = []
    with tqdm(total=len(prompts), desc=desc, unit="img", disable=not progress) as bar:
        for i in range(0, len(prompts), batch_size):
            out = cascade.generate(
                list(prompts[i : i + batch_size]),
                seed=list(seeds[i : i + batch_size]),
                sampling=sampling,
                until=until,
            )
            images.extend(out.uint8())
            bar.update(len(out.seeds))
    return images


# ---------------------------------------------------------------------------- scoring


def _expected(item: Mapping[str, Any]) -> dict[str, Any]:
    attrs = item.get("attributes")
    if not isinstance(attrs, Mapping):
        raise ValueError(
            f"probe item {item.get('prompt')!r} has no 'attributes' dict; items must look like "
            "heldout_prompts() returns: {'prompt': ..., 'attributes': {'colour', 'shape', ...}}"
        )
    return {a: attrs.get(a) for a in PROBED}


def _wrong(reading: Reading, expected: Mapping[str, Any]) -> list[str]:
    return [a for a in PROBED if expected[a] is not None and getattr(reading, a) != expected[a]]


def evaluate_probe(
    images: Sequence[np.ndarray],
    items: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    seeds: Sequence[int | None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Read every image back with the probe and write the alignment report.

    Args:
        images: one (H, W, 3) uint8 array per item (e.g. the last stage's output, or images
            decoded from the HTTP API).
        items: ``{"prompt", "attributes"}`` as :func:`heldout_prompts` returns, optionally
            with ``"split"`` (``heldout`` (default) or ``seen``); repeat an item for several
            images of one prompt.
        out_dir: where ``images/``, ``readings.jsonl``, ``metrics.json`` and
            ``failures.png`` (only when something failed) go.
        seeds: the seed of each image (recorded in readings.jsonl).
        extra: more keys for metrics.json (settings, timings).

    Returns:
        The metrics: ``{"splits": {split: score(...)}, "failures": int, ...}`` where each
        score is ``{"n", "accuracy": {colour, shape, position, count}, "all"}``.
    """
    if len(images) != len(items):
        raise ValueError(f"{len(images)} images for {len(items)} probe items")
    if seeds is not None and len(seeds) != len(items):
        raise ValueError(f"{len(seeds)} seeds for {len(items)} probe items")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    by_split: dict[str, tuple[list[Reading], list[dict[str, Any]]]] = {}
    records: list[dict[str, Any]] = []
    tiles: list[Image.Image] = []
    failures = 0
    for k, (image, item) in enumerate(zip(images, items, strict=True)):
        image = np.asarray(image)
        expected = _expected(item)
        reading = read_image(image)
        split = str(item.get("split", HELDOUT))
        name = f"images/{k:05d}.png"
        save_image(Image.fromarray(np.ascontiguousarray(image)), out / name)
        wrong = _wrong(reading, expected)
        by_split.setdefault(split, ([], []))
        by_split[split][0].append(reading)
        by_split[split][1].append(expected)
        records.append(
            {
                "prompt": item["prompt"],
                "seed": None if seeds is None else seeds[k],
                "split": split,
                "expected": expected,
                "read": reading.to_dict(),
                "wrong": wrong,
                "file": name,
            }
        )
        if wrong:
            failures += 1
            if len(tiles) < MAX_FAILURES:
                lines = [(f"{a}: {getattr(reading, a)}", a in wrong) for a in PROBED]
                tiles.append(failure_tile(image, f"{item['prompt']} [{split}]", lines))
    metrics: dict[str, Any] = {
        "splits": {s: score(rs, es) for s, (rs, es) in by_split.items()},
        "n": len(records),
        "failures": failures,
        **dict(extra or {}),
    }
    return write_report(out, records, tiles, metrics)


def summary_table(metrics: Mapping[str, Any]) -> str:
    """Accuracy per split and attribute as an aligned text table."""
    cols = [*PROBED, "all"]
    lines = [f"{'split':<9}{'n':>5}" + "".join(f"{c:>10}" for c in cols)]
    for split, s in metrics["splits"].items():
        accs = [s["accuracy"].get(a) for a in PROBED] + [s["all"]]
        cells = "".join(f"{'-':>10}" if v is None else f"{v:>10.1%}" for v in accs)
        lines.append(f"{split:<9}{s['n']:>5}" + cells)
    return "\n".join(lines)
