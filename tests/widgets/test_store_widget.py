"""The 'Annotation project' dock and the admin panel in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from expertloop.store import Store, push_review_tasks
from expertloop.store.testing import backend_params, fresh_location


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
    w.set_user("bob")
    # bob sees only his collection
    assert [w.coll.itemData(i) for i in range(w.coll.count())] == ["cells"]
    w.select_collection("cells")
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
    # a second, independent connection sees the annotation at once
    with Store.open(loc, files_dir=files) as other:
        (rec,) = other.annotations("ada", "cells")
        assert (rec.uri, rec.label, rec.annotator, rec.source) == (
            paths[0], "mitotic", "bob", "manual")
        assert rec.time_spent is not None and rec.time_spent >= 0
    assert w.list.item(1).background().color().name() == COLOURS["todo"]
    w.go(1)
    assert w.list.item(0).background().color().name() == COLOURS["annotated"]
    assert w.list.item(1).background().color().name() == COLOURS["current"]
    # image 1 has a model suggestion: accepting it saves 'accepted-model' and moves on
    assert w.suggestion.text() == "mitotic (0.62)"
    qtbot.mouseClick(w.accept_btn, Qt.LeftButton)
    assert w.current == 2
    # keyboard: '1' on the image layer saves the first label and moves on
    layer = viewer.layers[IMAGE_LAYER]
    (key_1,) = [f for k, f in layer.keymap.items() if str(k) == "1"]
    key_1(layer)
    # a label outside the set is refused with a message and nothing is written
    assert not w.save(label="prophase")
    assert any("not in template" in str(n.message) for n in notifications)
    with Store.open(loc, files_dir=files) as other:
        got = {(r.uri, r.label, r.source) for r in other.annotations("ada", "cells")}
    assert got == {(paths[0], "mitotic", "manual"), (paths[1], "mitotic", "accepted-model"),
                   (paths[2], "interphase", "manual")}
    assert "3/4 annotated by bob" in w.progress_lbl.text()


def test_dock_geometric_tasks(make_napari_viewer, tmp_path):
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
    w.select_collection("p")
    pts = viewer.layers[ANNOTATION_LAYER]
    assert pts._type_string == "points"
    pts.add([[3.0, 4.0]])
    pts.add([[10.0, 20.0]])
    assert w.save()
    w.select_collection("c")
    shapes = viewer.layers[ANNOTATION_LAYER]
    assert shapes._type_string == "shapes"
    shapes.add(np.array([[1, 1], [1, 9], [8, 9], [8, 1]], float), shape_type="rectangle")
    assert w.save()
    w.select_collection("m")
    assert not w.label_box.isVisibleTo(w)   # a mask template without labels
    lab = viewer.layers[ANNOTATION_LAYER]
    assert lab.data.shape == (24, 32)
    lab.data[2:6, 3:9] = 1
    assert w.save()
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
    assert w.label_box.isVisibleTo(w)
    assert not [k for k in viewer.layers["project image"].keymap if str(k) == "1"]
    # going back opens the first image still to do; image 0 shows its saved points
    w.select_collection("p")
    assert w.current == 1 and len(viewer.layers[ANNOTATION_LAYER].data) == 0
    w.go(0)
    np.testing.assert_allclose(viewer.layers[ANNOTATION_LAYER].data, [[3, 4], [10, 20]])


def test_dock_refuses_corrupt_project(make_napari_viewer, tmp_path, notifications):
    from expertloop.widgets.store import AnnotationProjectWidget

    (tmp_path / "expertloop-project.db").write_bytes(b"garbage" * 50)
    w = AnnotationProjectWidget(make_napari_viewer())
    assert not w.open_project(str(tmp_path))
    assert any("not a SQLite database" in str(n.message) for n in notifications)
    assert w.store is None
    assert not w.open_project(str(tmp_path / "new"), create_as="")
    assert w.open_project(str(tmp_path / "new"), create_as="zoe")
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
    w.set_user("ada")
    w.select_collection("cells")
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
    w.go(0)  # the image's own earlier label is shown again
    assert w.label_box.currentText() == "mitotic"
