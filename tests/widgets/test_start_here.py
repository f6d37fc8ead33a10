"""The 'Start here' dock lists every workflow, opens its docks and links its
docs page; a sample opens its own workflow (issue 19 item 7)."""

from pathlib import Path

import npe2
import pytest

from expertloop import docs_url
from expertloop.widgets.start import (
    WORKFLOWS,
    StartHereWidget,
    docks_for_sample,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_the_table_names_real_docks_pages_and_samples():
    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest("napari-expertloop")
    docks = {w.display_name for w in mf.contributions.widgets}
    samples = {s.key for s in mf.contributions.sample_data}
    for wf in WORKFLOWS:
        assert set(wf.docks) <= docks, wf.title
        assert (DOCS / wf.docs).is_file(), wf.docs
        assert set(wf.samples) <= samples, wf.title
    # every workflow sample opens its workflow
    assert {s for wf in WORKFLOWS for s in wf.samples} == samples
    assert docks_for_sample("membranes") == ["Membrane active learning"]
    assert docks_for_sample(None) == [] and docks_for_sample("unknown") == []


@pytest.mark.parametrize("wf", WORKFLOWS, ids=lambda wf: wf.title)
def test_each_button_opens_its_workflow(make_napari_viewer, qtbot, wf):
    viewer = make_napari_viewer()
    start = StartHereWidget(viewer)
    start.buttons[wf.title].native.click()
    for name in wf.docks:
        assert f"{name} (napari-expertloop)" in viewer.window.dock_widgets
    text = " ".join(w.native.text() for w in start if hasattr(w.native, "text"))
    assert f'href="{docs_url(wf.docs)}"' in text
    assert docs_url(wf.docs).startswith("https://github.com/") and docs_url(wf.docs).endswith(f"/docs/{wf.docs}")


def test_the_docs_links_point_at_the_project_in_pyproject():
    import tomllib

    from expertloop import REPO_URL

    meta = tomllib.loads((DOCS.parent / "pyproject.toml").read_text())
    assert meta["project"]["urls"]["Source"] == REPO_URL
    assert docs_url("spots") == docs_url("spots.md") == f"{REPO_URL}/blob/main/docs/spots.md"
