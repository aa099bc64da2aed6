"""Prompt suites (DrawBench-style CSV) and a static HTML gallery comparing cascades.

A suite is a CSV with the columns ``Prompts`` and ``Category`` (DrawBench's layout: its
200 prompts in 11 categories can be used as they are; other columns are ignored). Every
cascade makes N images per prompt with the same seeds, so columns of the gallery differ only
by the model. Layout of an output directory::

    gallery/
      index.html                 categories, one row per prompt, cascades side by side
      images/<cascade>/0007-1.png  prompt 7, image 1
      results.json               suite, cascades, seeds, settings, files
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from imagen_ray.fs import atomic_write_json, atomic_write_text
from imagen_ray.images import save_image
from imagen_ray.prompts import read_csv

if TYPE_CHECKING:
    from imagen_ray.cascade import Cascade

PROMPT_COLUMN, CATEGORY_COLUMN = "Prompts", "Category"


@dataclass(frozen=True)
class SuitePrompt:
    """One row of a prompt suite."""

    text: str
    category: str


def read_suite(path: str | Path) -> list[SuitePrompt]:
    """Read a DrawBench-style CSV (columns ``Prompts`` and ``Category``; others ignored).

    Args:
        path: the CSV file.

    Returns:
        The prompts in file order (wholly blank rows skipped).

    Raises:
        ValueError: a missing column (named, with the columns found) or a row without a
            prompt (with its line number).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--suite {path}: no such file")
    table = read_csv(p)  # the prompt-file reader's CSV: UTF-8 with or without a BOM
    found = [c.strip() for c in table.columns]
    missing = [c for c in (PROMPT_COLUMN, CATEGORY_COLUMN) if c not in found]
    if missing:
        raise ValueError(
            f"--suite {path}: missing column(s) {', '.join(missing)}; a suite CSV needs a "
            f"header with {PROMPT_COLUMN!r} and {CATEGORY_COLUMN!r} (found: "
            f"{', '.join(repr(c) for c in found) or 'no header'})"
        )
    out = []
    for line, raw in table.rows:
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        text, category = row.get(PROMPT_COLUMN, ""), row.get(CATEGORY_COLUMN, "")
        if not any(row.values()):
            continue
        if not text:
            raise ValueError(f"--suite {path}: line {line} has no {PROMPT_COLUMN!r} text")
        out.append(SuitePrompt(text, category or "uncategorised"))
    if not out:
        raise ValueError(f"--suite {path}: no prompts")
    return out


def cascade_names(paths: Sequence[str | Path]) -> list[str]:
    """Column names for cascades: the directory names, made unique (``-2``, ``-3``)."""
    names: list[str] = []
    for p in paths:
        base = Path(p).resolve().name or "cascade"
        name, k = base, 2
        while name in names:
            name, k = f"{base}-{k}", k + 1
        names.append(name)
    return names


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def run_suite(
    cascades: Sequence[tuple[str, Cascade]],
    prompts: Sequence[SuitePrompt],
    out_dir: str | Path,
    *,
    n: int = 1,
    seed: int = 0,
    sampling: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    title: str = "prompt suite",
) -> dict[str, Any]:
    """Generate ``n`` images per prompt with every cascade and write the gallery.

    Image j of prompt i uses seed ``seed + i * n + j`` in every cascade.

    Args:
        cascades: (name, loaded cascade) pairs, shown left to right.
        prompts: the suite.
        out_dir: the gallery directory.
        n: images per prompt.
        seed: base seed.
        sampling: per-stage sampling overrides; stage names a cascade lacks are skipped.
        batch_size: prompts per generate call.
        progress: show progress bars.
        title: the page heading (e.g. the suite file name).

    Returns:
        The content of ``results.json``.
    """
    from imagen_ray.eval.alignment import generate_images
    from imagen_ray.images import to_pil

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    out = Path(out_dir)
    texts = [p.text for p in prompts for _ in range(n)]
    seeds = [seed + i * n + j for i in range(len(prompts)) for j in range(n)]
    files: dict[str, list[list[str]]] = {}
    seconds: dict[str, float] = {}
    for name, cascade in cascades:
        stage_names = {s.cfg.name for s in cascade.stage_list}
        own = {k: v for k, v in (sampling or {}).items() if k in stage_names}
        t0 = time.perf_counter()
        images = generate_images(
            cascade, texts, seeds, sampling=own, batch_size=batch_size, progress=progress, desc=name
        )
        seconds[name] = round(time.perf_counter() - t0, 3)
        folder = _slug(name)
        rows: list[list[str]] = []
        for i in range(len(prompts)):
            row = []
            for j in range(n):
                rel = f"images/{folder}/{i:04d}-{j}.png"
                save_image(to_pil(images[i * n + j][None])[0], out / rel)
                row.append(rel)
            rows.append(row)
        files[name] = rows
    results = {
        "title": title,
        "n": n,
        "seed": seed,
        "cascades": [name for name, _ in cascades],
        "sampling": {k: dict(v) for k, v in (sampling or {}).items()},
        "seconds": seconds,
        "prompts": [
            {
                "prompt": p.text,
                "category": p.category,
                "seeds": seeds[i * n : (i + 1) * n],
                "files": {name: files[name][i] for name, _ in cascades},
            }
            for i, p in enumerate(prompts)
        ],
    }
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "index.html", gallery_html(results))
    return results


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 6px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.prompt { max-width: 22em; }
img { image-rendering: pixelated; width: 128px; height: 128px; margin: 1px; }
.meta { color: #666; }
"""


def gallery_html(results: Mapping[str, Any]) -> str:
    """The gallery page for :func:`run_suite`'s results (all text escaped)."""
    e = html.escape
    names = list(results["cascades"])
    cats: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for i, row in enumerate(results["prompts"]):
        cats.setdefault(row["category"], []).append((i, row))
    anchors = {c: f"cat-{k}" for k, c in enumerate(cats)}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(results['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(results['title'])}</h1>",
        f'<p class="meta">{len(results["prompts"])} prompts, {results["n"]} image(s) per prompt '
        f"and cascade, seed {results['seed']}; cascades: {e(', '.join(names))}</p>",
        "<nav>"
        + "".join(f'<a href="#{anchors[c]}">{e(c)} ({len(rows)})</a>' for c, rows in cats.items())
        + "</nav>",
    ]
    for c, rows in cats.items():
        parts.append(f'<h2 id="{anchors[c]}">{e(c)}</h2>')
        head = "".join(f"<th>{e(n)}</th>" for n in names)
        parts.append(f"<table><thead><tr><th>#</th><th>prompt</th>{head}</tr></thead><tbody>")
        for i, row in rows:
            cells = []
            for n in names:
                imgs = "".join(
                    f'<a href="{e(quote(f))}"><img src="{e(quote(f))}" alt="{e(row["prompt"])}" '
                    f'title="seed {s}" loading="lazy"></a>'
                    for f, s in zip(row["files"][n], row["seeds"], strict=True)
                )
                cells.append(f"<td>{imgs}</td>")
            parts.append(
                f'<tr><td>{i}</td><td class="prompt">{e(row["prompt"])}</td>{"".join(cells)}</tr>'
            )
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
