"""Every dock fits a 1080-px screen (scrolling beyond that) and keeps its width."""

import npe2

from expertloop.engine.jobs import Progress

PLUGIN = "napari-expertloop"
MAX_DOCK_HEIGHT = 900  # issue 19: every dock fits in 900 px at napari's default font


def _dock_names() -> list[str]:
    pm = npe2.PluginManager.instance()
    pm.discover()
    return [w.display_name for w in pm.get_manifest(PLUGIN).contributions.widgets]


def test_every_dock_fits_in_900_px_and_scrolls_to_the_rest(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    viewer = make_napari_viewer()
    names = _dock_names()
    assert len(names) >= 12
    scrolled = []
    for name in names:
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
        native = getattr(widget, "native", widget)
        assert dock.sizeHint().height() <= MAX_DOCK_HEIGHT, name
        assert native.sizeHint().height() <= MAX_DOCK_HEIGHT, name
        scroll = native.findChild(QScrollArea)
        assert scroll is not None, f"{name}: contents not in a scroll area"
        content = scroll.widget().sizeHint().height()
        if content > MAX_DOCK_HEIGHT:
            scrolled.append(name)
        viewer.window.remove_dock_widget(dock)
    # the tallest docks really are taller than the screen: their rest scrolls
    assert {"Semi-automatic labelling", "Membrane active learning"} <= set(scrolled)


def test_docks_keep_their_width_after_a_job_and_a_table_fill(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    fdock, features = viewer.window.add_plugin_dock_widget(PLUGIN, "Deep features")
    bdock, blood = viewer.window.add_plugin_dock_widget(PLUGIN, "Blood cell detector")
    fdock.parent().tabifyDockWidget(fdock, bdock)  # the docks' QMainWindow
    qtbot.wait(50)
    before = (fdock.width(), bdock.width())

    def job():  # a job whose progress lines are long, the kind that widened docks
        for k in range(3):
            yield Progress(k, 3, "a long progress message about the current step " * 6)
        return "ok"

    features.runner.start(job(), description="a long job description " * 4)
    qtbot.waitUntil(lambda: not features.runner.running, timeout=60_000)
    assert features.runner.status.endswith("done")
    # a wide blood table, as after a detection on many types
    blood.table.value = {f"type score {k}": [0.123456789] * 40 for k in range(14)}
    blood.summary.value = "regions " * 40
    qtbot.wait(100)
    assert (fdock.width(), bdock.width()) == before
