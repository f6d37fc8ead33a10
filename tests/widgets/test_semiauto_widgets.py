"""Semi-automatic labelling widgets driven in a real viewer (keyboard included)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from qtpy.QtCore import Qt

from expertloop.engine.semiauto import QueueItem, ReviewQueue
from expertloop.io.semiauto_storage import FolderQueueStorage
from expertloop.widgets.semiauto import REVIEW_LAYER, ReviewQueueWidget, SemiAutoWidget

CLASSES = ["Platelets", "RBC", "WBC"]


def _press(qtbot, viewer, key):
    qtbot.keyClick(viewer.window._qt_viewer, key)


def test_review_keyboard_accept_change_undo_skip(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    w = ReviewQueueWidget(viewer)
    w.annotator.value = "dr who"
    items = [QueueItem(i, f"c{i}", i % 3, 0.6) for i in range(5)]
    st = FolderQueueStorage(tmp_path)
    q = ReviewQueue(items, CLASSES, storage=st, queue_id=1)
    pix = {i: np.full((8, 8), i * 10, np.uint8) for i in range(5)}
    w.set_queue(q, image_for=pix.__getitem__)
    first = q.current
    assert viewer.layers[REVIEW_LAYER].data[0, 0] == first.index * 10
    assert "predicted Platelets" in w.info.value
    # the key legend, in the dock and on the canvas: which digit is which class
    legend = "1 = Platelets, 2 = RBC, 3 = WBC"
    assert legend in w.keys.value and w.keys.native.isVisibleTo(w.native)
    assert legend in w._overlay().text

    _press(qtbot, viewer, Qt.Key_Return)            # accept
    assert q.decisions() == {first.index: 0}
    second = q.current
    assert viewer.layers[REVIEW_LAYER].data[0, 0] == second.index * 10
    _press(qtbot, viewer, Qt.Key_3)                 # third class
    assert q.decisions()[second.index] == 2
    _press(qtbot, viewer, Qt.Key_Backspace)         # undo
    assert second.index not in q.decisions() and q.current.index == second.index
    _press(qtbot, viewer, Qt.Key_S)                 # skip
    assert w.progress.value == "1 / 5 decided, 1 skipped"
    _press(qtbot, viewer, Qt.Key_9)                 # no 9th class: ignored
    assert q.n_decided == 1

    recs = st.load_decisions(1)
    assert [r["action"] for r in recs] == ["accept", "change", "undo", "skip"]
    assert {r["annotator"] for r in recs} == {"dr who"}
    assert all(r["seconds"] >= 0 for r in recs)

    # reopen the project in a fresh standalone widget: same state
    w2 = ReviewQueueWidget(viewer)
    w2.project.value = str(tmp_path)
    q2 = w2.open_project()
    assert q2.decisions() == {first.index: 0} and len(q2.skipped) == 1


@pytest.fixture
def crop_project(data_dir, tmp_path):
    """Class folders with 4 labelled crops each; the other 30 crops loose (unlabelled)."""
    root = tmp_path / "cells"
    shutil.copytree(data_dir / "semiauto" / "bccd_crops", root)
    truth = {}
    for cls in CLASSES:
        for f in sorted((root / cls).glob("*.png"))[4:]:
            truth[f.name] = cls
            shutil.move(str(f), root / f.name)
    (root / "corrupt.png").write_bytes(b"\x89PNG garbage")
    return root, truth


def test_loop_widget_runs_reviews_and_exports(make_napari_viewer, qtbot, crop_project, tmp_path, notifications,
                                              record_threads):
    from expertloop.engine.semiauto.loop import SemiAutoLoop

    applies, exports = record_threads(SemiAutoLoop, "apply_review"), record_threads(SemiAutoLoop, "export_csv")
    root, truth = crop_project
    viewer = make_napari_viewer()
    w = SemiAutoWidget(viewer)
    w.folder.value = str(root)
    w.params["batch_size"].value = 15
    w.params["val_fraction"].value = 0.25
    w.params["t"].value = 0.9
    w.review.annotator.value = "tester"
    assert w.load() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    loop = w.loop
    assert loop is not None and len(loop.collection) == 42
    assert any("corrupt.png" in str(n.message) for n in notifications)

    assert w.simulate_random() is None          # nothing reviewed yet
    assert any("run and review an iteration first" in str(n.message) for n in notifications)
    w.run_iteration()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    q = loop.queue
    assert q is not None and len(loop.proposal.batch) == 15
    names = loop.collection.names
    # answer every hard case by keyboard, from the truth
    for _ in range(len(q)):
        k = CLASSES.index(truth[names[q.current.index]])
        if k == q.current.predicted:
            _press(qtbot, viewer, Qt.Key_Return)
        else:
            _press(qtbot, viewer, getattr(Qt, f"Key_{k + 1}"))
    assert q.done, q.progress_text()
    w.apply_and_continue()                       # merge + start the next batch
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert loop.history[0]["iteration"] == 1
    xs, ys = w.acc_plot.series["threshold"]
    assert len(xs) >= 2 and all(0 <= y <= 1 for y in ys)
    assert w.manual_plot.series["manual fraction"][1] == [loop.history[0]["manual_fraction"]]
    for i in np.flatnonzero(loop.state.source == "manual"):
        assert CLASSES[loop.labels[i]] == truth[names[i]]

    # compare with random sampling, simulated on the labels made so far
    w.simulate_random()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    rx, ry = w.acc_plot.series["random (simulated)"]
    assert len(rx) >= 2 and rx[0] == xs[0] and all(0 <= y <= 1 for y in ry)
    assert "random (simulated)" in w.manual_plot.series

    w.export_path.value = str(tmp_path / "out.csv")
    w.export()                                   # written in the runner's worker
    qtbot.waitUntil(lambda: not w.runner.running, timeout=10000)
    rows = (tmp_path / "out.csv").read_text().splitlines()
    assert applies and not any(applies) and exports == [False]  # the project and the CSV written off the GUI thread
    assert len(rows) == 43 and rows[0].startswith("name,label")

    # the project is saved: a new widget resumes it with the open queue
    w2 = SemiAutoWidget(viewer)
    w2.folder.value = str(root)
    w2.classifier.value = "logreg-resnet18"   # not the project's: the project's own is used and shown
    w2.load()
    qtbot.waitUntil(lambda: not w2.runner.running, timeout=60000)
    loop2 = w2.loop
    assert loop2.iteration == loop.iteration and loop2.proposal is not None
    assert w2.review.queue is not None
    assert loop2.classifier.key == "logreg-hand" == w2.classifier.value and not w2.classifier.enabled
    # its controls show the project's parameters, not the defaults; an edit is saved with it
    assert w2.params["batch_size"].value == 15 and w2.params["val_fraction"].value == 0.25
    assert not w2.params["val_fraction"].enabled and w2.params["t"].enabled
    w2.params["t"].value = 0.8
    assert loop2.config.t == 0.8
    assert json.loads((root / "semiauto_project" / "state.json").read_text())["config"]["t"] == 0.8
    # the standalone review widget opens that queue and shows items from their files
    rv = ReviewQueueWidget(viewer)
    rv.project.value = str(root / "semiauto_project")
    q3 = rv.open_project()
    assert q3 is not None and q3.current is not None, "the second batch has hard cases to review"
    # the project is open in w2: the standalone dock reviews w2's queue (not a copy), and each refreshes the other
    assert q3 is loop2.queue
    shown = viewer.layers[REVIEW_LAYER].data
    assert shown.shape == (32, 32, 3)
    assert np.array_equal(shown, loop.collection.images[q3.current.index])
    rv.annotator.value = "standalone"
    _press(qtbot, viewer, Qt.Key_Return)    # rv opened last: the keys go to it
    assert q3.n_decided == 1 and w2.review.progress.value == q3.progress_text()
    assert f"review: {q3.progress_text()}" == w2.status.value
    assert FolderQueueStorage(root / "semiauto_project").load_decisions(q3.queue_id)[-1]["annotator"] == "standalone"
    qtbot.wait(100)   # let the plots' pending redraws run before the viewer closes


def test_loop_widget_bad_inputs(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    w = SemiAutoWidget(viewer)
    assert w.load() is None
    assert any("choose an image folder or a stack layer" in str(n.message) for n in notifications)
    viewer.add_image(np.zeros((8, 8), np.uint8), name="flat")
    viewer.add_image(np.zeros((6, 8, 8), np.uint8), name="stack")
    viewer.add_labels(np.zeros((6, 8, 8), np.uint8), name="labels")
    # a layer picker (magicgui layer annotation): image layers themselves, or none
    assert w.stack.choices == (None, viewer.layers["flat"], viewer.layers["stack"])
    w.stack.value = viewer.layers["flat"]
    w.class_names.value = "a, b"
    w.project.value = str(tmp_path / "p")
    assert w.load() is None
    assert any("must hold one 2D image per plane" in str(n.message) for n in notifications)
    w.stack.value = viewer.layers["stack"]
    w.class_names.value = "only-one"
    w.project.value = str(tmp_path / "p")
    assert w.load() is None
    assert any("at least two class names" in str(n.message) for n in notifications)


def test_loading_a_folder_runs_in_the_worker_and_cancel_stops_it(make_napari_viewer, qtbot, crop_project,
                                                                 record_threads):
    """Issue 18 defect 16: the folder is read off the GUI thread, file by file, and Cancel stops it."""
    import threading

    import expertloop.io.readers as readers

    root, _ = crop_project
    gate = threading.Event()
    reads = record_threads(readers, "read_image", gate)
    viewer = make_napari_viewer()
    w = SemiAutoWidget(viewer)
    w.folder.value = str(root)
    assert w.load() is not None
    qtbot.waitUntil(lambda: len(reads) == 1, timeout=5000)  # the GUI runs while the first file is read
    assert reads == [False]
    w.runner._cancel_btn.clicked.emit()                     # the Cancel button
    gate.set()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=10000)
    assert w.loop is None and len(reads) == 1 and "cancelled" in w.runner.status
    assert not (root / "semiauto_project").exists()
    # a second load runs to its end, off the GUI thread too
    w.load()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=30000)
    assert w.loop is not None and len(reads) == 1 + 43 and not any(reads)


def test_two_review_docks_keys_go_to_the_one_clicked(make_napari_viewer, qtbot, tmp_path):
    """Issue 19 item 6: with two queues open, a key press is recorded by the dock the user works in."""
    viewer = make_napari_viewer()
    docks, queues = [], []
    for k, who in enumerate(("ann one", "ann two")):
        w = ReviewQueueWidget(viewer)
        viewer.window.add_dock_widget(w, name=who)
        w.annotator.value = who
        st = FolderQueueStorage(tmp_path / f"p{k}")
        q = ReviewQueue([QueueItem(i, f"c{i}", 0, 0.5) for i in range(3)], CLASSES, storage=st, queue_id=1)
        w.set_queue(q, image_for=lambda i, k=k: np.full((4, 4), 10 * k + i, np.uint8))
        docks.append(w)
        queues.append(q)
    one, two = docks
    qtbot.mouseClick(one.info.native, Qt.LeftButton)   # the user clicks into the first dock
    assert viewer.layers[REVIEW_LAYER].data[0, 0] == 0    # its current item is shown
    _press(qtbot, viewer, Qt.Key_Return)
    assert queues[0].n_decided == 1 and queues[1].n_decided == 0
    qtbot.mouseClick(two.progress.native, Qt.LeftButton)
    _press(qtbot, viewer, Qt.Key_2)
    assert queues[1].decisions() == {0: 1} and queues[0].n_decided == 1
    assert [r["annotator"] for r in FolderQueueStorage(tmp_path / "p0").load_decisions(1)] == ["ann one"]
    assert [r["annotator"] for r in FolderQueueStorage(tmp_path / "p1").load_decisions(1)] == ["ann two"]


def test_an_empty_review_queue_says_why(digits_semiauto, qtbot, notifications):
    """Issue 19 item 4: a batch with no hard case says that all predictions were above t."""
    _, w, _, _ = digits_semiauto(90, 60)
    w.params["t"].value = 0.1                 # with 10 classes every top probability is >= 0.1
    w.params["batch_size"].value = 20
    w.run_iteration()                         # loads the stack first, then the iteration
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    assert w.loop is not None and w.loop.queue is not None and len(w.loop.queue) == 0
    why = "all 20 predictions have confidence >= t = 0.10"
    assert why in w.review.info.value and "Apply review" in w.review.info.value
    assert any(why in str(n.message) for n in notifications)


def test_review_files_are_read_and_prefetched_off_the_gui_thread(make_napari_viewer, qtbot, tmp_path,
                                                                record_threads):
    """A queue of files (standalone dock, no loop): each item's file is read in the prefetch
    thread, the next items' files are read ahead, and a key press shows the next image."""
    import tifffile

    import expertloop.widgets.semiauto as sa

    seen = record_threads(sa, "_read_path_image")
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"c{i}.tif"))
        tifffile.imwrite(paths[-1], np.full((8, 8), i * 10, np.uint8))
    viewer = make_napari_viewer()
    w = ReviewQueueWidget(viewer)
    w.annotator.value = "dr who"
    items = [QueueItem(i, f"c{i}", 0, 0.6, path=paths[i]) for i in range(6)]
    q = ReviewQueue(items, CLASSES, storage=FolderQueueStorage(tmp_path / "q"), queue_id=1)
    w.set_queue(q)
    qtbot.waitUntil(lambda: REVIEW_LAYER in viewer.layers, timeout=10_000)
    assert viewer.layers[REVIEW_LAYER].data[0, 0] == q.current.index * 10
    qtbot.waitUntil(lambda: len(seen) >= 1 + sa._ImagePrefetch.AHEAD, timeout=10_000)  # read ahead
    shown = q.current.index
    _press(qtbot, viewer, Qt.Key_Return)
    assert q.n_decided == 1 and q.current.index != shown
    qtbot.waitUntil(lambda: viewer.layers[REVIEW_LAYER].data[0, 0] == q.current.index * 10, timeout=10_000)
    assert seen and not any(seen), "review files are read on the GUI thread"
