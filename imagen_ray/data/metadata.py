"""Sample metadata: where the caption comes from (``data.caption_key``) and ``data.filters``,
applied to a sample's entries.

Web-scale sets carry a ``json`` entry per sample (img2dataset writes ``url``, ``caption``,
``width``, ``height``, ``status`` and any ``--save_additional_columns`` such as LAION's
``punsafe`` or ``aesthetic``). ``data.caption_key`` may take the caption from it and
``data.filters`` test its fields; their grammar (what the config accepts, and the parsed
:class:`~imagen_ray.config.grammar.MetadataFilter`) is :mod:`imagen_ray.config.grammar`.
A sample whose json entry is needed but missing or not an object is skipped as ``no_json``
or ``bad_json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from imagen_ray.config.grammar import JSON_ENTRY, JSON_PREFIX, MetadataFilter, lookup

NO_JSON = "no_json"  # caption_key or filters need the json entry and the sample has none
BAD_JSON = "bad_json"  # the json entry is not a JSON object


def parse_json_entry(raw: bytes | None) -> dict[str, Any] | str:
    """The json entry as a dict, or the skip reason ``no_json`` / ``bad_json``."""
    if raw is None:
        return NO_JSON
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return BAD_JSON
    return meta if isinstance(meta, dict) else BAD_JSON


def caption_from_json(meta: Mapping[str, Any], caption_key: str) -> str | None:
    """The caption at ``json:FIELD`` (numbers become text), or None if absent or null."""
    value = lookup(meta, caption_key[len(JSON_PREFIX) :])
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


def sample_caption(sample: Mapping[str, Any], caption_key: str) -> str | None:
    """A raw tar sample's caption under ``data.caption_key`` (an entry name, or
    ``json:FIELD`` of its ``json`` entry), stripped; None when it has none."""
    if caption_key.startswith(JSON_PREFIX):
        meta = parse_json_entry(sample.get(JSON_ENTRY))
        text = None if isinstance(meta, str) else caption_from_json(meta, caption_key)
    else:
        raw = sample.get(caption_key)
        text = None if raw is None else raw.decode("utf-8", errors="replace")
    return None if text is None else text.strip()


def first_failing(filters: tuple[MetadataFilter, ...], meta: Mapping[str, Any]) -> str | None:
    """The reason of the first filter ``meta`` fails, or None when all hold."""
    for f in filters:
        if not f.holds(meta):
            return f.reason
    return None
