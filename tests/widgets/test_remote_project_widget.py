"""The 'Remote annotation project' dock in a real viewer against a real server:
token login, the collection as the server shows it, saves that the store sees."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def _project(tmp_path):
    import imageio.v3 as iio

    from expertloop.store import Store, auth

    root = tmp_path / "images"
    root.mkdir()
    paths = []
    for k in range(3):
        p = root / f"cell{k}.png"
        iio.imwrite(p, np.full((24, 32), 40 * k + 10, np.uint8))
        paths.append(str(p))
    st = Store.create(str(tmp_path / "project"), admin="ada")
    st.add_user("ada", "bob")
    st.add_template("ada", "phase", "label", labels=["interphase", "mitotic"])
    st.add_collection("ada", "cells", "phase", images=paths)
    st.add_collection("ada", "secret", "phase", images=paths[:1])
    st.assign("ada", "cells", "bob")
    st.annotate("bob", "cells", paths[0], label="mitotic")  # e.g. from a browser
    return st, root, auth.create_token(st, "ada", "bob")


def test_remote_dock_annotates_through_the_server(make_napari_viewer, qtbot, tmp_path):
    from expertloop.web.app import WebConfig, create_app
    from expertloop.web.testing import serve_in_thread
    from expertloop.widgets.remote_project import IMAGE_LAYER, RemoteProjectWidget

    store, root, token = _project(tmp_path)
    app = create_app(store, WebConfig(image_roots=[root]))
    viewer = make_napari_viewer()
    w = RemoteProjectWidget(viewer)
    viewer.window.add_dock_widget(w)
    with serve_in_thread(app) as url:
        w.url.setText(url)
        w.token.setText("elt_wrong")
        w.connect_btn.click()
        qtbot.waitUntil(lambda: not w.runner.running, timeout=15000)
        assert "401" in w.status.text()
        w.token.setText(token)
        w.connect_btn.click()
        qtbot.waitUntil(lambda: IMAGE_LAYER in viewer.layers, timeout=15000)
        assert w.who.text() == "bob (annotator)"
        assert w.coll.count() == 1 and "cells" in w.coll.itemText(0)  # not "secret"
        # the annotation made elsewhere shows as done; the dock opens the first to do
        assert w.list.item(0).foreground().color().name() == "#2e7d32"
        qtbot.waitUntil(lambda: not w.runner.running, timeout=15000)
        assert w.current == 1
        assert viewer.layers[IMAGE_LAYER].data.shape == (24, 32)
        w.label_box.setCurrentText("interphase")
        assert w.save()
        qtbot.waitUntil(lambda: w.current == 2 and not w.runner.running, timeout=15000)
        # live: bob labels the shown image in a browser (the store, as the web app
        # does): the dock sees it through a conditional GET (304 while unchanged)
        w.poller.interval = 0.1
        checks = w.poller.checks
        qtbot.waitUntil(lambda: w.poller.checks >= checks + 2, timeout=15000)
        assert w.list.item(2).foreground().color().name() == "#c62828"
        store.annotate("bob", "cells", store.images("ada", "cells")[2].id, label="mitotic")
        qtbot.waitUntil(lambda: w.list.item(2).foreground().color().name() == "#2e7d32",
                        timeout=15000)
        assert w.label_box.currentText() == "mitotic" and "saved elsewhere" in w.live_lbl.text()
        w.poller.stop()
    recs = {r.uri.rsplit("/", 1)[-1]: r for r in store.annotations("ada", "cells")}
    assert recs["cell1.png"].label == "interphase"
    assert recs["cell1.png"].annotator == "bob" and recs["cell1.png"].updated_by == "bob"
    assert recs["cell1.png"].time_spent is not None and recs["cell1.png"].time_spent >= 0
    store.close()
