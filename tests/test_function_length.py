"""Functions a reader can hold: none in imagen_ray/ runs over 80 lines of body (docstring not
counted) unless a ``# long: <reason>`` comment on the line right above or below its ``def``
says why."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imagen_ray"
MAX_LINES = 80
LONG = re.compile(r"#\s*long:\s*\S")


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's last line."""
    body = fn.body
    first = body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        if len(body) == 1:
            return 0
        first = body[1]
    assert fn.end_lineno is not None
    return fn.end_lineno - first.lineno + 1


def _explained(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """A ``# long: <reason>`` comment above the def (or its decorators), on it, or below it."""
    top = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    near = {top - 1, fn.lineno, fn.lineno + 1}  # 1-based line numbers
    return any(LONG.search(lines[n - 1]) for n in near if 1 <= n <= len(lines))


def too_long(source: str, name: str = "<source>") -> list[str]:
    """``name:line function (N lines)`` for every unexplained function over MAX_LINES."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = _body_lines(node)
            if n > MAX_LINES and not _explained(node, lines):
                found.append(f"{name}:{node.lineno} {node.name} ({n} lines)")
    return found


def _function(body_lines: int, *, above: str = "", below: str = "") -> str:
    """``def f()`` with a docstring and ``body_lines`` statements, comments around the def."""
    lines = [above] if above else []
    lines.append("def f():")
    lines += [f"    {below}"] if below else []
    lines += ['    """Doc."""', *["    x = 1"] * body_lines]
    return "\n".join(lines) + "\n"


def test_the_measure_counts_the_body_and_reads_the_comment() -> None:
    assert too_long(_function(MAX_LINES)) == []
    assert too_long(_function(MAX_LINES + 1)) == [f"<source>:1 f ({MAX_LINES + 1} lines)"]
    assert too_long(_function(MAX_LINES + 1, above="# long: a table")) == []
    assert too_long(_function(MAX_LINES + 1, below="# long: a table")) == []
    assert too_long(_function(MAX_LINES + 1, above="# long:")) != []  # a reason is needed
    assert too_long(_function(MAX_LINES + 1, above="# a table")) != []
    nested = "class C:\n    @staticmethod\n" + "\n".join(
        "    " + line for line in _function(MAX_LINES + 1).splitlines()
    )
    assert too_long(nested) == [f"<source>:3 f ({MAX_LINES + 1} lines)"]


def test_no_function_in_the_package_is_long_without_a_reason() -> None:
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        for hit in too_long(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert not found, (
        f"functions over {MAX_LINES} lines (split them by concern, or put "
        "`# long: <reason>` on the line above the def): " + "; ".join(found)
    )
