"""Prompt files: ``.txt`` (one per line), ``.csv`` (a header naming the prompt column) and
``.jsonl`` (an object with a prompt key, or a string, per line), UTF-8 with or without a
byte-order mark. ``sample``, ``generate`` and ``eval prompts`` all read through here.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

PromptFormat = Literal["txt", "csv", "jsonl"]
PROMPT_FORMATS = (".txt", ".csv", ".jsonl")
# Column names a CSV prompt file may use, first match wins (case-insensitive); DrawBench
# files use "Prompts".
PROMPT_COLUMNS = ("prompt", "prompts", "text", "caption")
ENCODING = "utf-8-sig"  # reads UTF-8 and drops a leading byte-order mark (Excel writes one)


@dataclass(frozen=True)
class Prompt:
    """One prompt and the rest of its row (other CSV columns / JSONL fields)."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CsvTable:
    """A CSV file's header (as written) and its rows with their line numbers."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str | None, Any]]]

    def column(self, wanted: tuple[str, ...]) -> str | None:
        """The first header name equal to one of ``wanted`` (case-insensitive, trimmed)."""
        lower = {name.strip().lower(): name for name in self.columns}
        return next((lower[w.lower()] for w in wanted if w.lower() in lower), None)


def read_csv(path: str | Path) -> CsvTable:
    """A CSV with a header row; wholly empty lines are skipped (line numbers count them)."""
    p = Path(path)
    with p.open(newline="", encoding=ENCODING) as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = [(reader.line_num, dict(row)) for row in reader]
    return CsvTable(p, columns, rows)


def read_lines(path: str | Path) -> list[str]:
    """Non-blank lines, stripped."""
    text = Path(path).read_text(encoding=ENCODING)
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def prompt_format(path: str | Path, default: PromptFormat | None = None) -> PromptFormat:
    """The format named by the file's suffix; ``default`` for any other suffix, if given."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return "txt"
    if suffix == ".csv":
        return "csv"
    if suffix == ".jsonl":
        return "jsonl"
    if default is not None:
        return default
    raise ValueError(
        f"prompt file {str(p)!r}: unknown format {suffix or '(no suffix)'!r}; use one of "
        f"{', '.join(PROMPT_FORMATS)}"
    )


def read_prompt_file(
    path: str | Path,
    column: str | None = None,
    *,
    default_format: PromptFormat | None = None,
    allow_empty: bool = False,
) -> list[Prompt]:
    """Prompts of a ``.txt``, ``.csv`` or ``.jsonl`` file, in file order.

    Args:
        path: the file; its suffix gives the format.
        column: CSV column / JSONL key of the prompts (default: the first of
            ``PROMPT_COLUMNS`` for CSV, ``"prompt"`` for JSONL).
        default_format: format of a file with any other suffix (default: an error).
        allow_empty: return ``[]`` for a file without prompts instead of raising.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown format, missing column/key, an empty prompt, or no prompts;
            the message names the file, the line and the fix.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file {str(p)!r} does not exist")
    fmt = prompt_format(p, default_format)
    if fmt == "txt":
        prompts = [Prompt(t) for t in read_lines(p)]
    elif fmt == "csv":
        prompts = _read_csv(p, column)
    else:
        prompts = _read_jsonl(p, column or "prompt")
    if not prompts and not allow_empty:
        raise ValueError(f"prompt file {str(p)!r} has no prompts")
    return prompts


def _read_csv(p: Path, column: str | None) -> list[Prompt]:
    table = read_csv(p)
    key = table.column((column,) if column else PROMPT_COLUMNS)
    if key is None:
        what = f"column {column!r}" if column else f"a column named one of {PROMPT_COLUMNS}"
        raise ValueError(
            f"prompt file {str(p)!r}: needs a header row with {what}; its columns are "
            f"{table.columns} (choose one with --prompt-column)"
        )
    out = []
    for line, row in table.rows:
        text = (row.get(key) or "").strip()
        if not text:
            raise ValueError(f"{p}:{line}: empty prompt in column {key!r}")
        meta = {k: v for k, v in row.items() if k != key and k is not None}
        out.append(Prompt(text, meta))
    return out


def _read_jsonl(p: Path, key: str) -> list[Prompt]:
    out = []
    for line, raw in enumerate(p.read_text(encoding=ENCODING).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{line}: not valid JSON ({e.msg})") from None
        if isinstance(item, str):
            item = {key: item}
        if not isinstance(item, dict) or not isinstance(item.get(key), str):
            raise ValueError(
                f"{p}:{line}: expected an object with a string {key!r} key (or a JSON string), "
                f"got {raw.strip()[:80]!r}"
            )
        text = item[key].strip()
        if not text:
            raise ValueError(f"{p}:{line}: empty prompt")
        out.append(Prompt(text, {k: v for k, v in item.items() if k != key}))
    return out
