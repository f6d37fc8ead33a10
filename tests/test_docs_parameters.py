"""The parameter tables in the docs show the defaults the config dataclasses hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from expertloop.engine.config import parameters
from expertloop.engine.membranes import MembraneConfig

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("doc, config", [("membranes.md", MembraneConfig)])
def test_parameter_table_defaults_match_the_config(doc, config):
    defaults = {i.name: i.default for i in parameters(config) if i.default is not None}
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", (DOCS / doc).read_text(encoding="utf-8"), re.M)
    checked = [(name, cell.strip()) for name, cell in rows if name in defaults]
    assert len(checked) >= 6, rows
    for name, cell in checked:
        assert cell == str(defaults[name]), f"{doc}: `{name}` shows {cell}, the config {defaults[name]}"
