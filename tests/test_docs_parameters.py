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


MARK = re.compile(r"<!-- parameters: (\w+)\.(\w+) -->\n(.*?)<!-- /parameters -->\n", re.S)

#: the config dataclasses each workflow page must show (issue 13)
PAGES = {"spots.md": {"SpotConfig", "SpotSelection"}, "blood.md": {"BloodTraining", "BloodModel"},
         "flim.md": {"FlimFit", "FlimRecommend"}, "semiauto.md": {"SemiAutoConfig"}}


@pytest.mark.parametrize("doc", sorted(PAGES))
def test_generated_parameter_tables_are_current(doc):
    """Each workflow page shows its config's parameters in a table made by
    ``engine.config.markdown_table`` (between ``<!-- parameters: workflow.Class -->``
    markers); a changed default, range, flag or help fails here with the
    table to paste."""
    import importlib

    from expertloop.engine.config import markdown_table

    text = (DOCS / doc).read_text(encoding="utf-8")
    found = MARK.findall(text)
    assert {cls for _, cls, _ in found} == PAGES[doc]
    for workflow, cls_name, table in found:
        assert f"{workflow}.md" == doc
        cls = getattr(importlib.import_module(f"expertloop.{workflow}"), cls_name)  # public API names
        expected = markdown_table(cls)
        assert table == expected, f"{doc}: the {cls_name} table is out of date; it should read:\n{expected}"
        names = re.findall(r"^\| `(\w+)` \|", table, re.M)
        assert names == [i.name for i in parameters(cls)]


def test_table_flags_exist_on_the_command_line():
    """Every flag a table names is an option of that workflow's commands."""
    import argparse
    import importlib

    from expertloop.cli import build_parser

    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for doc, classes in PAGES.items():
        workflow = doc[:-3]
        group = next(a for a in top.choices[workflow]._actions if isinstance(a, argparse._SubParsersAction))
        options = {o for p in group.choices.values() for a in p._actions for o in a.option_strings}
        for cls_name in classes:
            cls = getattr(importlib.import_module(f"expertloop.{workflow}"), cls_name)
            for info in parameters(cls):
                if info.param.cli:
                    assert set(info.flags) & options, f"{doc}: {cls_name}.{info.name} {info.flags}"
