"""The 'Annotation project' dock and the admin panel in a real viewer."""

from __future__ import annotations

import time

import numpy as np
import pytest
import tifffile

from expertloop.store import Store, push_review_tasks
from expertloop.store.testing import backend_params, fresh_location


def _idle(qtbot, w, timeout=30000):
    """Wait until the dock's queued jobs (open, read, save) are done."""
    qtbot.waitUntil(lambda: not w.busy, timeout=timeout)


def _images(tmp_path, n=3):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.tif"
        tifffile.imwrite(p, rng.integers(0, 255, (24, 32), dtype=np.uint8))
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("backend", backend_params())
def test_dock_saves_annotation_seen_by_second_connection(
        backend, make_napari_viewer, qtbot, tmp_path, notifications):
    from qtpy.QtCore import Qt

    from expertloop.widgets.store import (
        COLOURS,
        IMAGE_LAYER,
        AnnotationProjectWidget,
    )

    loc, files = fresh_location(backend, tmp_path)
    paths = _images(tmp_path) + [str(tmp_path / "deleted.tif")]
    with Store.create(loc, admin="ada", files_dir=files) as st:
        st.add_user("ada", "bob")
        st.add_template("ada", "phase", "label", labels=["interphase", "mitotic"])
        st.add_collection("ada", "cells", "phase", images=paths)
        st.assign("ada", "cells", "bob")
        st.add_collection("ada", "secret", "phase", images=paths[:1])
        push_review_tasks(st, "cells", [{"uri": paths[1], "label": "mitotic",
                                         "confidence": 0.62}], actor="ada")
    viewer = make_napari_viewer()
    w = AnnotationProjectWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.open_project(loc)
    _idle(qtbot, w)
    w.set_user("bob")
    _idle(qtbot, w)
    # bob sees only his collection
    assert [w.coll.itemData(i) for i in range(w.coll.count())] == ["cells"]
    w.select_collection("cells")
    _idle(qtbot, w)
    assert w.current == 0 and IMAGE_LAYER in viewer.layers
    assert viewer.layers[IMAGE_LAYER].data.shape == (24, 32)
    # the deleted file is listed as missing (grey), not fatal
    assert [w.item_state(i) for i in range(4)] == ["current", "todo", "todo", "missing"]
    assert "1 missing" in w.progress_lbl.text()
    assert any("missing" in str(n.message) for n in notifications)

    # the template's tools decide what shows: a label dropdown (no annotation layer)
    assert w.label_box.isVisibleTo(w) and w.label_box.count() == 2
    assert "project annotation" not in viewer.layers
    w.label_box.setCurrentText("mitotic")
    qtbot.mouseClick(w.save_btn, Qt.LeftButton)
    _idle(qtbot, w)
    # a second, independent connection sees the annotation at once
    with Store.open(loc, files_dir=files) as other:
        (rec,) = other.annotations("ada", "cells")
        assert (rec.uri, rec.label, rec.annotator, rec.source) == (
            paths[0], "mitotic", "bob", "manual")
        assert rec.time_spent is not None and rec.time_spent >= 0
    assert w.list.item(1).background().color().name() == COLOURS["todo"]
    w.go(1)
    _idle(qtbot, w)
    assert w.list.item(0).background().color().name() == COLOURS["annotated"]
    assert w.list.item(1).background().color().name() == COLOURS["current"]
    # image 1 has a model suggestion: accepting it saves 'accepted-model' and moves on
    assert w.suggestion.text() == "mitotic (0.62)"
    qtbot.mouseClick(w.accept_btn, Qt.LeftButton)
    assert w.current == 2
    _idle(qtbot, w)
    # keyboard: '1' on the image layer saves the first label and moves on
    layer = viewer.layers[IMAGE_LAYER]
    (key_1,) = [f for k, f in layer.keymap.items() if str(k) == "1"]
    key_1(layer)
    _idle(qtbot, w)
    # a label outside the set is refused with a message and nothing is written
    w.go(2)
    _idle(qtbot, w)
    assert w.save(label="prophase")  # started; the store refuses it
    _idle(qtbot, w)
    assert any("not in template" in str(n.message) for n in notifications)
    assert "not saved" in w.status.text()
    with Store.open(loc, files_dir=files) as other:
        got = {(r.uri, r.label, r.source) for r in other.annotations("ada", "cells")}
    assert got == {(paths[0], "mitotic", "manual"), (paths[1], "mitotic", "accepted-model"),
                   (paths[2], "interphase", "manual")}
    assert "3/4 annotated by bob" in w.progress_lbl.text()


def test_dock_geometric_tasks(make_napari_viewer, qtbot, tmp_path):
    from expertloop.widgets.store import ANNOTATION_LAYER, AnnotationProjectWidget

    paths = _images(tmp_path, 2)
    loc = tmp_path / "proj"
    with Store.create(loc, admin="ada") as st:
        st.add_template("ada", "spots", "points", labels=["spot"])
        st.add_template("ada", "outline", "contour", labels=["cell"])
        st.add_template("ada", "seg", "mask")
        st.add_template("ada", "nokeys", "label", labels=["x", "y"], tools=["label-dropdown"])
        for name, tpl in [("p", "spots"), ("c", "outline"), ("m", "seg"), ("k", "nokeys")]:
            st.add_collection("ada", name, tpl, images=paths)
    viewer = make_napari_viewer()
    w = AnnotationProjectWidget(viewer)
    assert w.open_project(str(loc))
    _idle(qtbot, w)
    w.select_collection("p")
    _idle(qtbot, w)
    pts = viewer.layers[ANNOTATION_LAYER]
    assert pts._type_string == "points"
    pts.add([[3.0, 4.0]])
    pts.add([[10.0, 20.0]])
    assert w.save()
    _idle(qtbot, w)
    w.select_collection("c")
    _idle(qtbot, w)
    shapes = viewer.layers[ANNOTATION_LAYER]
    assert shapes._type_string == "shapes"
    shapes.add(np.array([[1, 1], [1, 9], [8, 9], [8, 1]], float), shape_type="rectangle")
    assert w.save()
    _idle(qtbot, w)
    w.select_collection("m")
    _idle(qtbot, w)
    assert not w.label_box.isVisibleTo(w)   # a mask template without labels
    lab = viewer.layers[ANNOTATION_LAYER]
    assert lab.data.shape == (24, 32)
    lab.data[2:6, 3:9] = 1
    assert w.save()
    _idle(qtbot, w)
    with Store.open(loc) as other:
        (p,) = other.annotations("ada", "p")
        assert p.value["points"] == [[3.0, 4.0], [10.0, 20.0]]
        assert p.value["labels"] == ["spot", "spot"]
        (c,) = other.annotations("ada", "c")
        assert c.value["shapes"][0]["type"] == "rectangle"
        assert c.value["shapes"][0]["label"] == "cell"
        (m,) = other.annotations("ada", "m")
        mask = other.load_mask(m)
        assert mask.sum() == 24 and mask[2:6, 3:9].all()
    # a label template whose tools omit "keys": no key bindings on the image
    w.select_collection("k")
    _idle(qtbot, w)
    assert w.label_box.isVisibleTo(w)
    assert not [k for k in viewer.layers["project image"].keymap if str(k) == "1"]
    # going back opens the first image still to do; image 0 shows its saved points
    w.select_collection("p")
    _idle(qtbot, w)
    assert w.current == 1 and len(viewer.layers[ANNOTATION_LAYER].data) == 0
    w.go(0)
    _idle(qtbot, w)
    np.testing.assert_allclose(viewer.layers[ANNOTATION_LAYER].data, [[3, 4], [10, 20]])


def test_dock_refuses_corrupt_project(make_napari_viewer, qtbot, tmp_path, notifications):
    from expertloop.widgets.store import AnnotationProjectWidget

    (tmp_path / "expertloop-project.db").write_bytes(b"garbage" * 50)
    w = AnnotationProjectWidget(make_napari_viewer())
    w.open_project(str(tmp_path))
    _idle(qtbot, w)
    assert any("not a SQLite database" in str(n.message) for n in notifications)
    assert w.store is None and "not opened" in w.status.text()
    assert not w.open_project(str(tmp_path / "new"), create_as="")
    assert w.open_project(str(tmp_path / "new"), create_as="zoe")
    _idle(qtbot, w)
    assert w.me == "zoe" and w.coll.count() == 0


def test_admin_panel(make_napari_viewer, qtbot, tmp_path, notifications):
    from expertloop.widgets.store import StoreAdminWidget

    paths = _images(tmp_path, 3)
    loc = tmp_path / "proj"
    with Store.create(loc, admin="ada") as st:
        st.add_user("ada", "bob")
    w = StoreAdminWidget(make_napari_viewer())
    assert w.open_project(str(loc))
    assert w.admin.currentText() == "ada"
    w.user_name.setText("cy")
    w.user_expertise.setText("haematology, cytology")
    assert w.add_user()
    w.tpl_name.setText("kind")
    w.tpl_labels.setText("a, b")
    assert w.add_template()
    w.coll_name.setText("batch1")
    w.coll_tpl.setCurrentText("kind")
    w.coll_images.setText(str(tmp_path / "img*.tif"))
    assert w.add_collection()
    w.assign_coll.setCurrentText("batch1")
    w.assign_user.setCurrentText("bob")
    assert w.assign()
    w.assign_user.setCurrentText("cy")
    assert w.assign()
    w.coll_images.setText(str(tmp_path / "nothing*.tif"))
    assert not w.add_collection()
    assert any("no file matches" in str(n.message) for n in notifications)
    with Store.open(loc) as st:
        assert st.user("cy").expertise == ["haematology", "cytology"]
        info = st.collection("ada", "batch1")
        assert info.n_images == 3 and info.annotators == ["bob", "cy"]
        for who, labs in [("bob", "aab"), ("cy", "abb")]:
            for p, lab in zip(paths, labs):
                st.annotate(who, "batch1", p, label=lab)
    w.run_report()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=20000)
    text = w.report.toPlainText()
    assert "3 images" in text and "bob: 3 done, 0 to do" in text
    # bob a a b, cy a b b: po 2/3, pe 4/9 -> kappa 0.4
    assert "Cohen's kappa bob vs cy: 0.400 over 3 images" in text


def test_label_dock_shows_its_key_map_and_saves_nothing_unchosen(
        make_napari_viewer, qtbot, tmp_path, notifications):
    from expertloop.widgets.store import AnnotationProjectWidget

    loc, files = fresh_location("sqlite", tmp_path)
    paths = _images(tmp_path, 2)
    with Store.create(loc, admin="ada", files_dir=files) as st:
        st.add_template("ada", "phase", "label", labels=["interphase", "mitotic"])
        st.add_collection("ada", "cells", "phase", images=paths)
        st.assign("ada", "cells", "ada")
    viewer = make_napari_viewer()
    w = AnnotationProjectWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.open_project(loc)
    _idle(qtbot, w)
    w.set_user("ada")
    w.select_collection("cells")
    _idle(qtbot, w)
    # the 1-9 mapping is in the dock, not only in a tooltip
    assert w.keys_lbl.isVisibleTo(w)
    assert "1 = interphase, 2 = mitotic" in w.keys_lbl.text()
    # nothing preselected: Save without a choice records nothing, and says why
    assert w.label_box.currentIndex() == -1 and w.label_box.currentText() == ""
    assert not w.save()
    with Store.open(loc, files_dir=files) as other:
        assert other.annotations("ada", "cells") == []
    assert any("choose a label first" in str(n.message) for n in notifications)
    assert "nothing was saved" in w.status.text()
    # a chosen label is saved; the next image again starts with no choice
    w.label_box.setCurrentText("mitotic")
    assert w.save(advance=True)
    assert w.current == 1 and w.label_box.currentIndex() == -1
    _idle(qtbot, w)
    w.go(0)  # the image's own earlier label is shown again
    assert w.label_box.currentText() == "mitotic"
    _idle(qtbot, w)


def test_dock_sees_annotations_saved_elsewhere_live(make_napari_viewer, qtbot, tmp_path):
    """'A napari user sees the labels arrive': bob labels through the web service
    while ada (admin) has the dock open; her own annotation changed elsewhere
    replaces the shown one only while she has not edited it."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from expertloop.store import auth
    from expertloop.web.app import WebConfig, create_app
    from expertloop.widgets.store import AnnotationProjectWidget

    loc = tmp_path / "proj"
    paths = _images(tmp_path, 3)
    with Store.create(loc, admin="ada") as st:
        st.add_user("ada", "bob")
        st.add_template("ada", "phase", "label", labels=["interphase", "mitotic"])
        st.add_collection("ada", "cells", "phase", images=paths)
        st.assign("ada", "cells", "bob")
        st.assign("ada", "cells", "ada")
        ids = [im.id for im in st.images("ada", "cells")]
    viewer = make_napari_viewer()
    w = AnnotationProjectWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.poller.interval = 0.1
    w.open_project(str(loc))
    _idle(qtbot, w)
    w.select_collection("cells")
    _idle(qtbot, w)
    assert w.current == 0 and w.poller.active and w.others_lbl.text() == "others: none yet"

    web_store = Store.open(loc)  # the server's own connection, as `expertloop serve`
    try:
        api = TestClient(create_app(web_store, WebConfig(image_roots=[tmp_path])))
        hdr = {"Authorization": f"Bearer {auth.create_token(web_store, 'bob')}"}
        r = api.post("/api/c/1/annotations", headers=hdr,
                     json={"image_id": ids[0], "label": "mitotic", "time_spent": 1.5})
        assert r.status_code == 200
        qtbot.waitUntil(lambda: "bob: mitotic" in w.list.item(0).text(), timeout=10000)
        assert w.others_lbl.text() == "others: bob: mitotic"
        assert "bob 1/3" in w.progress_lbl.text() and "new annotations from bob" in w.live_lbl.text()
        # ada's own annotation of the shown image saved elsewhere: shown, as nothing was edited
        web_store.annotate("ada", "cells", ids[0], label="interphase")
        qtbot.waitUntil(lambda: w.label_box.currentText() == "interphase", timeout=10000)
        assert w.item_state(1) == "todo" and ids[0] in w.done
        # now she picks another label; a change elsewhere does not take it from her
        w.label_box.setCurrentText("mitotic")
        checks = w.poller.checks
        web_store.annotate("ada", "cells", ids[0], label="interphase", time_spent=9.0)
        qtbot.waitUntil(lambda: "unsaved edits are kept" in w.live_lbl.text(), timeout=10000)
        assert w.poller.checks > checks and w.label_box.currentText() == "mitotic"
        assert w.save()
        _idle(qtbot, w)
        (rec,) = web_store.annotations("ada", "cells", annotator="ada")
        assert rec.label == "mitotic"
    finally:
        web_store.close()
    w.poller.stop()
    _idle(qtbot, w)


def test_dock_opens_big_collection_and_saves_in_the_worker(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Checking every file of a collection and saving run in the job runner:
    the GUI keeps serving events meanwhile, and Cancel stops the check."""
    import threading

    from qtpy.QtCore import QTimer

    import expertloop.widgets.store as dock_mod
    from expertloop.widgets.store import AnnotationProjectWidget

    paths = _images(tmp_path, 2) + [str(tmp_path / f"gone{i}.tif") for i in range(400)]
    loc = tmp_path / "proj"
    with Store.create(loc, admin="ada") as st:
        st.add_template("ada", "phase", "label", labels=["a", "b"])
        st.add_collection("ada", "big", "phase", images=paths)
    threads: set = set()
    real_local_path = dock_mod.local_path

    def slow_local_path(uri):  # a slow network share: 2 ms per file
        threads.add(threading.current_thread() is threading.main_thread())
        time.sleep(0.002)
        return real_local_path(uri)

    monkeypatch.setattr(dock_mod, "local_path", slow_local_path)
    monkeypatch.setattr(dock_mod, "CHECK_STEP", 20)
    viewer = make_napari_viewer()
    w = AnnotationProjectWidget(viewer)
    w.open_project(str(loc))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(w.busy))
    timer.start(10)
    _idle(qtbot, w)
    timer.stop()
    assert w.collection.name == "big" and len(w.missing) == 400
    assert threads == {False}  # every file was checked in the worker
    assert sum(ticks) >= 20    # the event loop ran all along (>= 0.2 s of ticks while busy)
    # saving runs in the worker too
    saved_in: list = []
    real_annotate = w.store.annotate

    def annotate(*a, **kw):
        saved_in.append(threading.current_thread() is threading.main_thread())
        return real_annotate(*a, **kw)

    monkeypatch.setattr(w.store, "annotate", annotate)
    w.label_box.setCurrentText("b")
    assert w.save()
    _idle(qtbot, w)
    assert saved_in == [False] and w.done == {w.images[0].id}
    # Cancel while the files are checked: the collection is not half shown
    w._collection_changed()
    qtbot.waitUntil(lambda: w._running_kind == "load", timeout=10000)
    w.runner.cancel()
    _idle(qtbot, w)
    assert "cancelled" in w.runner.status and w.collection is None
    w.poller.stop()
