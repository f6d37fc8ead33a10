"""Hostile store exchange: path traversal through names and package files,
annotator-set mask references, a refused save_mask, colliding export names,
COCO/CSV imports and values (issue 18 defects 1, 2, 3, 5, 6, 7, 13, 15)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile

from expertloop.store import Store, StoreError, StoreValidationError
from expertloop.store.exchange import (
    export_masks,
    import_coco,
    import_csv,
    import_masks,
)


def _files(root):
    return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path):
    st = Store.create(str(tmp_path / "project"), admin="ada",
                      files_dir=tmp_path / "project")
    st.add_user("ada", "bob")
    st.add_template("ada", "seg", "mask", labels=["nucleus", "cytoplasm"])
    st.add_collection("ada", "masks", "seg",
                      images=["/data/x/img.tif", "/data/y/img.tif"])
    st.assign("ada", "masks", "bob")
    yield st
    st.close()


@pytest.mark.parametrize("name", ["../x", "a/b", "..", "x\\..\\y", "/etc/x", ".hidden", "", "a" * 65,
                                  "tab\tname"])
def test_add_user_refuses_names_that_are_paths(store, name):
    with pytest.raises(StoreValidationError):
        store.add_user("ada", name)
    assert [u.name for u in store.users()] == ["ada", "bob"]


def test_annotator_name_cannot_write_outside_export_folder(tmp_path, store, monkeypatch):
    """The export defends itself even against a name that add_user would
    refuse today (a database written by an older version, or edited)."""
    from expertloop.store import core

    evil = "../../../../" + str(tmp_path / "victim").lstrip("/")
    monkeypatch.setattr(core, "_check_user_name", lambda n: n)
    store.add_user("ada", evil)
    monkeypatch.undo()
    store.assign("ada", "masks", evil)
    store.save_mask(evil, "masks", "/data/x/img.tif", np.ones((4, 4), np.uint16))
    out = tmp_path / "export" / "a" / "b"
    before = _files(tmp_path) - _files(tmp_path / "export") if (tmp_path / "export").exists() \
        else _files(tmp_path)
    written = export_masks(store, "ada", "masks", out)
    after = _files(tmp_path)
    new = after - before
    assert new and all(p.resolve().is_relative_to(out.resolve()) for p in new)
    assert all(p.parent == out.resolve() for p in written)
    assert not list(tmp_path.glob("victim*"))


def test_same_file_name_in_two_folders_round_trips(tmp_path, store):
    a, b = np.full((3, 3), 1, np.uint16), np.full((3, 3), 2, np.uint16)
    store.save_mask("bob", "masks", "/data/x/img.tif", a)
    store.save_mask("bob", "masks", "/data/y/img.tif", b)
    files = export_masks(store, "ada", "masks", tmp_path / "out")
    assert len({f.name for f in files}) == 2
    store.add_collection("ada", "again", "seg", images=["/data/x/img.tif", "/data/y/img.tif"])
    store.assign("ada", "again", "bob")
    assert import_masks(store, "bob", "again", tmp_path / "out") == 2
    got = {r.uri: store.load_mask(r) for r in store.annotations("ada", "again")}
    assert {u: int(m.max()) for u, m in got.items()} == {"/data/x/img.tif": 1,
                                                         "/data/y/img.tif": 2}


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_mask_import_reads_only_inside_the_package(tmp_path, store, kind):
    private = tmp_path / "private.tif"
    tifffile.imwrite(private, np.full((3, 3), 1, np.uint16))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    tifffile.imwrite(pkg / "ok.tif", np.full((3, 3), 2, np.uint16))
    with open(pkg / "masks.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["uri", "annotator", "file", "label_names", "source"])
        w.writerow(["/data/y/img.tif", "bob", "ok.tif", "{}", "manual"])
        w.writerow(["/data/x/img.tif", "bob",
                    "../private.tif" if kind == "dotdot" else str(private), "{}", "manual"])
    with pytest.raises(StoreValidationError, match="line 3"):
        import_masks(store, "bob", "masks", pkg)
    # nothing at all was imported: not even the valid first row
    assert store.annotations("ada", "masks") == []


def test_annotator_cannot_set_mask_ref(tmp_path, store):
    with pytest.raises(StoreValidationError, match="mask_ref"):
        store.annotate("bob", "masks", "/data/x/img.tif", {"mask": "x"},
                       mask_ref="../../etc/hostname")
    with pytest.raises(StoreValidationError, match="mask_ref"):
        store.annotate_many("bob", "masks", [dict(image="/data/x/img.tif", value={},
                                                  mask_ref="/etc/hostname")])
    assert store.annotations("ada", "masks") == []


def test_load_mask_refuses_a_reference_outside_the_masks_folder(tmp_path, store):
    rec = store.save_mask("bob", "masks", "/data/x/img.tif", np.ones((3, 3), np.uint16))
    forged = type(rec)(**{**rec.__dict__, "mask_ref": "../../elsewhere.tif"})
    with pytest.raises(StoreError, match="points outside"):
        store.load_mask(forged)


def test_refused_save_mask_keeps_the_saved_mask(tmp_path, store):
    m = np.arange(16, dtype=np.uint16).reshape(4, 4) % 3
    store.save_mask("bob", "masks", "/data/x/img.tif", m, label_names={1: "nucleus"})
    with pytest.raises(StoreValidationError, match="not in template"):
        store.save_mask("bob", "masks", "/data/x/img.tif", np.zeros((4, 4), np.uint16),
                        label_names={2: "cell"})
    (rec,) = store.annotations("ada", "masks")
    np.testing.assert_array_equal(store.load_mask(rec), m)
    # a later good save replaces it and leaves no stray file behind
    store.save_mask("bob", "masks", "/data/x/img.tif", m + 1)
    (rec,) = store.annotations("ada", "masks")
    np.testing.assert_array_equal(store.load_mask(rec), m + 1)
    assert len(list((tmp_path / "project" / "masks").rglob("*.tif"))) == 1


# ------------------------------------------------------------------ COCO, CSV, values
@pytest.fixture
def contours(tmp_path):
    st = Store.create(str(tmp_path / "cproject"), admin="ada")
    st.add_template("ada", "cells", "contour", labels=["cell"])
    st.add_collection("ada", "c", "cells", images=["/d/a.png", "/d/b.png"])
    yield st
    st.close()


def _coco(tmp_path, anns, name="in.json"):
    doc = {"images": [{"id": 1, "file_name": "/d/a.png"}, {"id": 2, "file_name": "/d/b.png"}],
           "categories": [{"id": 1, "name": "cell"}], "annotations": anns}
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def _box(i, image_id=1, bbox=(1, 2, 3, 4), **kw):
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": list(bbox), **kw}


@pytest.mark.parametrize("bad,match", [
    ({"category_id": 9}, "unknown category_id 9"),
    ({"bbox": [1, 2, float("nan"), 4]}, "finite"),
    ({"bbox": [1, 2, -3, 4]}, "must be positive"),
    ({"bbox": [1, 2]}, "at least 4"),
    ({"image_id": 77}, "unknown image 77"),
    ({"segmentation": [[1, 2, 3, "x", 5, 6]]}, "not a list of numbers"),
])
def test_coco_import_refuses_bad_annotations_and_writes_nothing(tmp_path, contours, bad, match):
    p = _coco(tmp_path, [_box(1, image_id=2), {**_box(2), **bad}])
    with pytest.raises(StoreValidationError, match=match):
        import_coco(contours, "ada", "c", p)
    assert contours.annotations("ada", "c") == []


def test_coco_import_without_image_id_is_a_clear_error(tmp_path, contours):
    a = _box(1)
    del a["image_id"]
    with pytest.raises(StoreValidationError, match="annotation 1 has no image_id"):
        import_coco(contours, "ada", "c", _coco(tmp_path, [a]))
    with pytest.raises(StoreValidationError, match="not a JSON object"):
        import_coco(contours, "ada", "c", _coco(tmp_path, [[1, 2]]))


def test_coco_reimport_does_not_silently_replace_shapes(tmp_path, contours):
    """Defect 7: re-importing a one-shape file replaced 1000 saved shapes with 1."""
    many = _coco(tmp_path, [_box(i, bbox=(i, 0, 1, 1)) for i in range(1, 1001)], "many.json")
    one = _coco(tmp_path, [_box(1, bbox=(5000, 0, 2, 2))], "one.json")
    assert import_coco(contours, "ada", "c", many) == 1
    with pytest.raises(StoreValidationError, match=r"1 image\(s\) already have shapes .*1000 shapes"):
        import_coco(contours, "ada", "c", one)
    (rec,) = contours.annotations("ada", "c")
    assert len(rec.value["shapes"]) == 1000
    import_coco(contours, "ada", "c", one, on_existing="merge")
    import_coco(contours, "ada", "c", one, on_existing="merge")  # identical shapes once
    (rec,) = contours.annotations("ada", "c")
    assert len(rec.value["shapes"]) == 1001
    import_coco(contours, "ada", "c", one, on_existing="replace")
    (rec,) = contours.annotations("ada", "c")
    assert len(rec.value["shapes"]) == 1


@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), -1.0, "abc"])
def test_time_spent_must_be_finite_seconds(store, seconds):
    with pytest.raises(StoreValidationError, match="time_spent"):
        store.annotate_many("bob", "masks", [dict(image="/data/x/img.tif", value={"mask": 1},
                                                  time_spent=seconds)])
    assert store.annotations("ada", "masks") == []


def test_shape_points_must_be_finite(contours):
    with pytest.raises(StoreValidationError, match="finite"):
        contours.annotate("ada", "c", "/d/a.png", {"shapes": [
            {"type": "polygon", "points": [[0, 0], [1, float("nan")], [2, 2]]}]})


def test_csv_with_a_bom_imports(tmp_path):
    """Defect 15: Excel's byte-order mark made 'uri' an unknown column."""
    with Store.create(str(tmp_path / "lp"), admin="ada") as st:
        st.add_template("ada", "kind", "label", labels=["a", "b"])
        st.add_collection("ada", "one", "kind", images=["/d/1.png"])
        p = tmp_path / "bom.csv"
        p.write_bytes("uri,label,time_spent\r\n/d/1.png,a,2.5\r\n".encode("utf-8-sig"))
        assert import_csv(st, "ada", "one", p) == 1
        (rec,) = st.annotations("ada", "one")
        assert rec.label == "a" and rec.time_spent == 2.5
        p.write_text("uri,label,time_spent\n/d/1.png,a,inf\n")
        with pytest.raises(StoreValidationError, match="time_spent"):
            import_csv(st, "ada", "one", p)


def test_mask_index_without_uri_is_a_clear_error(tmp_path, store):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    tifffile.imwrite(pkg / "ok.tif", np.full((3, 3), 1, np.uint16))
    (pkg / "masks.csv").write_text("annotator,file\nbob,ok.tif\n")
    with pytest.raises(StoreValidationError, match="line 2: no uri"):
        import_masks(store, "bob", "masks", pkg)
