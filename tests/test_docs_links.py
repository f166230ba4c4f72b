"""Every link between the README and docs/ leads somewhere: the file exists, and a `#section`
names a heading of it, as GitHub turns headings into anchors. A renamed heading otherwise
leaves its links dead without a word (two links to benchmarks.md sections were, once)."""

from __future__ import annotations

import functools
import itertools
import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_PARSER = MarkdownIt("commonmark").enable("table")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading's text: lower case, punctuation dropped (letters, digits,
    `_` and `-` kept), each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache  # a page is linked to many times (benchmarks.md from every section table)
def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated one gets -1, -2... as on GitHub."""
    tokens = _PARSER.parse(page.read_text())
    found: set[str] = set()
    seen: dict[str, int] = {}
    for opening, inline in itertools.pairwise(tokens):
        if opening.type != "heading_open":
            continue
        text = "".join(child.content for child in inline.children or [])
        anchor = github_anchor(text)
        repeat = seen.get(anchor, 0)
        seen[anchor] = repeat + 1
        found.add(anchor if repeat == 0 else f"{anchor}-{repeat}")
    return found


def links(page: Path) -> list[str]:
    """The targets of a page's links that stay in this repository (no scheme, not mail)."""
    found = []
    for token in _PARSER.parse(page.read_text()):
        for child in token.children or []:
            href = child.attrGet("href") if child.type == "link_open" else None
            if isinstance(href, str) and not re.match(r"[a-z][a-z0-9+.-]*:", href):
                found.append(href)
    return found


def test_anchors_follow_github() -> None:
    assert github_anchor("Segment sweeps over 1,000,000 contacts (item 6)") == (
        "segment-sweeps-over-1000000-contacts-item-6"
    )
    assert github_anchor("`bench.api_floor`: the floor") == "benchapi_floor-the-floor"


def test_the_pages_link_to_each_other() -> None:
    assert len(PAGES) > 10
    assert sum(len(links(page)) for page in PAGES) > 50  # the parser found the links


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_leads_somewhere(page: Path) -> None:
    dead = []
    for href in links(page):
        path, _, fragment = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            dead.append(f"{href}: no file {path} next to {page.name}")
        elif fragment and target.suffix == ".md" and fragment not in anchors(target):
            dead.append(f"{href}: no heading in {target.name} has the anchor #{fragment}")
    assert not dead, f"{page.relative_to(ROOT)} has dead links:\n" + "\n".join(dead)
