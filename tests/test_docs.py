"""README.md and docs/*.md: the generated config reference is current, local links and their
anchors resolve, the README opens with the quickstart, and no page keeps a run diary."""

from __future__ import annotations

import re
from pathlib import Path

from imagen_ray.cli import main
from imagen_ray.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# [text](target) and ![alt](target); the anchor after '#' is ignored.
LINK = re.compile(r"\]\(([^)#\s]*)(?:#[^)]*)?\)")
# [text](page.md#anchor) and [text](#anchor): the page (empty for this one) and the anchor.
ANCHOR_LINK = re.compile(r"\]\(([^)#\s]*\.md|)#([^)\s]+)\)")
# Figures live in docs/benchmarks.md beside their commands; a date elsewhere is a diary entry
# (one inside a file name, such as inception-2015-12-05.pt, is not).
DATE = re.compile(r"(?<![\w-])20\d\d-[01]\d-[0-3]\d(?![\w.-])")
DIARY = (
    "measured again",
    "latest run",
    "this stop",
    "last session",
    "this week",
    "earlier that day",
)


def _reference_block(text: str) -> str:
    """The lines between the marker lines (the markers also appear quoted in the page)."""
    start = text.index("\n<!-- config-reference:start") + 1
    return text[text.index("\n", start) + 1 : text.index("\n<!-- config-reference:end") + 1]


def test_config_reference_is_current(capsys) -> None:
    """docs/config.md holds the output of `imagen-ray config --reference`, as generated now."""
    assert main(["config", "--reference"]) == 0
    table = capsys.readouterr().out
    assert table == config_reference_markdown()
    assert "| `stage.sampling.guidance_scale` |" in table and "|  |" not in table
    block = _reference_block((DOCS / "config.md").read_text())
    assert block == table, (
        "docs/config.md's config reference is stale: regenerate it with the command in "
        "docs/config.md (the output of `imagen-ray config --reference`)"
    )


def _local_links(md: Path) -> list[str]:
    targets = LINK.findall(md.read_text())
    return [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def test_readme_and_docs_local_links_and_images_exist() -> None:
    """Every relative link or image in README.md and docs/*.md names an existing path."""
    pages = _pages()
    assert len(pages) > 1, "docs/*.md is missing"
    assert "docs/demo-heldout.png" in _local_links(ROOT / "README.md")
    missing = [
        f"{md.relative_to(ROOT)}: {t}"
        for md in pages
        for t in _local_links(md)
        if not (md.parent / t).exists()
    ]
    assert not missing, f"links to missing paths: {missing}"


def test_readme_links_every_doc() -> None:
    """The front page leads to every page under docs/."""
    linked = {(ROOT / t).resolve() for t in _local_links(ROOT / "README.md")}
    unlinked = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", md.read_text(), flags=re.S | re.M)  # no code blocks
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_slug_follows_github() -> None:
    """The anchors GitHub makes for headings with code, punctuation and symbols."""
    assert _slug("Recipes: one GPU, and the paper's on 8 × 80 GB") == (
        "recipes-one-gpu-and-the-papers-on-8--80-gb"
    )
    assert _slug("Storage: local paths and `s3://` / `gs://` URIs") == (
        "storage-local-paths-and-s3--gs-uris"
    )
    assert _slug("Experiment tracking (W&B)") == "experiment-tracking-wb"


def test_links_to_a_heading_name_one_that_exists() -> None:
    """Every `page.md#anchor` and `#anchor` link in README.md and docs/*.md names a heading
    of that page."""
    pages = [*_pages(), ROOT / "bench" / "README.md"]
    broken = []
    for md in pages:
        for page, anchor in ANCHOR_LINK.findall(md.read_text()):
            target = (md.parent / page) if page else md
            if target.exists() and anchor not in _anchors(target):
                broken.append(f"{md.relative_to(ROOT)}: {page}#{anchor}")
    assert not broken, f"links to missing headings: {broken}"


def test_no_run_diary_in_readme_docs_or_configs() -> None:
    """Pages say what is true now: no dated entries outside docs/benchmarks.md (where a
    figure names the run it comes from) and no "measured again" / "latest run" anywhere."""
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in _pages()}
    texts["bench/README.md"] = (ROOT / "bench" / "README.md").read_text()
    for cfg in sorted((ROOT / "configs").rglob("*.yaml")):
        texts[cfg.relative_to(ROOT).as_posix()] = cfg.read_text()
    dated = [
        f"{name}: {d}"
        for name, text in texts.items()
        if name != "docs/benchmarks.md"
        for d in DATE.findall(text)
    ]
    assert not dated, f"dates outside docs/benchmarks.md (a run diary): {dated}"
    phrases = [f"{n}: {p!r}" for n, text in texts.items() for p in DIARY if p in text.lower()]
    assert not phrases, f"run-diary phrases: {phrases}"


def test_readme_opens_with_the_quickstart_and_compares_after_it() -> None:
    """README's first section is the two commands and the demo's picture; the comparison
    with other Imagen projects comes after it."""
    text = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections and sections[0].startswith("Quickstart"), sections
    start, end = text.index("\n## Quickstart"), text.index(f"\n## {sections[1]}")
    for shown in ("make demo", "make test", "](docs/demo-heldout.png)"):
        assert shown in text[start:end], f"the README's quickstart lacks {shown!r}"
    table = text.index("| **imagen-ray** |")
    assert table > end, "the comparison table comes before the end of the quickstart"
    assert "imagen-pytorch" in text[table:] and "DeepFloyd IF" in text[table:]
