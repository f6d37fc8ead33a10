"""CSV / COCO / TIFF import-export round trips (SQLite and PostgreSQL)."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from expertloop.store import StoreValidationError
from expertloop.store.exchange import (
    export_coco,
    export_csv,
    export_masks,
    import_coco,
    import_csv,
    import_masks,
)


def _rows(path):
    with open(path, newline="") as f:
        return sorted(tuple(r.values()) for r in csv.DictReader(f))


def test_csv_round_trip(project, tmp_path):
    project.annotate("bob", "scans", "/data/s1.png", label="normal", time_spent=1.5)
    project.annotate("cy", "scans", "/data/s1.png", label="abnormal")
    project.annotate("cy", "scans", "/data/s2.png", label="unsure", source="accepted-model")
    first = tmp_path / "labels.csv"
    assert export_csv(project, "ada", "scans", first) == 3
    assert _rows(first) == [
        ("/data/s1.png", "abnormal", "cy", "manual", ""),
        ("/data/s1.png", "normal", "bob", "manual", "1.5"),
        ("/data/s2.png", "unsure", "cy", "accepted-model", "")]
    project.add_collection("ada", "copy", "kind")
    project.assign("ada", "copy", "bob")
    project.assign("ada", "copy", "cy")
    assert import_csv(project, "ada", "copy", first, add_images=True) == 3
    second = tmp_path / "again.csv"
    export_csv(project, "ada", "copy", second)
    assert _rows(second) == _rows(first)
    # the import was written by ada, for bob and cy
    rec = project.search("ada", collection="copy", annotator="bob")[0]
    assert (rec.annotator, rec.created_by) == ("bob", "ada")


def test_csv_bad_input(project, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,label\n/data/s1.png,sideways\n")
    with pytest.raises(StoreValidationError, match="sideways"):
        import_csv(project, "bob", "scans", bad)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("path,kind\nx,y\n")
    with pytest.raises(StoreValidationError, match="missing column"):
        import_csv(project, "bob", "scans", nolabel)
    with pytest.raises(FileNotFoundError):
        import_csv(project, "bob", "scans", tmp_path / "none.csv")
    assert project.annotations("ada", "scans") == []


def test_coco_round_trip(project, tmp_path):
    project.add_template("ada", "outline", "contour", labels=["cell", "debris"])
    project.add_collection("ada", "cells", "outline", images=[
        {"uri": "/data/c1.png", "meta": {"width": 64, "height": 48}}, "/data/c2.png"])
    project.assign("ada", "cells", "bob")
    project.assign("ada", "cells", "cy")
    tri = [[10.0, 10.0], [10.0, 30.0], [25.0, 20.0]]        # (y, x)
    box = [[5.0, 40.0], [5.0, 60.0], [15.0, 60.0], [15.0, 40.0]]
    project.annotate("bob", "cells", "/data/c1.png", {"shapes": [
        {"type": "polygon", "points": tri, "label": "cell"},
        {"type": "rectangle", "points": box, "label": "debris"}]})
    project.annotate("cy", "cells", "/data/c2.png", {"shapes": [
        {"type": "polygon", "points": tri, "label": "debris"}]})
    out = tmp_path / "coco.json"
    coco = export_coco(project, "ada", "cells", out)
    assert [c["name"] for c in coco["categories"]] == ["cell", "debris"]
    first = coco["annotations"][0]
    # COCO is (x, y): triangle x in 10..30, y in 10..25 -> bbox [10, 10, 20, 15]
    assert first["bbox"] == [10.0, 10.0, 20.0, 15.0]
    assert first["area"] == pytest.approx(0.5 * 20 * 15)
    assert first["segmentation"] == [[10.0, 10.0, 30.0, 10.0, 20.0, 25.0]]
    assert coco["images"][0]["width"] == 64
    project.add_collection("ada", "cells2", "outline")
    project.assign("ada", "cells2", "bob")
    project.assign("ada", "cells2", "cy")
    assert import_coco(project, "ada", "cells2", out, add_images=True) == 2
    a = {(r.uri, r.annotator): r.value for r in project.annotations("ada", "cells")}
    b = {(r.uri, r.annotator): r.value for r in project.annotations("ada", "cells2")}
    assert a == b
    again = export_coco(project, "ada", "cells2", tmp_path / "coco2.json")
    strip = lambda c: [(x["bbox"], x["segmentation"], x["category_id"],  # noqa: E731
                        x["attributes"]) for x in c["annotations"]]
    assert strip(again) == strip(coco)
    with pytest.raises(StoreValidationError, match="contour tasks"):
        export_coco(project, "ada", "scans", tmp_path / "x.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"images": []}))
    with pytest.raises(StoreValidationError, match="not COCO"):
        import_coco(project, "ada", "cells2", broken)


def test_tiff_mask_round_trip(project, tmp_path, monkeypatch):
    project.add_template("ada", "seg", "mask", labels=["nucleus", "cytoplasm"])
    project.add_collection("ada", "masks", "seg", images=["/data/m1.tif", "/data/m2.tif"])
    project.assign("ada", "masks", "bob")
    rng = np.random.default_rng(1)
    m1 = rng.integers(0, 3, (20, 30)).astype(np.uint16)
    m2 = np.zeros((4, 8, 8), np.uint16)
    m2[1:3, 2:5, 2:5] = 7
    project.save_mask("bob", "masks", "/data/m1.tif", m1, label_names={1: "nucleus"})
    project.save_mask("bob", "masks", "/data/m2.tif", m2)
    with pytest.raises(StoreValidationError, match="not in template"):
        project.save_mask("bob", "masks", "/data/m1.tif", m1, label_names={2: "cell"})
    with pytest.raises(StoreValidationError, match="integer label image"):
        project.save_mask("bob", "masks", "/data/m1.tif", m1.astype(float))
    files = export_masks(project, "ada", "masks", tmp_path / "out")
    assert sorted(re.sub(r"__i\d+__", "__", f.name) for f in files) == ["m1__bob.tif", "m2__bob.tif"]
    project.add_collection("ada", "masks2", "seg", images=["/data/m1.tif", "/data/m2.tif"])
    project.assign("ada", "masks2", "bob")
    assert import_masks(project, "bob", "masks2", tmp_path / "out") == 2
    got = {r.uri: project.load_mask(r) for r in project.annotations("ada", "masks2")}
    np.testing.assert_array_equal(got["/data/m1.tif"], m1)
    np.testing.assert_array_equal(got["/data/m2.tif"], m2)
    rec = project.search("ada", collection="masks2", annotator="bob")[0]
    assert rec.value["label_names"] == {"1": "nucleus"} and rec.value["shape"] == [20, 30]
    # a database URL without a files folder: a clear message, nothing written
    if project.project_dir is None:
        from expertloop.store import Store, StoreError

        monkeypatch.delenv("EXPERTLOOP_STORE_FILES", raising=False)
        with Store.open(project.url) as bare:
            assert bare.files_dir is None
            with pytest.raises(StoreError, match="EXPERTLOOP_STORE_FILES"):
                bare.save_mask("bob", "masks", "/data/m1.tif", m1)
        monkeypatch.setenv("EXPERTLOOP_STORE_FILES", str(tmp_path / "shared"))
        with Store.open(project.url) as env:
            assert env.files_dir == tmp_path / "shared"
    # a mask changed behind the store's back is detected
    (project.files_dir / rec.mask_ref).write_bytes(b"tampered")
    with pytest.raises(Exception, match="checksum"):
        project.load_mask(rec)
