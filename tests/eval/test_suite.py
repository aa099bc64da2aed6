"""Prompt suites: CSV validation, the shipped example, and the side-by-side HTML gallery."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from imagen_ray.cascade import Cascade
from imagen_ray.eval.suite import SuitePrompt, cascade_names, read_suite, run_suite
from tests.cascade.test_cascade import FakeEncoder, cascade_config, perturb

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompt_suite.csv"


def test_example_suite_has_a_dozen_prompts_in_several_categories() -> None:
    prompts = read_suite(EXAMPLE)
    assert len(prompts) >= 12
    assert len({p.category for p in prompts}) >= 3
    assert any("," in p.text for p in prompts)  # quoted CSV fields survive


def test_suite_validation_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,category\na cat,Animals\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) Prompts, Category.*'prompt'"):
        read_suite(bad)
    bad.write_text("Prompts,Notes\na cat,x\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) Category"):
        read_suite(bad)
    bad.write_text("Prompts,Category\na cat,Animals\n,\n,Animals\n")
    with pytest.raises(ValueError, match="line 4 has no 'Prompts'"):
        read_suite(bad)
    ok = tmp_path / "ok.csv"  # extra columns (DrawBench has some) and blank rows are fine
    ok.write_text("Prompts,Category,Upsampled\na cat,Animals,x\n,,\na dog,,y\n")
    assert read_suite(ok) == [
        SuitePrompt("a cat", "Animals"),
        SuitePrompt("a dog", "uncategorised"),
    ]
    with pytest.raises(FileNotFoundError, match="--suite"):
        read_suite(tmp_path / "nope.csv")


def test_cascade_names_are_unique() -> None:
    assert cascade_names(["runs/a", "other/a", "runs/b"]) == ["a", "a-2", "b"]


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.th: list[str] = []
        self.img: list[str] = []
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        self._in_th = tag == "th"
        if tag == "img":
            self.img.append(dict(attrs)["src"])

    def handle_data(self, data):
        if self._in_th:
            self.th.append(data)

    def handle_endtag(self, tag):
        self._in_th = False


def test_gallery_puts_cascades_side_by_side_with_the_same_seeds(tmp_path: Path) -> None:
    a = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=1).eval()
    b = Cascade.from_config(cascade_config(), encoder=FakeEncoder(), seed=2).eval()
    perturb(a, 1)
    perturb(b, 2)
    prompts = [
        SuitePrompt("a red circle", "Colours"),
        SuitePrompt("two <b>blue</b> squares & more", "Counting"),
        SuitePrompt("a green cross", "Colours"),
    ]
    fast = {"base": {"steps": 1}, "sr": {"steps": 1}, "sr1024": {"steps": 1}}
    res = run_suite(
        [("ckpt-a", a), ("ckpt-b", b)],
        prompts,
        tmp_path,
        n=2,
        seed=5,
        sampling=fast,
        progress=False,
    )
    assert res["cascades"] == ["ckpt-a", "ckpt-b"]
    assert res["prompts"][1]["seeds"] == [7, 8]
    assert json.loads((tmp_path / "results.json").read_text()) == res

    page = (tmp_path / "index.html").read_text()
    assert "<b>blue</b>" not in page and "two &lt;b&gt;blue&lt;/b&gt; squares &amp; more" in page
    # grouped by category: both Colours prompts come before the Counting section
    assert page.index("a red circle") < page.index("a green cross") < page.index("Counting</h2>")
    parsed = _Collect()
    parsed.feed(page)
    assert parsed.th.count("ckpt-a") == 2 and parsed.th.count("ckpt-b") == 2  # one per table
    assert len(parsed.img) == 3 * 2 * 2
    for src in parsed.img:
        assert (tmp_path / unquote(src)).is_file()
    row = res["prompts"][0]["files"]
    assert [Path(f).name for f in row["ckpt-a"]] == ["0000-0.png", "0000-1.png"]
    # same seed, different weights -> different pixels; image 0 vs 1 differ too
    pa = [np.asarray(Image.open(tmp_path / f), dtype=float) for f in row["ckpt-a"]]
    pb = [np.asarray(Image.open(tmp_path / f), dtype=float) for f in row["ckpt-b"]]
    assert pa[0].shape == (32, 32, 3)
    assert np.abs(pa[0] - pb[0]).mean() > 1 and np.abs(pa[0] - pa[1]).mean() > 1
    assert re.search(r'<a href="#cat-\d+">Colours \(2\)</a>', page)
