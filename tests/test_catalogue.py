"""The documentation's promises that tests can hold it to.

The catalogue of bad inputs (docs/BAD_INPUT.md) names a test for every row; each must
exist. Every relative link in README.md and docs/*.md must point to a file that exists.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

BEGIN, END = "<!-- bad-input:begin -->", "<!-- bad-input:end -->"
CATALOGUE = REPO / "docs" / "BAD_INPUT.md"


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _catalogue_rows() -> list[str]:
    holders = [page for page in _pages() if BEGIN in page.read_text()]
    assert holders == [CATALOGUE], (
        f"the bad-input catalogue ({BEGIN} ... {END}) must be in {CATALOGUE.relative_to(REPO)} "
        f"and nowhere else; found in {[str(p.relative_to(REPO)) for p in holders]}")
    text = CATALOGUE.read_text()
    start = text.index(BEGIN) + len(BEGIN)
    end = text.index(END, start)
    table = text[start:end].strip().splitlines()
    assert len(table) >= 2 and table[1].startswith("| ---"), "the catalogue has no table"
    return [line for line in table[2:] if line.startswith("|")]


def _test_names(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_catalogue_row_names_tests_that_exist():
    rows = _catalogue_rows()
    assert len(rows) >= 15
    for row in rows:
        named = re.findall(r"`(tests/\w+\.py)::(\w+)`", row.rsplit("|", 2)[-2])
        assert named, f"no test named in: {row}"
        for path, name in named:
            assert (REPO / path).is_file(), f"{path} does not exist (named in: {row})"
            assert name in _test_names(path), f"{path}::{name} does not exist"


# [text](target) and ![alt](target); the target stops at whitespace or ")".
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _relative_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)  # code blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    return [target for target in _LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I)]  # http:, mailto:, ...


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        repeats = seen.get(anchor, 0)  # a repeated heading gets -1, -2, ...
        seen[anchor] = repeats + 1
        anchors.add(f"{anchor}-{repeats}" if repeats else anchor)
    return anchors


def test_every_relative_link_in_the_docs_points_to_a_file_that_exists():
    checked = 0
    for page in _pages():
        for target in _relative_links(page):
            path, _, fragment = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: {target}"
            assert linked.exists(), f"{where} points to a file that does not exist"
            assert REPO in linked.parents or linked == REPO, f"{where} leaves the repository"
            if fragment and linked.suffix == ".md":
                assert fragment in _anchors(linked), f"{where}: no heading gives #{fragment}"
            checked += 1
    assert checked >= 10, f"only {checked} relative links found: is the link pattern broken?"
