"""The grammar of data.caption_key and data.filters (imagen_ray.config.grammar): parsing,
evaluation on a json entry, and validation at config load."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imagen_ray.config import DataConfig
from imagen_ray.config.grammar import MetadataFilter, check_caption_key, lookup, parse_filter


@pytest.mark.parametrize(
    ("text", "expected", "reason"),
    [
        ("punsafe < 0.1", MetadataFilter("punsafe", "<", 0.1), "filter:punsafe<0.1"),
        ("aesthetic>=5", MetadataFilter("aesthetic", ">=", 5.0), "filter:aesthetic>=5"),
        ("  width >= 256 ", MetadataFilter("width", ">=", 256.0), "filter:width>=256"),
        ("status == success", MetadataFilter("status", "==", "success"), "filter:status==success"),
        ("lang != 'en'", MetadataFilter("lang", "!=", "en"), "filter:lang!=en"),
        ("m.score > -1e-3", MetadataFilter("m.score", ">", -0.001), "filter:m.score>-0.001"),
    ],
)
def test_parse_filter(text, expected, reason):
    f = parse_filter(text)
    assert f == expected and f.reason == reason


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("punsafe", "is not a filter"),
        ("punsafe < ", "is not a filter"),
        ("punsafe =< 0.1", "is not a filter"),
        ("__import__('os') < 1", "is not a filter"),
        ("width >= 2**8", "is not valid"),
        ("lang < 'en'", "strings allow only == and !="),
        ("1x < 3", "is not a filter"),
    ],
)
def test_bad_filters_are_refused_at_config_load(text, match):
    with pytest.raises(ValidationError, match=match) as e:
        DataConfig(filters=("width >= 8", text))
    assert repr(text) in str(e.value)  # the error names the bad filter


@pytest.mark.parametrize("key", ["json", "json:", "json:a..b", "a b", ""])
def test_bad_caption_keys_are_refused(key):
    with pytest.raises(ValidationError, match="caption_key"):
        DataConfig(caption_key=key)


@pytest.mark.parametrize("key", ["txt", "caption", "json:caption", "json:meta.alt"])
def test_good_caption_keys_are_kept(key):
    assert check_caption_key(key) == key
    assert DataConfig(caption_key=key).caption_key == key


def test_lookup_walks_nested_objects():
    meta = {"a": {"b": 3}, "c": None}
    assert lookup(meta, "a.b") == 3
    assert lookup(meta, "a.x") is None
    assert lookup(meta, "a.b.c") is None  # 3 is not an object
    assert lookup(meta, "c") is None


@pytest.mark.parametrize(
    ("text", "meta", "holds"),
    [
        ("punsafe < 0.1", {"punsafe": 0.05}, True),
        ("punsafe < 0.1", {"punsafe": 0.5}, False),
        ("punsafe < 0.1", {}, False),  # missing
        ("punsafe < 0.1", {"punsafe": None}, False),  # null
        ("punsafe < 0.1", {"punsafe": "0.01"}, False),  # a string is not a number
        ("punsafe < 0.1", {"punsafe": True}, False),  # nor is a bool
        ("punsafe < 0.1", {"punsafe": float("nan")}, False),
        ("m.w >= 256", {"m": {"w": 256}}, True),
        ("status == success", {"status": "success"}, True),
        ("status != success", {"status": "success"}, False),
        ("status == success", {"status": 1}, False),
    ],
)
def test_filter_holds(text, meta, holds):
    assert parse_filter(text).holds(meta) is holds
