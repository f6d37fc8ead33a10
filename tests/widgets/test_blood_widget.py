"""'Blood cell detector' widget in a real viewer."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from expertloop.engine.blood import (
    load_blood_model,
    new_blood_model,
    predict_image,
    samples_from_instances,
    save_blood_model,
    synthetic_smear,
    train_blood_model,
)
from expertloop.engine.jobs import run_job


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    from expertloop.engine.backend import get_torch

    torch = get_torch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # much faster than 2 on a loaded 2-core machine
    img, inst, kinds = synthetic_smear((96, 96), 6, touching=0.6, radius=9, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = new_blood_model(det_backbone="mobilenet_v2", embedder="resnet18", pretrained=False, patch_size=32,
                            min_size=96, max_size=96, hidden=16, max_regions=12)
        run_job(train_blood_model(m, [samples_from_instances(img, inst, kinds)], det_epochs=2,
                                  head_epochs=5, batch_size=1))
    path = save_blood_model(tmp_path_factory.mktemp("blood") / "m", m)
    yield path, img
    torch.set_num_threads(n)


def _widget(viewer, qtbot):
    from expertloop.widgets.blood import BloodWidget

    w = BloodWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w


def _wait(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: not w.runner.running, timeout=timeout)


def _smear_dock(viewer, qtbot, model_path, img):
    """A viewer showing ``img`` as 'smear' and a dock with the model at ``model_path`` loaded."""
    viewer.add_image(img, name="smear", rgb=True)
    w = _widget(viewer, qtbot)
    w.model_file.value = model_path
    w.load()
    _wait(qtbot, w)
    return viewer, w


def test_detect_overlay_matches_engine_and_slider_filters(make_napari_viewer, qtbot, model_file, tmp_path,
                                                          notifications):
    path, img = model_file
    viewer = make_napari_viewer()
    viewer.add_image(img, name="smear", rgb=True)
    w = _widget(viewer, qtbot)
    w.detect()  # no model yet: a message, no crash
    assert any("load or train a model" in str(n.message) for n in notifications)
    w.model_file.value = path
    w.load()
    _wait(qtbot, w)
    assert w.model is not None
    w.score.value = 0.0
    w.detect()
    _wait(qtbot, w)
    layer = viewer.layers["smear cells"]
    ref = run_job(predict_image(load_blood_model(path), img, score_threshold=0.01))
    assert len(ref) > 1
    # all regions visible at threshold 0: the same boxes and features as the engine
    assert len(layer.data) == len(ref)
    got = np.array([[d[:, 1].min(), d[:, 0].min(), d[:, 1].max(), d[:, 0].max()] for d in layer.data])
    np.testing.assert_allclose(got, ref.boxes, atol=1e-4)
    np.testing.assert_allclose(layer.features["score"], ref.scores, rtol=1e-5)
    np.testing.assert_allclose(layer.features["p_Oval/Disc"], ref.type_probs[:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(layer.features["abnormal_score"], ref.abnormal, rtol=1e-4, atol=1e-6)
    assert "regions" in w.summary.value
    # the slider hides the low-scoring boxes, live. A tiny detector trained two
    # steps gives nearly equal scores, so give the regions distinct ones here
    w.result.scores = np.linspace(0.05, 0.95, len(ref))
    w.refresh()
    assert len(layer.data) == len(ref)
    w.score.value = 0.5
    n_vis = int((w.result.scores >= 0.5).sum())
    assert 0 < n_vis < len(ref)
    assert len(layer.data) == n_vis == w.table.shape[0]
    kept = w.result.boxes[w.result.scores >= 0.5]
    got = np.array([[d[:, 1].min(), d[:, 0].min(), d[:, 1].max(), d[:, 0].max()] for d in layer.data])
    np.testing.assert_allclose(got, kept, atol=1e-4)
    assert str(n_vis) in w.summary.value
    # type threshold 0: every region shows every type in its text
    w.type_thr.value = 0.0
    n_trained = len(ref.type_names) - len(ref.untrained_types)  # heads without examples stay hidden
    assert n_trained > 1
    assert all(lab.count(",") == n_trained - 1 for lab in layer.features["label"])
    # exports
    w.export_file.value = tmp_path / "out"
    csv_path = w.export_csv()
    coco_path = w.export_coco()
    assert len(csv_path.read_text().strip().splitlines()) == n_vis + 1
    from expertloop.io.blood_formats import read_coco

    (c,) = read_coco(coco_path)
    assert len(c.boxes) == n_vis and len(c.attributes[0]["types"]) == n_trained
    # a folder in batch (one RGB and one 16-bit grey image)
    from skimage.io import imsave

    folder = tmp_path / "batch"
    folder.mkdir()
    imsave(folder / "a.png", img)
    imsave(folder / "b.tif", img[..., 0].astype(np.uint16) * 200)
    w.folder.value = folder
    w.export_file.value = tmp_path / "batch_out" / "x"
    w.detect_folder()
    _wait(qtbot, w)
    coco = read_coco(tmp_path / "batch_out" / "regions_coco.json")
    assert [a.filename for a in coco] == ["a.png", "b.tif"]
    assert (tmp_path / "batch_out" / "regions.csv").is_file()


def test_train_from_shapes_and_labels(make_napari_viewer, qtbot, model_file, notifications, record_threads):
    from expertloop.engine.blood import pipeline

    # the training sample (planes read, cells cropped) is built in the job's worker
    from_rects = record_threads(pipeline, "sample_from_rectangles")
    from_labels = record_threads(pipeline, "samples_from_instances")
    path, img = model_file
    viewer = make_napari_viewer()
    viewer.add_image(img, name="smear", rgb=True)
    rects = [np.array([[10, 10], [10, 30], [30, 30], [30, 10]]), np.array([[50, 40], [50, 70], [80, 70], [80, 40]])]
    viewer.add_shapes(rects, shape_type="rectangle", name="boxes",
                      features={"type": ["Oval/Disc", "Echinocyte+Stomatocyte"]})
    w = _widget(viewer, qtbot)
    w.annotations.value = "boxes"
    w.det_epochs.value = 1
    w.head_epochs.value = 3
    w.types.value = "Oval/Disc, Echinocyte, Stomatocyte"
    w.abnormal_types.value = "Echinocyte, Stomatocyte"
    w.embedder.value = "resnet18"
    w.pretrained.value = False
    w.train()
    _wait(qtbot, w, 120000)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.model is not None and w.model.type_names == ["Oval/Disc", "Echinocyte", "Stomatocyte"]
    assert w.model.trained_types == w.model.type_names
    assert w.model.train_image_size == (96, 96)
    assert any("trained: detector 1 iteration" in str(n.message) for n in notifications)
    assert from_rects == [False]
    # a mask Labels layer: boxes from connected components, detector only (no types)
    _, inst, _ = synthetic_smear((96, 96), 4, seed=1)
    viewer.add_labels(inst, name="mask")
    w.annotations.value = "mask"
    w.head_epochs.value = 1
    w.train()
    _wait(qtbot, w, 120000)
    assert w.runner.last_error is None and from_labels == [False]
    # an empty Labels layer is refused with a clear message (found by the job: nothing trained)
    viewer.add_labels(np.zeros((96, 96), np.int32), name="empty")
    w.annotations.value = "empty"
    model = w.model
    w.train()
    _wait(qtbot, w, 120000)
    assert w.runner.last_error is not None and w.model is model
    assert any("is empty" in str(n.message) for n in notifications)


def test_named_thresholds_shared_by_widget_image_folder_and_cli(make_napari_viewer, qtbot, model_file, tmp_path):
    """A model saved with non-default thresholds: the widget's sliders show
    them, and the widget image path, its folder batch and ``expertloop blood
    predict`` keep the same regions and write the same table."""
    from skimage.io import imsave

    from expertloop.cli import main
    from expertloop.engine.blood.model import BloodModel

    path, img = model_file
    m = load_blood_model(path)
    dflt = BloodModel.__dataclass_fields__
    m.set_thresholds(candidate_floor=0.0, score_threshold=0.02, type_threshold=0.3)
    assert all(m.thresholds()[k] != dflt[k].default for k in m.thresholds())
    mpath = save_blood_model(tmp_path / "thr", m)
    assert load_blood_model(mpath).thresholds() == m.thresholds()
    viewer, w = _smear_dock(make_napari_viewer(), qtbot, mpath, img)
    assert (w.score.value, w.type_thr.value) == pytest.approx((0.02, 0.3))
    # the 'new:' controls show the loaded model's architecture and types, read-only
    assert (w.detector.value, w.embedder.value) == (m.det_backbone, m.embedder_name) == ("mobilenet_v2", "resnet18")
    assert w.types.value == ", ".join(m.type_names) and w.det_classes.value == ", ".join(m.det_classes)
    assert w.abnormal_types.value == ", ".join(m.abnormal_types)
    assert not w.embedder.enabled and not w.types.enabled and w.forget_btn.enabled
    w.forget_btn.clicked.emit()  # a new model next time: the controls are editable again
    assert w.model is None and w.embedder.enabled and w.types.enabled
    w.load()
    _wait(qtbot, w)
    w.detect()
    _wait(qtbot, w)
    ref = run_job(predict_image(load_blood_model(mpath), img))  # the model's candidate_floor
    np.testing.assert_allclose(w.result.boxes, ref.boxes, atol=1e-4)
    folder = tmp_path / "in"
    folder.mkdir()
    imsave(folder / "a.png", img)
    w.folder.value = folder
    w.export_file.value = tmp_path / "widget_out" / "x"
    w.detect_folder()
    _wait(qtbot, w)
    assert main(["blood", "predict", str(folder), "-m", str(mpath), "-o", str(tmp_path / "cli_out"),
                 "--format", "csv"]) == 0
    widget_rows = (tmp_path / "widget_out" / "regions.csv").read_text()
    assert widget_rows == (tmp_path / "cli_out" / "regions.csv").read_text()
    assert len(widget_rows.strip().splitlines()) - 1 == int((ref.scores >= 0.02).sum())
    # the CLI applies an override; a slider change writes back to the model and is saved
    assert main(["blood", "predict", str(folder), "-m", str(mpath), "-o", str(tmp_path / "cli_hi"),
                 "--format", "csv", "--score-threshold", "1.0"]) == 0
    assert len((tmp_path / "cli_hi" / "regions.csv").read_text().strip().splitlines()) == 1
    w.type_thr.value = 0.7
    w.save_file.value = tmp_path / "saved"
    assert w.save() is not None  # written in the runner's worker
    _wait(qtbot, w)
    assert load_blood_model(tmp_path / "saved.pt").type_threshold == pytest.approx(0.7)


def test_failed_detection_clears_the_previous_result(make_napari_viewer, qtbot, model_file, notifications):
    """After a successful detection, a failing one removes the old overlay, table
    and summary instead of leaving them on screen as if they were its result."""
    path, img = model_file
    viewer = make_napari_viewer()
    viewer.add_image(img, name="smear", rgb=True)
    viewer.add_image(np.zeros((5, 5, 3), np.uint8), name="tiny", rgb=True)
    w = _widget(viewer, qtbot)
    w.model_file.value = path
    w.load()
    _wait(qtbot, w)
    w.score.value = 0.0
    w.image.value = "smear"
    w.detect()
    _wait(qtbot, w)
    assert "smear cells" in viewer.layers and len(viewer.layers["smear cells"].data) > 0
    assert "regions" in w.summary.value and w.table.shape[0] > 0
    w.image.value = "tiny"
    w.detect()
    _wait(qtbot, w)
    assert any("too small" in str(n.message) for n in notifications)
    assert "smear cells" not in viewer.layers and w.layer is None and w.result is None
    assert "regions" not in w.summary.value and "failed" in w.summary.value
    assert w.table.shape[0] == 0
    # moving the slider afterwards brings nothing back
    w.score.value = 0.1
    assert "smear cells" not in viewer.layers


def _batch_folder(tmp_path, img, n):
    from skimage.io import imsave

    folder = tmp_path / "smears"
    folder.mkdir()
    for i in range(n):
        imsave(folder / f"s{i}.png", np.roll(img, 7 * i, axis=1), check_contrast=False)
    return folder


def _batch_dock(viewer, qtbot, model_path, folder, out):
    w = _widget(viewer, qtbot)
    w.model_file.value = model_path
    w.load()
    _wait(qtbot, w)
    w.folder.value = folder
    w.export_file.value = out / "x"
    return w, folder


def test_folder_batch_is_the_cli_job_on_a_dask_scheduler(make_napari_viewer, qtbot, model_file, tmp_path,
                                                        notifications):
    """The widget's folder batch runs the job of ``expertloop blood predict``
    (per-image tables, then merged ones) here or on a dask scheduler given in
    the dock, and writes exactly what the command line writes."""
    from distributed import LocalCluster

    from expertloop.cli import main

    path, img = model_file
    w, folder = _batch_dock(make_napari_viewer(), qtbot, path, _batch_folder(tmp_path, img, 2),
                            tmp_path / "widget_out")
    w.score.value = 0.0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      silence_logs=50) as cluster:
        w.batch_place["scheduler"].value = cluster.scheduler_address
        w.detect_folder()
        _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    assert any("2 done" in str(n.message) and "scheduler" in str(n.message) for n in notifications)
    assert main(["blood", "predict", str(folder), "-m", str(path), "-o", str(tmp_path / "cli_out"),
                 "--score-threshold", "0", "--workers", "0"]) == 0
    for rel in ("per_image/s0.regions.csv", "per_image/s1.regions.csv", "regions.csv"):
        assert (tmp_path / "widget_out" / rel).read_text() == (tmp_path / "cli_out" / rel).read_text()
    assert not list((tmp_path / "widget_out").glob(".model-*"))  # the model snapshot is removed


def test_folder_batch_cancel_stops_promptly(make_napari_viewer, qtbot, model_file, tmp_path):
    """Cancel at the start of the serial folder batch: no image is detected,
    nothing is written and the model snapshot is removed."""
    path, img = model_file
    w, _ = _batch_dock(make_napari_viewer(), qtbot, path, _batch_folder(tmp_path, img, 4), tmp_path / "out")
    assert w.batch_place["workers"].value == 0  # in this process, one image after another
    assert w.detect_folder() is not None
    w.runner.cancel()  # at once: the job is saving the model snapshot or detecting the first image
    _wait(qtbot, w)
    assert w.runner.status.endswith("cancelled") and w.runner.last_error is None
    assert not list((tmp_path / "out" / "per_image").glob("*.csv"))
    assert not (tmp_path / "out" / "regions.csv").exists()
    assert not list((tmp_path / "out").glob(".model-*"))


def test_type_picker_on_selected_rectangles_feeds_training(make_napari_viewer, qtbot, notifications):
    """Rectangles drawn without types get them from the dock's picker (set, then
    add a second type), new rectangles start without one, and training learns
    exactly the picked types (the others stay untrained)."""
    viewer = make_napari_viewer()
    img, _, _ = synthetic_smear((96, 96), 4, seed=2)
    viewer.add_image(img, name="smear", rgb=True)
    rects = [np.array([[5, 5], [5, 25], [25, 25], [25, 5]]), np.array([[40, 40], [40, 70], [70, 70], [70, 40]]),
             np.array([[10, 60], [10, 85], [35, 85], [35, 60]])]
    boxes = viewer.add_shapes(rects, shape_type="rectangle", name="boxes")
    w = _widget(viewer, qtbot)
    w.annotations.value = "boxes"
    w.types.value = "Oval/Disc, Echinocyte, Stomatocyte"
    w.abnormal_types.value = "Echinocyte, Stomatocyte"
    assert w.shape_type.choices == ("Oval/Disc", "Echinocyte", "Stomatocyte")
    w.set_selected_type()  # nothing selected: says so
    assert any("select rectangles" in str(n.message) for n in notifications)
    boxes.selected_data = {0, 2}
    w.shape_type.value = "Oval/Disc"
    w.set_type_btn.clicked.emit()
    boxes.selected_data = {1}
    w.shape_type.value = "Echinocyte"
    w.set_type_btn.clicked.emit()
    boxes.selected_data = {2}
    w.add_type_btn.clicked.emit()
    assert list(boxes.features["type"]) == ["Oval/Disc", "Echinocyte", "Echinocyte+Oval/Disc"]
    assert boxes.text.string.format == "{type}"
    boxes.add_rectangles(np.array([[60, 5], [60, 20], [80, 20], [80, 5]]))
    assert boxes.features["type"].iloc[-1] == ""
    w.det_epochs.value = 0  # type heads only: quick
    w.head_epochs.value = 2
    w.embedder.value = "resnet18"
    w.pretrained.value = False
    w.train()
    _wait(qtbot, w, 120000)
    assert w.runner.last_error is None, w.runner.last_error
    assert w.model.trained_types == ["Oval/Disc", "Echinocyte"]
    assert any("not trained, hidden): Stomatocyte" in str(n.message) for n in notifications)


def test_untrained_heads_are_hidden_and_counts_follow_the_thresholds(make_napari_viewer, qtbot, tmp_path):
    """A model whose type heads and abnormal classifier were never trained
    shows no types and no abnormal flags (the summary says why), and the
    summary's counts are those of the table rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = new_blood_model(det_backbone="mobilenet_v2", embedder="resnet18", pretrained=False, patch_size=32,
                            min_size=96, max_size=96, hidden=8, max_regions=8)
    m.set_thresholds(candidate_floor=0.0, score_threshold=0.0, type_threshold=0.0)
    path = save_blood_model(tmp_path / "untrained", m)
    img, _, _ = synthetic_smear((96, 96), 5, seed=4)
    viewer, w = _smear_dock(make_napari_viewer(), qtbot, path, img)
    w.detect()
    _wait(qtbot, w)
    res = w.result
    assert len(res) > 0 and res.untrained_types == m.type_names
    # type threshold 0: an untrained head would give every region every type
    assert "abnormal: not trained" in w.summary.value and "not trained (hidden)" in w.summary.value
    assert "Sickle" not in w.summary.value.split("not trained")[0]
    assert not any(c.startswith("p_") or c.startswith("abnormal") for c in w.table.column_headers)
    assert not any(w.table.to_dict("list")["types"])
    layer = viewer.layers["smear cells"]
    assert all(lab.startswith("cell ") for lab in layer.features["label"])  # class and score only
    s = res.summary(0.0, 0.0)
    assert s["abnormal_regions"] == 0 and sum(s["per_type"].values()) == 0 and s["per_type"] == {}
    # the CLI writes the same: no types, no abnormal flags
    from expertloop.io.blood_formats import results_to_rows
    rows = results_to_rows([res], 0.0, 0.0)
    assert len(rows) == len(res) and not any(r["types"] or r["abnormal"] for r in rows)


def test_detect_on_a_lazy_multiscale_layer_reads_level_zero_in_the_worker(make_napari_viewer, qtbot, model_file):
    """A multiscale layer of dask arrays: detection runs on level 0, read in the
    worker thread (not on the GUI thread), and the boxes overlay level 0."""
    import threading

    import dask.array as da

    path, img = model_file
    gui_reads = []

    def record(block):
        gui_reads.append(threading.current_thread() is threading.main_thread())
        return block

    level0 = da.from_array(img, chunks=(48, 48, 3)).map_blocks(record, dtype=img.dtype)
    level1 = da.from_array(np.ascontiguousarray(img[::2, ::2]), chunks=(48, 48, 3))
    viewer = make_napari_viewer()
    viewer.add_image([level0, level1], name="smear", rgb=True, multiscale=True, scale=(0.5, 0.5),
                     visible=False)  # hidden: napari itself reads nothing of it
    w = _widget(viewer, qtbot)
    w.model_file.value = path
    w.load()
    _wait(qtbot, w)
    w.score.value = 0.0
    gui_reads.clear()
    w.image.value = "smear"
    import dask

    with dask.config.set(scheduler="synchronous"):  # blocks computed in the thread that reads
        w.detect()
        _wait(qtbot, w)
    assert w.runner.last_error is None, w.runner.last_error
    assert gui_reads and not any(gui_reads)  # level 0 read, by the worker only
    ref = run_job(predict_image(load_blood_model(path), img, score_threshold=0.0))
    np.testing.assert_allclose(w.result.boxes, ref.boxes, atol=1e-4)
    layer = viewer.layers["smear cells"]
    assert tuple(layer.scale) == (0.5, 0.5) and len(layer.data) == len(ref)
