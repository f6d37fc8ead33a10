"""The "Review in annotation project" group of the semi-automatic labelling widget, in a real viewer."""

from __future__ import annotations

import numpy as np
import tifffile

from expertloop.store import Store


def test_send_hard_cases_and_fetch_reviewed(digits_semiauto, qtbot, tmp_path, notifications, record_threads):

    import expertloop.engine.semiauto.store_bridge as bridge

    viewer, w, images, y = digits_semiauto(160, 70)
    for name, value in {"strategy": "margin", "rate": 0.1, "batch_size": 60, "val_fraction": 0.3}.items():
        w.params[name].value = value  # 6 hard cases
    panel = w.store_review
    # nothing to send before an iteration
    panel.send()
    assert any("run an iteration first" in str(n.message) for n in notifications)
    assert w.load() is not None
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    w.run_iteration()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    q = w.loop.queue
    p = w.loop.proposal
    assert q is not None and len(q) >= 2, (len(p.accepted), len(p.queued), len(p.deferred), w.loop.config, w.loop.last_eval)

    with Store.create(tmp_path / "store", admin="ada") as st:
        st.add_user("ada", "bob")
    panel.location.value = str(tmp_path / "store")
    panel.collection.value = "digits review"
    panel.actor.value = "ada"
    panel.annotators.value = "bob"
    written = record_threads(bridge, "_write_review_image")
    panel.send_btn.clicked.emit()  # the button
    qtbot.waitUntil(lambda: not w.runner.running, timeout=20000)
    assert len(written) == len(q) and not any(written)  # review TIFFs written off the GUI thread
    assert f"{len(q)} sent to 'digits review'" in panel.status.value
    with Store.open(tmp_path / "store") as st:
        preds = {p.meta["semiauto_index"]: p for p in st.predictions("bob", "digits review").values()}
        assert set(preds) == {it.index for it in q.items}
        for i, p in preds.items():  # stack images are written into the project for the dock
            assert p.meta["stack_uri"] == f"stack://digits#{i}"
            assert p.uri == str((tmp_path / "proj" / "review_images" / f"digits-{i:06d}.tif").resolve())
            np.testing.assert_array_equal(tifffile.imread(p.uri), images[i])
        first = sorted(preds)[0]
        st.annotate("bob", "digits review", preds[first].uri, label=str(y[first]), time_spent=4.0)
    panel.fetch_btn.clicked.emit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=20000)
    assert q.decisions() == {first: int(y[first])}
    assert f"1 new decision(s), 0 updated, 0 already there; {len(q) - 1} still to review" in panel.status.value
    assert w.review.progress.value == q.progress_text() == f"1 / {len(q)} decided"
    assert any("1 new decision(s)" in str(n.message) for n in notifications)
    # the loop goes on as after a local review
    rec = w.loop.apply_review()
    assert rec["reviewed"] == 1 and w.loop.labels[first] == y[first]
    assert w.loop.state.source[first] == "manual"
    # a store that does not exist: an error notification, nothing recorded
    panel.location.value = str(tmp_path / "nostore")
    w.run_iteration()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=60000)
    panel.fetch_btn.clicked.emit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=20000)
    assert any("no project" in str(n.message) for n in notifications)
    assert w.loop.queue.decisions() == {}
