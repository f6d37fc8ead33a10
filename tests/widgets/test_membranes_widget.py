"""Membrane active-learning widget: a full round in a real viewer, then resume."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from expertloop.widgets.membranes import REGION_LAYER, UNCERTAINTY_LAYER, MembraneWidget

TIMEOUT = 120_000


@pytest.fixture
def em(data_dir):
    d = data_dir / "membranes"
    return {
        "src": np.stack([iio.imread(d / f"isbi_0{i}_image.png") for i in (0, 1)]),
        "src_truth": np.stack([iio.imread(d / f"isbi_0{i}_label.png") for i in (0, 1)]),
        "tgt": iio.imread(d / "vnc_00_raw.png"),
        "tgt_truth": (iio.imread(d / "vnc_00_membranes.png") == 255),
        "val": iio.imread(d / "vnc_08_raw.png"),
        "val_truth": iio.imread(d / "vnc_08_membranes.png"),
    }


SMALL = {"window": 16, "channels": 4, "source_epochs": 1, "target_epochs": 1, "round_epochs": 1,
         "max_windows": 3}


def _open(w, qtbot):
    """Open / create the project (in the runner's worker) and wait: the project, or None."""
    if w.open_project() is not None:
        qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    return w.project


def _small(w):
    for name, value in SMALL.items():
        w.params[name].value = value


def test_full_round_in_viewer_and_resume(make_napari_viewer, qtbot, em, tmp_path, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(em["src"], name="isbi")
    viewer.add_labels(em["src_truth"].astype(np.uint8), name="isbi truth")
    viewer.add_image(em["tgt"], name="vnc")
    few = np.zeros(em["tgt"].shape, np.uint8)
    few[:24, :24] = np.where(em["tgt_truth"][:24, :24], 1, 2)
    viewer.add_labels(few, name="vnc few labels")
    viewer.add_image(em["val"], name="vnc val")
    viewer.add_labels(em["val_truth"], name="vnc val truth")
    w = MembraneWidget(viewer)
    viewer.window.add_dock_widget(w)
    _small(w)

    w.propose()  # before any project: a clear message, nothing runs
    assert any("open or create a project" in str(n.message) for n in notifications)

    w.folder.value = tmp_path / "proj"
    w.target_image.value, w.target_labels.value = "vnc", "vnc few labels"
    w.val_image.value, w.val_truth.value, w.val_value.value = "vnc val", "vnc val truth", 255
    assert _open(w, qtbot) is not None
    assert "membranes target 0 labels" in viewer.layers

    w.source_image.value, w.source_labels.value, w.source_value.value = "isbi", "isbi truth", 0  # ISBI: 0 = membrane
    w.train_source()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.project.has_source, w.runner.status
    w.transfer()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.project.round == 0, w.runner.status
    w.propose()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    reg = w.project.proposal
    assert reg is not None, w.runner.status
    shapes = viewer.layers[REGION_LAYER]
    assert shapes.shape_type[0] == "polygon"
    outline = np.concatenate(shapes.data)
    ys, xs = np.nonzero(reg.mask(em["tgt"].shape))
    assert outline[:, 0].min() == ys.min() and outline[:, 0].max() == ys.max() + 1
    assert outline[:, 1].min() == xs.min() and outline[:, 1].max() == xs.max() + 1
    unc = viewer.layers[UNCERTAINTY_LAYER].data
    assert unc.shape == em["tgt"].shape and 0 <= unc.min() and unc.max() <= 0.5
    # the uncertainty overlay is transparent where the net is sure (the EM stays readable)
    cmap = viewer.layers[UNCERTAINTY_LAYER].colormap
    assert cmap.map([0.0])[0][3] == 0 and cmap.map([1.0])[0][3] == 1
    # the guidance stays visible after Propose, on its own line beside the F-score one
    assert "correct the labels inside the yellow region" in w.guidance.value
    assert "'membranes target 0 labels'" in w.guidance.value
    assert w.guidance.native.isVisibleTo(w.native)
    assert "round 0" in w.info.value and "yellow" not in w.info.value

    # the region is pre-filled with the prediction; the "expert" corrects it to the truth
    labels = viewer.layers["membranes target 0 labels"]
    mask = reg.mask(em["tgt"].shape)
    assert (labels.data[mask] > 0).all()
    corrected = labels.data.copy()
    corrected[mask] = np.where(em["tgt_truth"][mask], 1, 2)
    labels.data = corrected
    w.accept()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.project.round == 1, w.runner.status
    assert REGION_LAYER not in viewer.layers
    assert "F-score" in w.info.value and "Propose region" in w.guidance.value
    xs_plot, ys_plot = w.plot.series["validation F-score"]
    assert xs_plot == [0.0, 1.0] and all(0 <= y <= 1 for y in ys_plot)
    saved = w.project.target_labels[0]
    assert np.array_equal(saved[mask], corrected[mask])

    # a fresh widget on the same folder resumes: labels, round and scores come back
    w.propose()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    pending = w.project.proposal
    viewer2 = make_napari_viewer()
    w2 = MembraneWidget(viewer2)
    w2.folder.value = tmp_path / "proj"
    assert _open(w2, qtbot) is not None
    assert w2.project.round == 1 and w2.plot.series["validation F-score"][0] == [0.0, 1.0]
    assert {name: w2.params[name].value for name in SMALL} == SMALL  # the project's, not the defaults
    assert np.array_equal(viewer2.layers["membranes target 0 labels"].data[mask], corrected[mask])
    assert REGION_LAYER in viewer2.layers and w2.project.proposal.cells == pending.cells


def test_bad_inputs_become_notifications(make_napari_viewer, qtbot, em, tmp_path, notifications):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((10, 10), np.uint8), name="tiny")
    w = MembraneWidget(viewer)
    _small(w)
    w.folder.value = tmp_path / "p"
    _open(w, qtbot)
    assert any("choose the target images" in str(n.message) for n in notifications)
    w.target_image.value = "tiny"
    assert _open(w, qtbot) is None
    assert any("smaller than the 16x16 window" in str(n.message) for n in notifications)
    viewer.add_image(em["tgt"], name="vnc")
    w.target_image.value = "vnc"
    assert _open(w, qtbot) is not None
    assert w.transfer() is None and not w.runner.running  # refused at once, nothing started
    assert any("no source model yet" in str(n.message) for n in notifications)
    viewer.add_image(em["src"][0], name="isbi")
    viewer.add_labels(np.ones((96, 96), np.uint8), name="one class")
    w.source_image.value, w.source_labels.value, w.source_value.value = "isbi", "one class", 1
    assert w.train_source() is None
    assert any("one class only" in str(n.message) for n in notifications)
    w.accept()
    assert any("propose a region first" in str(n.message) for n in notifications)


def test_saved_source_model_is_loaded(make_napari_viewer, qtbot, em, tmp_path, notifications, record_threads,
                                      monkeypatch):
    """A source model (.pt, or a bioimage.io package from export_membrane_model)
    is read and copied into the project in the runner's worker, with progress;
    without the bioimageio extra a notification says what to install."""
    import sys

    from expertloop.engine.membranes import NetConfig, build_net, save_net
    from expertloop.widgets import membranes

    reads = record_threads(membranes, "read_source_model")
    viewer = make_napari_viewer()
    viewer.add_image(em["tgt"], name="vnc")
    w = MembraneWidget(viewer)
    _small(w)
    w.folder.value = tmp_path / "p"
    w.target_image.value = "vnc"
    assert _open(w, qtbot) is not None
    save_net(tmp_path / "wide", build_net(NetConfig(window=16, channels=(8, 8, 8), hidden=(16, 16))), kind="source")
    w.source_model.value = tmp_path / "wide.pt"
    assert w.train_source() is not None and w.runner.running  # a job, not a GUI-thread read
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert any("differs from the project" in str(n.message) for n in notifications)
    assert not w.project.has_source
    ok = build_net(NetConfig(window=16, channels=(4, 8, 8), hidden=(16, 16)), seed=2)
    save_net(tmp_path / "ok", ok, kind="source")
    w.source_model.value = tmp_path / "ok.pt"
    w.train_source()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.project.has_source and reads == [False, False]
    assert any("source model ok.pt loaded" in str(n.message) for n in notifications)
    # a bioimage.io package as the source model
    w.source_model.value = tmp_path / "pkg.zip"
    with monkeypatch.context() as m:  # no bioimageio extra installed
        m.setitem(sys.modules, "bioimageio.spec", None)
        w.train_source()
        qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert any("needs the bioimageio extra" in str(n.message) and "pip install" in str(n.message)
               for n in notifications)
    pytest.importorskip("bioimageio.spec")
    from expertloop.engine.jobs import run_job
    from expertloop.engine.membranes import load_net, predict_dense
    from expertloop.engine.membranes.bioimageio import export_membrane_model

    other = build_net(NetConfig(window=16, channels=(4, 8, 8), hidden=(16, 16)), seed=5)
    export_membrane_model(other, tmp_path / "pkg.zip", em["tgt"][:32, :32].astype(np.float32))
    w.train_source()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.runner.last_error is None, w.runner.last_error
    assert any("source model pkg.zip loaded" in str(n.message) for n in notifications)
    src, _ = load_net(tmp_path / "p" / "models" / "source")  # the project's source is the package's network
    crop = em["tgt"][:40, :40].astype(np.float32)
    np.testing.assert_allclose(run_job(predict_dense(src, crop)), run_job(predict_dense(other, crop)), atol=1e-5)


def test_reopened_project_fills_controls_and_edits_write_back(make_napari_viewer, qtbot, em, tmp_path,
                                                               notifications, record_threads):
    """Create with λ 0.3 and window 16, close napari, reopen: the controls show
    the project's values; an edit changes the config in force (saved)."""
    from expertloop.engine.membranes import MembraneConfig, MembraneProject

    default = MembraneConfig()
    creates, opens = record_threads(MembraneProject, "create"), record_threads(MembraneProject, "open")
    viewer = make_napari_viewer()
    viewer.add_image(em["tgt"], name="vnc")
    w = MembraneWidget(viewer)
    assert w.params["lam"].value == default.lam and w.params["window"].value == default.window
    w.params["lam"].value, w.params["window"].value, w.params["round_epochs"].value = 0.3, 16, 2
    w.folder.value = tmp_path / "p"
    w.target_image.value = "vnc"
    assert _open(w, qtbot) is not None
    viewer.close()

    viewer2 = make_napari_viewer()
    w2 = MembraneWidget(viewer2)
    assert w2.params["lam"].value == default.lam  # nothing open yet: the defaults
    w2.folder.value = tmp_path / "p"
    assert _open(w2, qtbot) is not None
    assert w2.params["lam"].value == 0.3 and w2.params["window"].value == 16
    assert w2.params["round_epochs"].value == 2
    assert creates == [False] and opens == [False]  # project files written and read off the GUI thread
    assert not w2.params["window"].enabled and not w2.params["channels"].enabled  # fixed at creation
    assert w2.params["lam"].enabled

    w2.params["lam"].value = 0.55  # an edit is the config in force, saved in the project
    assert w2.project.config.lam == 0.55
    assert MembraneProject.open(tmp_path / "p").config.lam == 0.55
    journal = (tmp_path / "p" / "journal.jsonl").read_text()
    assert '"config changed"' in journal and '"widget"' in journal

    w2.params["window"].value = 32  # a fixed parameter: refused, the control shows the project's again
    assert any("window is fixed" in str(n.message) for n in notifications)
    assert w2.params["window"].value == 16 and w2.project.config.window == 16

    w2.folder.value = tmp_path / "other"  # another folder: the project closes, fixed controls unlock
    assert w2.project is None and w2.params["window"].enabled
