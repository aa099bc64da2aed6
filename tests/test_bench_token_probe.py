"""bench/token_probe.py: which tokens are probed, and the label each gets."""

from __future__ import annotations

import numpy as np

from bench import token_probe


def _sample(a: tuple[str, str, float, float], b: tuple[str, str, float, float]) -> dict:
    return {"objects": [{"colour": c, "shape": s, "center": [x, y]} for c, s, x, y in (a, b)]}


def test_each_object_gets_its_own_tokens_and_side() -> None:
    words = ["[CLS]", "a", "blue", "square", "right", "of", "a", "red", "circle", "[SEP]"]
    emb = np.arange(len(words), dtype=np.float16)[:, None] * np.ones((1, 3), np.float16)
    # the blue square is on the right, the red circle on the left
    rows = token_probe.examples(
        _sample(("blue", "square", 0.75, 0.5), ("red", "circle", 0.25, 0.52)), words, emb
    )
    assert [(r[0][0], r[1][0], r[2]) for r in rows] == [(2, 3, 0), (7, 8, 1)]
    # above/below: the axis is the vertical one
    rows = token_probe.examples(
        _sample(("blue", "square", 0.5, 0.2), ("red", "circle", 0.45, 0.8)), words, emb
    )
    assert [r[2] for r in rows] == [1, 0]


def test_samples_that_are_not_two_object_scenes_or_lose_words_are_skipped() -> None:
    words = ["[CLS]", "a", "blue", "square", "[SEP]"]
    emb = np.zeros((len(words), 3), np.float16)
    one = {"objects": [{"colour": "blue", "shape": "square", "center": [0.5, 0.5]}]}
    assert token_probe.examples(one, words, emb) == []
    cut = _sample(("blue", "square", 0.2, 0.5), ("red", "circle", 0.8, 0.5))  # "red" cut off
    assert token_probe.examples(cut, words, emb) == []


def test_word_pieces_and_shapes_after_their_colour() -> None:
    words = ["a", "tri", "##angle", "and", "a", "green", "tri", "##angle"]
    assert token_probe.word_index(words, "triangle") == 1
    assert token_probe.word_index(words, "triangle", 6) == 6
    assert token_probe.word_index(words, "circle") is None
    assert token_probe.word_index(["a", "a"], "and") is None  # "a" is too short to be a piece


def test_a_probe_reads_a_linearly_separable_label() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    assert token_probe.probe(x, y, "linear") > 0.9
    assert token_probe.probe(x, np.zeros_like(y), "mlp") == 1.0
