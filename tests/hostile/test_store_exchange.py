"""Hostile store exchange: path traversal through names and package files,
annotator-set mask references, a refused save_mask, colliding export names
(issue 18 defects 1, 2, 3, 5, 6)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile

from expertloop.store import Store, StoreError, StoreValidationError
from expertloop.store.exchange import export_masks, import_masks


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


def test_annotator_name_cannot_write_outside_export_folder(tmp_path, store):
    evil = "../../../../" + str(tmp_path / "victim").lstrip("/")
    store.add_user("ada", evil)
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
