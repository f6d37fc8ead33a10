"""The 'Start here' dock lists every workflow, opens its docks and links its
docs page; a sample opens its own workflow (issue 19 item 7)."""

from pathlib import Path

import npe2
import pytest

from expertloop.widgets.start import (
    DOCS_URL,
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
    assert f'href="{DOCS_URL}{wf.docs}"' in text
