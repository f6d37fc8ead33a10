"""Spot annotator and spot detector driven in a real napari viewer."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from expertloop.engine.spots import make_phantom, simulate_expert
from expertloop.io import read_image
from expertloop.io.spots_clicks import read_clicks
from expertloop.widgets.spots import SpotAnnotatorWidget, SpotDetectorWidget

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(scope="module")
def phantom():
    vol = read_image(DATA / "colin27_crop.nii.gz")[0].data
    return make_phantom(vol, 15, seed=1, min_distance=5)


def _messages(notes):
    return [str(n.message) for n in notes]


def _annotated_viewer(make_napari_viewer, volume, folder, annotator="expert"):
    """A viewer with the volume as 'scan' and a started Spot annotator."""
    viewer = make_napari_viewer()
    viewer.add_image(volume, name="scan")
    w = SpotAnnotatorWidget(viewer)
    w.folder.value = folder
    w.annotator.value = annotator
    w.image.value = "scan"
    return viewer, w, w.start()


def test_annotator_times_clicks_logs_them_and_restores(make_napari_viewer, qtbot, tmp_path, phantom,
                                                       notifications):
    viewer, w, points = _annotated_viewer(make_napari_viewer, phantom.volume, tmp_path, "ana")
    assert points is viewer.layers["scan spots"] and points.mode == "add"
    (viewer.scene.camera if hasattr(viewer, 'scene') else viewer.camera).zoom = 3.0
    viewer.layers["scan"].contrast_limits = (0.1, 0.9)
    # layer.add is what napari's add mode calls on a mouse click
    for k, c in enumerate([(10, 20, 20), (12, 22, 25), (14, 30, 10)]):
        if k:
            time.sleep(0.2)
        points.add(np.array(c, float))
    f = points.features
    assert len(points.data) == 3 and f["first_in_session"].tolist() == [True, False, False]
    assert (f["latency_s"].iloc[1:] >= 0.2).all() and (f["latency_s"].iloc[1:] < 5).all()
    assert f["zoom"].tolist() == pytest.approx([3.0] * 3)
    assert f["contrast_lo"].iloc[0] == pytest.approx(0.1) and f["slice"].tolist() == [10, 12, 14]
    assert f["annotator"].tolist() == ["ana"] * 3
    log = tmp_path / "scan.spots.jsonl"
    assert w.log.journal.flush(10)  # the journal's writer thread has written them
    assert w.log.path == log and len(read_clicks(log)["z"]) == 3
    # a click outside the image: refused, removed, said
    points.add(np.array([10, 500, 20], float))
    assert w.log.journal.flush(10) and len(points.data) == 3 and len(read_clicks(log)["z"]) == 3
    assert any("outside the image" in m for m in _messages(notifications))
    # deleting a point writes a tombstone
    points.selected_data = {1}
    points.remove_selected()
    assert w.log.journal.flush(10)
    table = read_clicks(log)
    assert len(table["z"]) == 2 and table["z"].tolist() == [10, 14]
    # export, then reopen: a new widget restores the layer with its features
    out = w.export(tmp_path / "t.csv")
    assert out.read_text().count("\n") == 3
    viewer.layers.remove("scan spots")
    w2 = SpotAnnotatorWidget(viewer)
    w2.folder.value = tmp_path
    w2.image.value = "scan"
    restored = w2.start()
    assert np.allclose(restored.data, [[10, 20, 20], [14, 30, 10]])
    assert restored.features["latency_s"].tolist() == pytest.approx(table["latency_s"].tolist())
    assert any("restored 2 clicks" in m for m in _messages(notifications))
    # importing its own export back adds nothing twice (same click ids)
    w2.import_table(out)
    assert w2.log.journal.flush(10)
    assert len(restored.data) == 2 and len(read_clicks(log)["z"]) == 2
    assert any("already here" in m for m in _messages(notifications))
    # another annotator's table joins the layer and the log, with its own ids
    other = tmp_path / "other.csv"
    other.write_text(out.read_text().replace(table["click_id"][0], "bob-1").replace(table["click_id"][1], "bob-2"))
    w2.import_table(other)
    assert w2.log.journal.flush(10)
    assert len(restored.data) == 4 and len(read_clicks(log)["z"]) == 4


def test_annotator_refuses_rgb_and_missing_image(make_napari_viewer, notifications, tmp_path):
    viewer = make_napari_viewer()
    w = SpotAnnotatorWidget(viewer)
    assert w.start() is None
    viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True, name="rgb")
    w.image.value = "rgb"
    w.folder.value = tmp_path
    assert w.start() is None
    assert any("grey-level" in m for m in _messages(notifications))


def test_detector_trains_and_adds_points_with_probability(make_napari_viewer, qtbot, tmp_path, phantom,
                                                          notifications, record_threads):
    viewer, ann, _ = _annotated_viewer(make_napari_viewer, phantom.volume, tmp_path)
    clicks = simulate_expert(phantom, seed=0)
    for z, y, x in zip(clicks["z"], clicks["y"], clicks["x"]):
        ann.click((z, y, x))
    for zyx in ((2, 3, 3), (5, 40.5, 7.5), (9, 20.5, 30.5)):  # off-spot clicks, some match no candidate
        ann.click(zyx)
    n_clicks = len(clicks["z"]) + 3
    assert len(viewer.layers["scan spots"].data) == n_clicks
    det = SpotDetectorWidget(viewer)
    # nothing trained yet: predicting says so
    det.image.value = "scan"
    assert det.predict() is None
    assert any("train or load a model first" in m for m in _messages(notifications))
    det.train_images.reset_choices()
    det.train_images.value = ["scan"]
    det.params["target_epochs"].value, det.params["source_epochs"].value = 2, 2
    det.params["max_negatives"].value = 800
    det.train()
    qtbot.waitUntil(lambda: not det.runner.running, timeout=120_000)
    assert det.runner.last_error is None, det.runner.last_error
    assert det.detector is not None and "latency clusters" in det.info.value
    # the summary says how many clicks taught nothing (no candidate within tau), as the engine counts them
    from expertloop.engine.jobs import run_job
    from expertloop.engine.spots import prepare_scan
    from expertloop.widgets.spots import table_from_layer

    ref = run_job(prepare_scan(phantom.volume, table_from_layer(viewer.layers["scan spots"]), det.config()))
    assert ref.n_clicks == n_clicks and ref.unmatched_clicks > 0
    assert f"on {ref.n_positive} spot patches" in det.info.value
    assert f"from {n_clicks} clicks" in det.info.value
    assert f"{ref.unmatched_clicks} click{'s' if ref.unmatched_clicks > 1 else ''} matched no candidate" \
        in det.info.value
    assert any("matched no candidate" in m for m in _messages(notifications))
    det.predict()
    qtbot.waitUntil(lambda: not det.runner.running, timeout=120_000)
    assert det.runner.last_error is None, det.runner.last_error
    # the threshold slider spans the probabilities of this detection
    p = det.detection.probability
    assert det.threshold.min == pytest.approx(np.floor(p.min() * 100) / 100)
    assert det.threshold.max == pytest.approx(max(np.ceil(p.max() * 100) / 100, det.threshold.min + 0.01))
    assert det.threshold.min <= det.threshold.value <= det.threshold.max
    assert f"candidate probabilities {p.min():.2f}–{p.max():.2f}" in det.info.value
    layer = viewer.layers["scan detected spots"]
    assert "probability" in layer.features and "n_slices" in layer.features
    det.threshold.value = det.threshold.min  # the bottom of the range: every candidate
    n_all = len(layer.data)
    assert n_all > 0 and (layer.features["probability"] >= 0).all()
    det.threshold.value = det.threshold.max  # the top: nothing, or only the most probable spot
    assert len(layer.data) <= 1
    det.threshold.value = (det.threshold.min + det.threshold.max) / 2
    assert 0 <= len(layer.data) <= n_all
    # save / load through the widget, in the runner's worker; a corrupt file is reported
    from expertloop.engine.spots.lcnn import SpotDetector

    saves, loads = record_threads(SpotDetector, "save"), record_threads(SpotDetector, "load")
    assert det.save(tmp_path / "m") is not None
    qtbot.waitUntil(lambda: not det.runner.running, timeout=60_000)
    assert (tmp_path / "m.pt").exists()
    fresh = SpotDetectorWidget(viewer)  # a loaded model's training values fill the controls
    assert fresh.params["target_epochs"].value != 2
    assert fresh.load(tmp_path / "m") is not None
    qtbot.waitUntil(lambda: not fresh.runner.running, timeout=60_000)
    assert fresh.detector is not None
    assert fresh.params["target_epochs"].value == 2 and fresh.params["max_negatives"].value == 800
    assert f"from {n_clicks} clicks" in fresh.info.value
    (tmp_path / "m.pt").write_bytes(b"garbage")
    det.load(tmp_path / "m")
    qtbot.waitUntil(lambda: not det.runner.running, timeout=60_000)
    assert any("corrupt" in m or "checksum" in m for m in _messages(notifications))
    assert saves == [False] and loads == [False, False]  # model files read and written off the GUI thread


def test_detector_nan_image_is_reported(make_napari_viewer, qtbot, tmp_path, phantom, notifications):
    from expertloop.engine.spots import SpotConfig, SpotDetector, build_spotnet

    viewer = make_napari_viewer()
    vol = phantom.volume.copy()
    vol[3, 4, 5] = np.nan
    viewer.add_image(vol, name="nan")
    det = SpotDetectorWidget(viewer)
    det.detector = SpotDetector(build_spotnet(2), SpotConfig())
    det.image.value = "nan"
    det.predict()
    qtbot.waitUntil(lambda: not det.runner.running, timeout=60_000)
    assert det.runner.last_error is not None
    assert any("NaN" in m for m in _messages(notifications))


def test_annotator_on_the_sample_logs_to_the_user_data_folder(make_napari_viewer, qtbot, tmp_path,
                                                               monkeypatch, notifications):
    """With the shipped sample and no log folder, the log goes to the user data folder
    (not inside the installed package) and the user is told where."""
    import expertloop
    from expertloop.io.napari_hooks import sample_mri

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    viewer = make_napari_viewer()
    data, kwargs, _ = sample_mri()[0]
    viewer.add_image(data, **kwargs)
    w = SpotAnnotatorWidget(viewer)
    w.image.value = kwargs["name"]
    points = w.start()
    assert points is not None
    path = w.log.path.resolve()
    package = Path(expertloop.__file__).resolve().parent
    assert not path.is_relative_to(package)
    assert path == (tmp_path / "xdg" / "napari-expertloop" / "spot-logs"
                    / "colin27_t1_brain.spots.jsonl").resolve()
    assert w.log.journal.flush(10)  # the session record, written by the journal's thread
    assert path.exists() and not list(package.rglob("*.spots.jsonl"))
    assert any(str(w.log.path) in m for m in _messages(notifications))
    assert str(w.log.path) in w.info.tooltip


def test_annotator_clicks_and_import_are_written_off_the_gui_thread(make_napari_viewer, qtbot, tmp_path, phantom,
                                                                   record_threads):
    """Each click's (and each imported row's) journal write + fsync runs in the
    journal's writer thread: the click returns before the disk does."""
    import threading

    from expertloop.io import journal
    from expertloop.io.spots_clicks import export_csv

    gate = threading.Event()
    writes = record_threads(journal.Journal, "_write", gate)
    viewer, w, points = _annotated_viewer(make_napari_viewer, phantom.volume, tmp_path)
    for c in [(10, 20, 20), (12, 22, 25)]:
        points.add(np.array(c, float))  # returns although the writer is held at the gate
    assert len(points.data) == 2 and not w.log.journal.flush(0.2)
    csv = export_csv(simulate_expert(phantom, seed=0), tmp_path / "other.csv")
    w.import_table(csv)
    gate.set()
    assert w.log.journal.flush(10)
    assert writes and not any(writes)  # every write ran off the GUI thread
    assert len(read_clicks(w.log.path)["z"]) == len(points.data) > 2
    # the table of the layer (export) is the log's table
    assert table_equal(w.table(), read_clicks(w.log.path))


def table_equal(a, b) -> bool:
    return sorted(a["click_id"]) == sorted(b["click_id"]) and np.allclose(np.sort(a["z"]), np.sort(b["z"]))
