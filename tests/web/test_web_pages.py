"""Pages, images and annotations of ``expertloop serve``: permissions object by
object, images by opaque id only, escaping, and what the store records."""

from __future__ import annotations

import os

import numpy as np
import pytest
from web_helpers import login, page_csrf


def test_annotate_and_store_sees_it(served, client_for):
    store, _, _ = served
    c = client_for("bob")
    page = c.get("/c/1")
    assert page.status_code == 200
    for needle in ('data-label="abnormal"', "<kbd>1</kbd>", 'class="thumb todo"',
                   'id="stats"', "0</b> / <span id=\"total-count\">5"):
        assert needle in page.text
    # no server path or URI reaches the browser
    root = str(served[2])
    for url in ("/", "/c/1", "/c/1/review?label=normal", "/api/c/1/images",
                "/api/collections"):
        assert root not in c.get(url).text, url
    token = page_csrf(c, "/c/1")
    hdr = {"X-CSRF-Token": token}
    r = c.post("/api/c/1/annotations", headers=hdr,
               json={"image_id": 1, "label": "normal", "time_spent": 3.25})
    assert r.status_code == 200, r.text
    r = c.post("/api/c/1/annotations", headers=hdr,
               json={"image_id": 2, "label": "abnormal", "time_spent": 1.5})
    assert r.status_code == 200
    bad = c.post("/api/c/1/annotations", headers=hdr, json={"image_id": 3, "label": "cat"})
    assert bad.status_code == 400 and "not in template" in bad.json()["detail"]
    recs = {r.image_id: r for r in store.annotations("ada", "scans")}
    assert set(recs) == {1, 2}
    assert (recs[1].label, recs[1].annotator, recs[1].time_spent, recs[1].source) == \
        ("normal", "bob", 3.25, "accepted-model")  # kept the prediction
    assert (recs[2].label, recs[2].source, recs[2].updated_by) == ("abnormal", "manual", "bob")
    assert "2</b> / <span" in c.get("/c/1").text
    # a box on the contour task, in napari's (row, col) corner order
    box = [[2.0, 3.0], [2.0, 10.0], [8.0, 10.0], [8.0, 3.0]]
    r = c.post("/api/c/2/annotations", headers=hdr, json={
        "image_id": 1, "value": {"shapes": [{"type": "rectangle", "points": box,
                                             "label": "cell"}]}, "time_spent": 4})
    assert r.status_code == 200, r.text
    (rec,) = store.annotations("ada", "cells")
    assert rec.value["shapes"][0]["points"] == box and rec.annotator == "bob"


def test_grid_review_flips_and_accepts(served, client_for):
    store, _, _ = served
    c = client_for("cy")
    page = c.get("/c/1/review?label=normal")
    assert page.status_code == 200
    assert "normal (4)" in page.text and "abnormal (1)" in page.text
    ids = [1, 2, 5, 4]  # the four predicted "normal", lowest confidence first
    assert [int(x) for x in __import__("re").findall(r'name="ids" value="(\d+)"',
                                                     page.text)] == ids
    r = c.post("/c/1/review", data={"csrf": page_csrf(c, "/c/1/review?label=normal"),
                                    "label": "normal", "ids": [str(i) for i in ids],
                                    "new_2": "abnormal", "new_5": "unsure",
                                    "elapsed": "8"})
    assert r.status_code == 200 and "Nothing left to review" in r.text
    recs = {r.image_id: r for r in store.annotations("ada", "scans", annotator="cy")}
    assert {i: (recs[i].label, recs[i].source) for i in ids} == {
        1: ("normal", "accepted-model"), 2: ("abnormal", "manual"),
        4: ("normal", "accepted-model"), 5: ("unsure", "manual")}
    assert all(recs[i].time_spent == pytest.approx(2.0) for i in ids)
    # the loop's reader sees the experts' decisions
    from expertloop.store import accepted_annotations

    got = {r["image_id"]: r["source"] for r in accepted_annotations(store, "scans",
                                                                    actor="ada")}
    assert got[2] == "manual" and got[1] == "accepted-model"


def test_other_annotators_objects_are_404(served, client_for):
    store, _, _ = served
    store.annotate("bob", "cells", 1, {"shapes": []})
    store.annotate("bob", "scans", 1, label="normal")
    c = client_for("cy")  # assigned to scans only
    token = page_csrf(c)
    for url in ("/c/2", "/c/2/review?label=cell", "/img/2/1", "/api/c/2/images",
                "/api/c/2/annotations", "/api/c/1/annotations?annotator=bob",
                "/c/99", "/img/1/99", "/img/99/1"):
        r = c.get(url)
        assert r.status_code == 404, (url, r.status_code)
        assert "rectangle" not in r.text and "scan" not in r.text
    r = c.post("/api/c/2/annotations", headers={"X-CSRF-Token": token},
               json={"image_id": 1, "value": {"shapes": []}})
    assert r.status_code == 404
    # an image id that exists, but in another collection only
    store.add_images("ada", "cells", [store.image("ada", "scans", 5).uri])
    store.unassign("ada", "scans", "cy")
    assert c.get("/img/1/5").status_code == 404
    # annotators see their own annotations only; admin pages are for admins
    bob = client_for("bob")
    assert [a["annotator"] for a in bob.get("/api/c/1/annotations").json()] == ["bob"]
    assert bob.get("/admin").status_code == 403
    r = bob.post("/admin/users", data={"csrf": page_csrf(bob), "name": "mallory",
                                       "password": "mallory-pw-1"})
    assert r.status_code == 403 and "mallory" not in {u.name for u in store.users()}
    r = bob.post("/admin/assign", data={"csrf": page_csrf(bob), "collection": "1",
                                        "user": "bob", "action": "unassign"})
    assert r.status_code == 403


def test_images_by_opaque_id_only(served, client_for, tmp_path):
    store, _, root = served
    c = client_for("ada")
    r = c.get("/img/1/1")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content[:8] == b"\x89PNG\r\n\x1a\n" and r.headers["x-image-shape"] == "40,60"
    j = c.get("/img/1/1?fmt=jpeg&size=20")
    assert j.headers["content-type"] == "image/jpeg" and len(j.content) < len(r.content)
    # a 3D image: one slice with contrast limits
    import io

    import tifffile
    from PIL import Image

    vol = tifffile.imread(root / "stack.tif")
    s = c.get("/img/1/5?z=3&lo=0&hi=4000")
    assert s.headers["x-image-slices"] == "5" and s.headers["x-image-slice"] == "3"
    got = np.asarray(Image.open(io.BytesIO(s.content)))
    want = np.clip(vol[3].astype(np.float32) * 255 / 4000, 0, 255).astype(np.uint8)
    assert got.shape == (32, 24) and np.abs(got.astype(int) - want).max() <= 1
    assert c.get("/img/1/5?z=9").status_code == 404
    # traversal in the URL never reaches the file system
    for url in ("/img/1/..%2F..%2Fetc%2Fpasswd", "/img/1/%2Fetc%2Fpasswd",
                "/img/../../etc/passwd", "/img/1/1/../../../etc/passwd"):
        r = c.get(url)
        assert r.status_code in (404, 422), (url, r.status_code)
        assert b"root:" not in r.content
    # files indexed outside the image roots are refused, also through a symlink
    secret = tmp_path / "secret.png"
    import imageio.v3 as iio

    iio.imwrite(secret, np.full((8, 8), 7, np.uint8))
    link = root / "link.png"
    os.symlink(secret, link)
    ids = store.add_images("ada", "scans", [str(secret), str(link),
                                            str(root / ".." / "secret.png"),
                                            "images/../../secret.png",
                                            "https://example.org/x.png"])
    for iid in ids:
        r = c.get(f"/img/1/{iid}")
        assert r.status_code in (403, 404) and not r.content.startswith(b"\x89PNG"), iid
    assert c.get(f"/img/1/{ids[0]}").json()["detail"] == \
        "the image lies outside the server's image roots"
    # and the admin form refuses to index them
    r = c.post("/admin/collections", data={"csrf": page_csrf(c, "/admin"), "name": "x",
                                           "template": "kind", "images": str(secret)})
    assert r.status_code == 400 and "outside" in r.text
    assert "x" not in {col.name for col in store.collections("ada")}


def test_script_in_names_is_escaped_everywhere(served, client_for):
    store, _, root = served
    evil = "<script>alert(1)</script>"
    from expertloop.store.core import StoreValidationError

    with pytest.raises(StoreValidationError, match="not a valid user name"):
        store.add_user("ada", evil)  # markup never becomes a user name
    store.add_user("ada", "eve", expertise=[evil])
    store.assign("ada", "scans", "eve")
    store.add_template("ada", "t" + evil, "label", labels=[evil, "ok"])
    store.add_collection("ada", "c" + evil, "t" + evil, description=evil,
                         images=[str(root / "scan0.png")])
    store.push_predictions("ada", "c" + evil, [{"uri": str(root / "scan0.png"),
                                                "label": evil}])
    store.annotate("ada", "scans", 1, label="normal", annotator="eve")
    c = client_for("ada")
    # a user name with markup is refused, and the refusal page escapes it
    r = c.post("/admin/users", data={"csrf": page_csrf(c, "/admin"), "name": evil,
                                     "password": "evil-pass-1"})
    assert r.status_code == 400 and "<script>alert" not in r.text
    assert "&lt;script&gt;" in r.text
    cid = next(col.id for col in store.collections("ada") if col.name == "c" + evil)
    from urllib.parse import quote

    for url in ("/", "/admin", f"/c/{cid}", f"/c/{cid}/review?label={quote(evil)}",
                "/account", "/c/1"):
        r = c.get(url)
        assert r.status_code == 200, url
        assert "<script>alert" not in r.text, url
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in c.get("/admin").text
    # inside the page's JSON data block too
    assert "\\u003cscript\\u003e" in c.get(f"/c/{cid}").text


def test_sql_looking_strings_are_stored_verbatim(served, client_for):
    store, _, root = served
    sql = "x'); DROP TABLE annotations; --"
    store.add_template("ada", "sql", "label", labels=[sql, "' OR 1=1 --"])
    store.add_collection("ada", "sqlc", "sql", images=[str(root / "scan1.png")])
    store.assign("ada", "sqlc", "bob")
    c = client_for("bob")
    cid = store.collection("ada", "sqlc").id
    r = c.post(f"/api/c/{cid}/annotations", headers={"X-CSRF-Token": page_csrf(c)},
               json={"image_id": store.images("ada", "sqlc")[0].id, "label": sql})
    assert r.status_code == 200
    assert [a.label for a in store.annotations("ada", "sqlc")] == [sql]
    assert len(store.annotations("ada", "scans")) == 0  # the table is still there


def test_big_images_are_sent_reduced_from_the_right_level(served, tmp_path):
    import io

    import tifffile
    from fastapi.testclient import TestClient
    from PIL import Image

    from expertloop.web.app import WebConfig, create_app

    store, _, root = served
    # a 2-level pyramid whose levels differ in value, to see which one is read
    pyr = root / "pyramid.tif"
    with tifffile.TiffWriter(pyr) as tw:
        tw.write(np.full((64, 96), 50, np.uint8), subifds=1)
        tw.write(np.full((32, 48), 200, np.uint8), subfiletype=1)
    (iid,) = store.add_images("ada", "scans", [str(pyr)])
    app = create_app(store, WebConfig(image_roots=[root], max_side=40))
    with TestClient(app) as c:
        login(c, "ada")
        r = c.get("/img/1/1")  # 40 x 60 PNG, longest side above 40: every 2nd pixel
        assert r.headers["x-image-shape"] == "40,60"
        assert Image.open(io.BytesIO(r.content)).size == (30, 20)
        full = c.get(f"/img/1/{iid}?lo=0&hi=255")  # 96 > 40: level 1 (48), strided
        px = np.asarray(Image.open(io.BytesIO(full.content)))
        assert full.headers["x-image-shape"] == "64,96" and px.shape == (16, 24)
        assert int(px.mean()) == 200
        thumb = c.get(f"/img/1/{iid}?lo=0&hi=255&size=16")
        assert int(np.asarray(Image.open(io.BytesIO(thumb.content))).mean()) == 200


def test_annotations_etag_for_live_views(served, client_for):
    """Live views poll with If-None-Match: 304 (no body) until something changes."""
    store, _app, _ = served
    c = client_for("ada")
    r = c.get("/api/c/1/annotations")
    etag = r.headers["etag"]
    assert r.status_code == 200 and r.json() == []
    again = c.get("/api/c/1/annotations", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    store.annotate("bob", 1, store.images("ada", 1)[0].id, label="normal")
    r = c.get("/api/c/1/annotations", headers={"If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag
    assert [(a["annotator"], a["label"]) for a in r.json()] == [("bob", "normal")]
    # an annotator's ETag covers their own annotations only (and is not the admin's)
    cy = client_for("cy")
    r = cy.get("/api/c/1/annotations")
    assert r.json() == [] and r.headers["etag"] != etag
