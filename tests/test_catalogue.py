"""The README's catalogue of bad inputs names a test for every row; each must exist."""

from __future__ import annotations

import ast
import re

from conftest import REPO

BEGIN, END = "<!-- bad-input:begin -->", "<!-- bad-input:end -->"


def _catalogue_rows() -> list[str]:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)]
    return [line for line in table.strip().splitlines()[2:] if line.startswith("|")]


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
            assert name in _test_names(path), f"{path}::{name} does not exist"
