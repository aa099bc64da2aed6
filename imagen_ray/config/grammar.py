"""The grammar of ``data.caption_key`` and ``data.filters``: the config validates against it
and the data pipeline (:mod:`imagen_ray.data.metadata`) applies what it parses.

* ``data.caption_key``: ``txt`` (default) or any other entry extension takes that entry's
  UTF-8 text; ``json:FIELD`` takes a field of the ``json`` entry (``json:meta.alt`` walks
  nested objects).
* ``data.filters``: strings ``FIELD OP VALUE`` with ``OP`` one of ``< <= > >= == !=``,
  ``VALUE`` a number, a quoted string (``'...'``/``"..."``) or a bare word (a string:
  ``status == success``). A tiny grammar parsed by a regular expression; nothing is
  evaluated. Ordering operators need a number. A sample passes when every filter holds;
  a missing or null field, or a value of the wrong type, fails the filter. Each drop is
  counted under the first failing filter as ``filter:FIELD OP VALUE`` without spaces
  (``filter:punsafe<0.1``).

Standard library only, so that loading a config imports no data-pipeline dependency.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

JSON_ENTRY = "json"
JSON_PREFIX = "json:"

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_FIELD = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_FILTER_RE = re.compile(rf"^\s*({_FIELD})\s*(<=|>=|==|!=|<|>)\s*(.*?)\s*$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_WORD_RE = re.compile(r"^[A-Za-z0-9_.\-/:]+$")
_ENTRY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def lookup(meta: Mapping[str, Any], dotted: str) -> Any:
    """``meta["a"]["b"]`` for ``"a.b"``; None when any step is missing."""
    value: Any = meta
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


@dataclass(frozen=True)
class MetadataFilter:
    """One parsed ``FIELD OP VALUE`` filter; ``reason`` is its skip-reason name."""

    field: str
    op: str
    value: float | str

    @property
    def reason(self) -> str:
        value = self.value if isinstance(self.value, str) else _format_number(self.value)
        return f"filter:{self.field}{self.op}{value}"

    def holds(self, meta: Mapping[str, Any]) -> bool:
        """True when the field exists, has a comparable type, and the comparison holds."""
        found = lookup(meta, self.field)
        if isinstance(self.value, str):
            return isinstance(found, str) and _OPS[self.op](found, self.value)
        if isinstance(found, bool) or not isinstance(found, (int, float)):
            return False
        return not math.isnan(found) and _OPS[self.op](found, self.value)


def _format_number(x: float) -> str:
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def parse_filter(text: str) -> MetadataFilter:
    """Parse ``"punsafe < 0.1"`` into a :class:`MetadataFilter`.

    Raises:
        ValueError: the text does not follow ``FIELD OP VALUE`` (the message names it and
            shows the form), or an ordering operator has a string value.
    """
    form = (
        "write FIELD OP VALUE with OP one of < <= > >= == != and VALUE a number, a quoted "
        "string or a bare word, e.g. 'punsafe < 0.1', 'width >= 256', 'status == success'"
    )
    m = _FILTER_RE.match(text)
    if m is None or not m.group(3):
        raise ValueError(f"data.filters entry {text!r} is not a filter: {form}")
    field_name, op, raw = m.groups()
    value: float | str
    if _NUMBER_RE.match(raw):
        value = float(raw)
    elif len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        value = raw[1:-1]
    elif _WORD_RE.match(raw):
        value = raw
    else:
        raise ValueError(f"data.filters entry {text!r}: value {raw!r} is not valid: {form}")
    if isinstance(value, str) and op not in ("==", "!="):
        raise ValueError(
            f"data.filters entry {text!r}: {op} needs a number; strings allow only == and !="
        )
    return MetadataFilter(field_name, op, value)


def check_caption_key(key: str) -> str:
    """Validate ``data.caption_key`` (an entry extension or ``json:FIELD``); return it."""
    if key.startswith(JSON_PREFIX):
        if re.fullmatch(_FIELD, key[len(JSON_PREFIX) :]) is None:
            raise ValueError(
                f"data.caption_key {key!r}: after 'json:' name a field of the json entry, "
                "e.g. json:caption or json:meta.alt"
            )
    elif _ENTRY_RE.match(key) is None or key == JSON_ENTRY:
        raise ValueError(
            f"data.caption_key {key!r}: use an entry extension holding UTF-8 text (txt, "
            "the default) or json:FIELD for a field of the json entry"
        )
    return key
