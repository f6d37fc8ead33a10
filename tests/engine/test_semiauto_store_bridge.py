"""The semi-automatic loop's hard cases reviewed in an annotation project (store)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from expertloop.engine.jobs import run_job
from expertloop.engine.semiauto import (
    SemiAutoConfig,
    SemiAutoLoop,
    from_stack,
    make_classifier,
)
from expertloop.engine.semiauto.store_bridge import (
    pull_decisions_from_store,
    push_queue_to_store,
    review_items,
)
from expertloop.io.semiauto_storage import FolderQueueStorage
from expertloop.store import Store
from expertloop.store.testing import backend_params, fresh_location

CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images[:300] / 16 * 255).astype(np.uint8), d.target[:300]


@pytest.fixture(params=backend_params())
def store(request, tmp_path):
    loc, files = fresh_location(request.param, tmp_path)
    st = Store.create(loc, admin="ada", files_dir=files)
    st.add_user("ada", "bob")
    st.add_user("ada", "cy")
    yield st
    st.close()


def _loop(digits, folder):
    images, y = digits
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(y))
    val, init = perm[:60], perm[60:100]
    labels = np.full(len(y), -1)
    labels[init] = y[init]
    loop = SemiAutoLoop(from_stack(images), CLASSES, labels, make_classifier("logreg-hand"),
                        config=SemiAutoConfig(t=0.95, batch_size=80), val_indices=val, val_labels=y[val],
                        storage=FolderQueueStorage(folder))
    p = run_job(loop.run_iteration())
    assert len(p.queued) >= 6, "the test needs a few hard cases"
    return loop, p


def _pending(store, coll="r1"):
    return {p.meta["semiauto_index"]: p for p in store.predictions("ada", coll).values()}


def test_push_review_then_pull_gives_the_loops_decisions_and_training_set(digits, store, tmp_path):
    images, y = digits
    loop, p = _loop(digits, tmp_path / "proj")
    q = loop.queue
    before = set(loop.train_idx.tolist())
    res = push_queue_to_store(loop, store, "r1", actor="ada", assign_to=["bob"], stack_name="digits")
    assert res == {"pushed": len(q), "queue": q.queue_id, "collection": "r1", "skipped_decided": 0}
    info = store.collection("ada", "r1")
    assert info.labels == CLASSES and info.annotators == ["bob"]
    preds = _pending(store)
    assert set(preds) == {int(i) for i in p.queued}
    pos = {int(i): j for j, i in enumerate(p.batch)}
    for i, pr in preds.items():
        assert pr.uri == f"stack://digits#{i}"
        assert pr.label == CLASSES[p.predicted[pos[i]]]
        assert pr.confidence == pytest.approx(p.confidence[pos[i]])
        probs = [pr.probabilities[c] for c in CLASSES]
        np.testing.assert_allclose(probs, p.probabilities[pos[i]], rtol=1e-6)
        assert pr.meta == {"semiauto_index": i, "semiauto_queue": q.queue_id, "name": loop.collection.names[i]}
    # bob reviews all but two through the store API: accepts right predictions, corrects wrong ones
    order = sorted(preds)
    left = set(order[-2:])
    for n, i in enumerate(order[:-2]):
        truth = CLASSES[y[i]]
        src = "accepted-model" if truth == preds[i].label else "manual"
        store.annotate("bob", "r1", preds[i].uri, label=truth, source=src, time_spent=1.5 + n)
    n_changed = sum(CLASSES[y[i]] != preds[i].label for i in order[:-2])
    assert 0 < n_changed < len(order) - 2  # some accepted, some corrected

    rep = pull_decisions_from_store(loop, store, "r1", actor="ada")
    assert (rep.added, rep.updated, rep.unchanged, rep.pending, rep.pending_in_store) == \
        (len(order) - 2, 0, 0, 2, 2)
    assert not rep.rejected and not rep.conflicts and rep.stale == 0
    dec = q.decisions()
    assert dec == {i: int(y[i]) for i in order[:-2]}
    # recorded like a local decision
    recs = [json.loads(x) for x in (tmp_path / "proj" / "decisions.jsonl").read_text().splitlines()]
    assert len(recs) == len(order) - 2
    for n, r in enumerate(sorted(recs, key=lambda r: r["item"])):
        i = order[n]
        assert r["queue"] == q.queue_id and r["item"] == i and r["name"] == loop.collection.names[i]
        assert r["label"] == y[i] and r["class"] == CLASSES[y[i]] and r["annotator"] == "bob"
        assert r["action"] == ("accept" if CLASSES[y[i]] == preds[i].label else "change")
        assert r["seconds"] == pytest.approx(1.5 + n) and r["via"] == "store" and r["store_collection"] == "r1"
        assert {"time", "predicted", "confidence"} <= set(r)
    # the same as a restored local queue sees it
    again = SemiAutoLoop.restore(FolderQueueStorage(tmp_path / "proj"), loop.collection,
                                 make_classifier("logreg-hand"))
    assert again.queue.decisions() == dec

    rec = loop.apply_review()
    assert rec["reviewed"] == len(order) - 2 and rec["corrected"] == n_changed
    expected = before | set(p.accepted.tolist()) | (set(order) - left)
    assert set(loop.train_idx.tolist()) == expected
    for i in order[:-2]:
        assert loop.labels[i] == y[i] and loop.state.source[i] == "manual"
    for i in left:
        assert loop.labels[i] == -1
    seen = {}
    fit = loop.classifier.fit

    def spy(x, yy, k):
        seen["y"] = np.asarray(yy)
        return fit(x, yy, k)

    loop.classifier.fit = spy
    run_job(loop.run_iteration())
    assert len(seen["y"]) == len(expected)
    # answers to the old round never leak into the new queue
    rep2 = pull_decisions_from_store(loop, store, "r1", actor="ada")
    assert rep2.added == 0 and rep2.stale == len(order) - 2 and loop.queue.decisions() == {}


def test_pull_is_idempotent_follows_store_changes_and_keeps_local_decisions(digits, store, tmp_path):
    _, y = digits
    loop, p = _loop(digits, tmp_path / "proj")
    q = loop.queue
    push_queue_to_store(tmp_path / "proj", store, "r1", actor="ada", assign_to=["bob"])  # from the folder
    preds = _pending(store)
    assert len(preds) == len(q)
    a, b, c = sorted(preds)[:3]
    for i in (a, b):
        store.annotate("bob", "r1", preds[i].uri, label=preds[i].label, source="accepted-model", time_spent=2.0)
    first = pull_decisions_from_store(tmp_path / "proj", store, "r1", actor="bob")  # an annotator may pull
    assert first.added == 2
    journal = tmp_path / "proj" / "decisions.jsonl"
    n_lines = len(journal.read_text().splitlines())
    again = pull_decisions_from_store(tmp_path / "proj", store, "r1", actor="ada")
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    assert len(journal.read_text().splitlines()) == n_lines
    # bob changes his mind in the store: the store decision is replaced
    other = CLASSES[(CLASSES.index(preds[a].label) + 1) % 10]
    store.annotate("bob", "r1", preds[a].uri, label=other, time_spent=3.0)
    # the local reviewer decides c differently from what bob then says
    restored = SemiAutoLoop.restore(FolderQueueStorage(tmp_path / "proj"), loop.collection,
                                    make_classifier("logreg-hand"), annotator="local")
    local_label = (CLASSES.index(preds[c].label) + 1) % 10
    restored.queue.decide(c, local_label)
    store.annotate("bob", "r1", preds[c].uri, label=preds[c].label, source="accepted-model")
    rep = pull_decisions_from_store(restored, store, "r1", actor="ada")
    assert (rep.added, rep.updated, rep.unchanged) == (0, 1, 1)
    assert rep.conflicts == [{"index": c, "name": loop.collection.names[c], "local": CLASSES[local_label],
                              "store": preds[c].label}]
    assert restored.queue.decisions() == {a: CLASSES.index(other), b: CLASSES.index(preds[b].label),
                                          c: local_label}
    last = [json.loads(x) for x in journal.read_text().splitlines()][-1]
    assert last["item"] == a and last["action"] == "change" and last["seconds"] == 3.0
    assert rep.pending == len(q) - 3 and rep.pending_in_store == len(q) - 3


def test_labels_outside_the_classes_are_refused(digits, store, tmp_path):
    loop, _ = _loop(digits, tmp_path / "proj")
    # a collection whose template allows one more label than the loop knows
    store.add_template("ada", "digits+", "label", labels=CLASSES + ["unsure"])
    store.add_collection("ada", "r1", "digits+")
    push_queue_to_store(loop, store, "r1", actor="ada", assign_to=["bob"])
    preds = _pending(store)
    i, j = sorted(preds)[:2]
    store.annotate("bob", "r1", preds[i].uri, label="unsure")
    store.annotate("bob", "r1", preds[j].uri, label=preds[j].label, source="accepted-model")
    rep = pull_decisions_from_store(loop, store, "r1", actor="ada")
    assert rep.added == 1 and [r["index"] for r in rep.rejected] == [i]
    assert rep.rejected[0]["label"] == "unsure" and rep.rejected[0]["annotators"] == ["bob"]
    assert i not in loop.queue.decisions() and j in loop.queue.decisions()
    assert "refused" in rep.summary() and "unsure" in rep.summary()


def test_bad_inputs(digits, store, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such project folder"):
        push_queue_to_store(tmp_path / "nope", store, "r1", actor="ada")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no open review queue"):
        pull_decisions_from_store(tmp_path / "empty", store, "r1", actor="ada")
    with pytest.raises(TypeError, match="SemiAutoLoop"):
        review_items(42)
    loop, _ = _loop(digits, tmp_path / "proj")
    from expertloop.store import PermissionDenied

    with pytest.raises(PermissionDenied):  # only admins push review tasks
        push_queue_to_store(loop, store, "r1", actor="bob")
    push_queue_to_store(loop, store, "r1", actor="ada", assign_to=["bob"])
    with pytest.raises(PermissionDenied):  # cy is not assigned to r1
        pull_decisions_from_store(loop, store, "r1", actor="cy")
    with pytest.raises(ValueError, match="not in this review queue"):
        loop.queue.decide(10**6, 0)


def test_stack_images_written_for_the_dock(digits, tmp_path):
    import tifffile

    images, _ = digits
    loop, _ = _loop(digits, tmp_path / "proj")
    items = review_items(loop, stack_name="dg", image_dir=tmp_path / "imgs")
    assert len(items) == len(loop.queue)
    for it in items:
        i = it["meta"]["semiauto_index"]
        assert it["meta"]["stack_uri"] == f"stack://dg#{i}"
        assert it["uri"] == str((tmp_path / "imgs" / f"dg-{i:06d}.tif").resolve())
        np.testing.assert_array_equal(tifffile.imread(it["uri"]), images[i])
    with pytest.raises(ValueError, match="needs the loop"):
        review_items(tmp_path / "proj", image_dir=tmp_path / "imgs")
