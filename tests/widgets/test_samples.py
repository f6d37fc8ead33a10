"""Issue 16: one sample per workflow, each opening in a real viewer as the
layers its widget starts from (docs/data.md)."""

import numpy as np
import pytest

PLUGIN = "napari-expertloop"

#: key -> (layer name, layer type, shape) of every layer the sample adds
EXPECTED = {
    "mri": [("colin27_t1_brain", "image", (181, 217, 181))],
    "nuclei": [("dsb2018_nuclei", "image", (512, 512))],
    "spots": [("colin27 simulated spots", "image", (181, 217, 181)),
              ("planted spots (truth)", "points", (150, 3))],
    "membranes": [("EM source", "image", (256, 256)), ("EM source truth", "labels", (256, 256)),
                  ("EM target", "image", (2, 256, 256)), ("EM validation", "image", (256, 256)),
                  ("EM validation truth", "labels", (256, 256))],
    "flim": [("dsb2018_nuclei", "image", (512, 512)), ("nuclei markers", "labels", (512, 512))],
    "blood": [("BloodImage_00005", "image", (480, 640, 3)), ("BloodImage_00005 boxes", "shapes", None)],
    "semiauto": [("BCCD cell crops", "image", (42, 32, 32, 3))],
}


def test_every_manifest_sample_is_checked_here():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    keys = {s.key for s in pm.get_manifest(PLUGIN).contributions.sample_data}
    assert keys == set(EXPECTED)
    from expertloop.cli import build_parser

    gui = build_parser()._subparsers._group_actions[0].choices["gui"]
    (sample,) = [a for a in gui._actions if a.dest == "sample"]
    assert set(sample.choices) == keys  # expertloop gui --sample KEY


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_sample_opens_in_viewer(make_napari_viewer, key):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, key)
    got = [(ly.name, ly._type_string, None if ly._type_string == "shapes" else np.shape(ly.data))
           for ly in layers]
    assert got == EXPECTED[key]
    for ly in layers:
        assert np.asarray(ly.data).size > 0
    if key == "spots":
        img, pts = layers
        np.testing.assert_allclose(pts.scale, img.scale)
        np.testing.assert_allclose(pts.translate, img.translate)
        # each planted centre is darker than the tissue around it
        c = np.round(pts.data).astype(int)
        vol = np.asarray(img.data)
        centre = vol[tuple(c.T)]
        ring = np.mean([vol[tuple((c + d).T)] for d in np.array([[0, 4, 0], [0, -4, 0], [0, 0, 4], [0, 0, -4]])], 0)
        assert np.mean(centre < ring) > 0.8
        assert set(pts.features) == {"difficulty"}
    if key == "membranes":
        for ly in layers:
            if ly._type_string == "labels":  # workflow convention: 1 membrane, 2 not
                assert set(np.unique(ly.data)) == {1, 2}
                assert 0.15 < np.mean(np.asarray(ly.data) == 1) < 0.4
    if key == "flim":
        assert set(np.unique(layers[1].data)) == {0, 1, 2}
    if key == "blood":
        boxes = layers[1]
        assert len(boxes.data) > 10
        assert set(boxes.features["type"]) == {"RBC", "WBC", "Platelets"}


def test_membranes_sample_fills_the_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "membranes")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Membrane active learning")
    assert "EM source" in widget.source_image.choices
    assert "EM source truth" in widget.source_labels.choices
    assert "EM target" in widget.target_image.choices
    assert widget.source_value.value == 1  # the sample's membrane value is the default



def test_semiauto_sample_runs_an_iteration_in_the_widget(make_napari_viewer, qtbot, tmp_path):
    """The sample's stack, class names and initial labels go straight into the
    widget's controls; one iteration fills the review queue."""
    from expertloop.widgets.semiauto import SemiAutoWidget

    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample(PLUGIN, "semiauto")
    assert layer.rgb
    meta = layer.metadata
    w = SemiAutoWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.stack.reset_choices()
    w.stack.value = layer
    w.class_names.value = ", ".join(meta["class_names"])
    w.initial.value = meta["initial_labels"]
    w.project.value = str(tmp_path / "proj")
    assert w.load() is not None  # reads the stack in the runner's worker
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    loop = w.loop
    assert loop is not None and len(loop.collection) == 42 and loop.class_names == ["RBC", "WBC", "Platelets"]
    assert int((loop.labels >= 0).sum()) == 12  # 4 per class, from the shipped CSV
    assert np.bincount(loop.labels[loop.labels >= 0], minlength=3).tolist() == [4, 4, 4]
    w.run_iteration()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    p = loop.proposal
    assert p is not None and len(p.batch) == 30  # every unlabelled crop predicted
    assert len(p.accepted) + len(p.queued) + len(p.deferred) == 30
    assert loop.queue is not None and len(loop.queue) == len(p.queued) > 0
