"""Run every ```python example of docs/*.md, so the documentation stays true.

Each block runs in a fresh namespace, in a temporary working directory.
A block whose first line is ``# needs: viewer`` gets a napari ``viewer``
(from napari's ``make_napari_viewer`` fixture), as in the napari console.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
NEEDS_VIEWER = "# needs: viewer"


def _collect() -> list:
    params = []
    for md in sorted(DOCS.glob("*.md")):
        text = md.read_text(encoding="utf-8")
        for i, match in enumerate(FENCE.finditer(text), 1):
            code = match.group(1)
            line = text.count("\n", 0, match.start(1)) + 1
            params.append(pytest.param(md.name, line, code, id=f"{md.name}:{i}"))
    return params


EXAMPLES = _collect()


def test_docs_have_examples():
    assert DOCS.is_dir(), f"{DOCS} is missing"
    assert EXAMPLES, "no ```python blocks found in docs/*.md"


@pytest.mark.parametrize(("doc", "line", "code"), EXAMPLES)
def test_doc_example(doc, line, code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    namespace: dict = {"__name__": "__docs_example__"}
    first = code.lstrip().splitlines()[0].strip() if code.strip() else ""
    if first == NEEDS_VIEWER:
        make_napari_viewer = request.getfixturevalue("make_napari_viewer")
        namespace["viewer"] = make_napari_viewer()
    elif re.search(r"\bviewer\.", code):
        pytest.fail(f"{doc}:{line}: uses `viewer` but lacks '{NEEDS_VIEWER}' on its first line")
    # pad so that tracebacks point at the right line of the Markdown file
    compiled = compile("\n" * (line - 1) + code, str(DOCS / doc), "exec")
    try:
        exec(compiled, namespace)
    finally:
        # an example may set environment variables; do not leak them
        os.environ.clear()
        os.environ.update(env)


ENGINE_LEVEL = "# engine level"


@pytest.mark.parametrize("workflow", ["membranes", "spots", "blood", "flim", "semiauto"])
def test_workflow_examples_use_the_public_api(workflow):
    """Issue 13: a workflow page's examples import ``expertloop.<workflow>``,
    not its engine; a block that shows an engine helper says so on its first
    line (``# engine level: ...``)."""
    text = (DOCS / f"{workflow}.md").read_text(encoding="utf-8")
    blocks = [m.group(1) for m in FENCE.finditer(text)]
    public = [b for b in blocks if re.search(rf"^from expertloop\.{workflow} import", b, re.MULTILINE)]
    assert public, f"{workflow}.md has no example of expertloop.{workflow}"
    for b in blocks:
        engine = re.search(rf"^from expertloop\.engine\.(?:{workflow}\b|jobs\b)", b, re.MULTILINE)
        if engine:
            assert b.lstrip().startswith(ENGINE_LEVEL), (
                f"{workflow}.md: an example imports {engine.group(0)!r} without '{ENGINE_LEVEL}' on its "
                f"first line:\n{b[:300]}")
