"""README.md and docs/*.md: the generated config reference is current, local links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from imagen_ray.cli import main
from imagen_ray.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# [text](target) and ![alt](target); the anchor after '#' is ignored.
LINK = re.compile(r"\]\(([^)#\s]*)(?:#[^)]*)?\)")


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


def test_readme_and_docs_local_links_and_images_exist() -> None:
    """Every relative link or image in README.md and docs/*.md names an existing path."""
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
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
