"""Semi-automatic labelling engine: strategies, calibration, queue, loop, bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from expertloop.engine.jobs import run_job
from expertloop.engine.metrics import expected_calibration_error
from expertloop.engine.semiauto import (
    MissingClassWarning,
    QueueItem,
    ReviewQueue,
    SemiAutoConfig,
    SemiAutoLoop,
    calibration_report,
    fit_temperature,
    from_stack,
    load_class_folders,
    load_folder,
    make_classifier,
    read_labels_csv,
    simulate,
    softmax,
    split_batch,
    threshold_split,
)
from expertloop.engine.semiauto.classifiers import hand_features
from expertloop.engine.semiauto.strategies import budget_split, random_split
from expertloop.io.semiauto_storage import (
    FolderQueueStorage,
    MemoryQueueStorage,
    QueueStorage,
)

CLASSES = ["Platelets", "RBC", "WBC"]


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16 * 255).astype(np.uint8), d.target


@pytest.fixture
def crops_dir(data_dir, tmp_path):
    dst = tmp_path / "crops"
    shutil.copytree(data_dir / "semiauto" / "bccd_crops", dst)
    return dst


# ------------------------------------------------------------ strategies
def test_threshold_split_is_exact():
    probs = np.array([[0.9, 0.1], [0.89999, 0.10001], [0.2, 0.8], [0.05, 0.95], [0.5, 0.5], [0.1, 0.9]])
    s = threshold_split(probs, 0.9)
    # max >= t accepted (0.9 exactly included), < t queued
    assert s.accepted.tolist() == [0, 3, 5]
    assert s.queued.tolist() == [1, 2, 4]
    assert s.deferred.size == 0


@pytest.mark.parametrize("t", [0.0, 1.0, -0.1, 1.5])
def test_threshold_outside_open_interval_is_refused(t):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        threshold_split(np.full((3, 2), 0.5), t)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        SemiAutoConfig(t=t).check()


def test_random_and_budget_splits():
    rng = np.random.default_rng(0)
    s = random_split(100, 0.25, rng=rng)
    assert len(s.queued) == 25 and len(s.deferred) == 75 and len(s.accepted) == 0
    assert len(set(s.queued) | set(s.deferred)) == 100
    s = random_split(100, 0.25, accept_rest=True, rng=rng)
    assert len(s.accepted) == 75 and len(s.deferred) == 0
    probs = np.array([[0.5, 0.5], [0.99, 0.01], [0.6, 0.4], [0.95, 0.05], [0.7, 0.3]])
    s = budget_split(probs, budget=2, t=0.9, kind="margin")
    assert s.queued.tolist() == [0, 2]        # the two smallest margins
    assert s.accepted.tolist() == [1, 3]      # confident
    assert s.deferred.tolist() == [4]         # neither
    assert split_batch("entropy", probs, budget=1).queued.tolist() == [0]
    with pytest.raises(ValueError, match="unknown strategy"):
        split_batch("oracle", probs)


# ------------------------------------------------------------ calibration
def test_temperature_scaling_reduces_ece_on_held_out_data(digits):
    from sklearn.linear_model import LogisticRegression

    images, y = digits
    x = run_job(hand_features(images[:900]))
    y = y[:900]
    # a weakly regularised model trained on few samples is over-confident
    clf = LogisticRegression(C=1e4, max_iter=3000).fit(x[:150], y[:150])
    logits = clf.decision_function(x[150:])
    cal, test = slice(0, 350), slice(350, None)
    t = fit_temperature(logits[cal], y[150:][cal])
    before = expected_calibration_error(softmax(logits[test]), y[150:][test])
    after = expected_calibration_error(softmax(logits[test], t), y[150:][test])
    assert t > 1.0                       # over-confident scores get softened
    assert after < 0.8 * before, (before, after)
    rep = calibration_report(logits[cal], y[150:][cal])
    assert rep["ece_after"] < rep["ece_before"]


# ------------------------------------------------------------ review queue
def _items(n=5):
    return [QueueItem(i, f"img{i}", predicted=i % 3, confidence=0.5 + 0.01 * i) for i in range(n)]


def test_queue_sorted_by_predicted_class_and_actions(tmp_path):
    t = [0.0]
    q = ReviewQueue(_items(), CLASSES, storage=FolderQueueStorage(tmp_path), annotator="ann",
                    clock=lambda: t[0])
    assert [it.predicted for it in q.items] == [0, 0, 1, 1, 2]
    first = q.current
    t[0] = 2.5
    q.accept()
    assert q.decisions() == {first.index: first.predicted}
    second = q.current
    q.set_label("WBC")
    assert q.decisions()[second.index] == 2
    q.skip()
    assert q.progress_text() == "2 / 5 decided, 1 skipped"
    assert q.undo()                     # undo the skip
    assert q.current.index == q.items[2].index and not q.skipped
    q.undo()                            # undo the change
    assert second.index not in q.decisions() and q.current.index == second.index
    q.set_label(1)
    recs = FolderQueueStorage(tmp_path).load_decisions(q.queue_id)
    assert [r["action"] for r in recs] == ["accept", "change", "skip", "undo", "undo", "change"]
    assert recs[0]["annotator"] == "ann" and recs[0]["seconds"] == pytest.approx(2.5)
    assert all("time" in r for r in recs)
    with pytest.raises(ValueError, match="not one of"):
        q.set_label("Neutrophil")


def test_skipped_items_come_back_and_queue_finishes():
    q = ReviewQueue(_items(3), CLASSES)
    q.skip()
    q.accept()
    q.accept()
    assert not q.done and q.current is not None    # the skipped one again
    q.accept()
    assert q.done and q.current is None
    with pytest.raises(RuntimeError, match="finished"):
        q.accept()


def test_folder_storage_satisfies_protocol(tmp_path):
    assert isinstance(FolderQueueStorage(tmp_path), QueueStorage)
    assert isinstance(MemoryQueueStorage(), QueueStorage)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        FolderQueueStorage(tmp_path / "f")
    (tmp_path / "state.json").write_text("{broken")
    with pytest.raises(ValueError, match="corrupt"):
        FolderQueueStorage(tmp_path).load_state()


KILL_SCRIPT = r"""
import os, signal, sys
from expertloop.engine.semiauto import QueueItem, ReviewQueue
from expertloop.io.semiauto_storage import FolderQueueStorage
st = FolderQueueStorage(sys.argv[1])
items = [QueueItem(i, f"img{i}", i % 3, 0.5) for i in range(6)]
q = ReviewQueue(items, ["a", "b", "c"], storage=st, queue_id=7, annotator="kim")
q.accept(); q.set_label(2); q.skip(); q.accept()
print("decided", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_queue_decisions_survive_sigkill_and_restore(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert "decided" in proc.stdout
    q = ReviewQueue.restore(FolderQueueStorage(tmp_path), annotator="kim")
    assert q.queue_id == 7 and len(q) == 6
    assert q.n_decided == 3 and len(q.skipped) == 1
    # items sorted by class: img0, img3 (a), img1, img4 (b), img2, img5 (c)
    assert q.decisions() == {0: 0, 3: 2, 4: 1}
    assert q.current.index == 2            # the next undecided, not skipped
    q.accept()
    assert ReviewQueue.restore(FolderQueueStorage(tmp_path)).n_decided == 4


# ------------------------------------------------------------ loop
def _digit_loop(digits, storage=None, **cfg):
    images, y = digits
    images, y = images[:400], y[:400]
    rng = np.random.default_rng(1)
    perm = rng.permutation(400)
    val, init = perm[:80], perm[80:130]
    labels = np.full(400, -1)
    labels[init] = y[init]
    config = SemiAutoConfig(**{"t": 0.9, "batch_size": 90, **cfg})
    loop = SemiAutoLoop(from_stack(images), [str(i) for i in range(10)], labels,
                        make_classifier("logreg-hand"), config=config, val_indices=val,
                        val_labels=y[val], storage=storage)
    return loop, y


def test_accepted_plus_corrected_labels_form_next_training_set(digits):
    loop, y = _digit_loop(digits)
    before = set(loop.train_idx.tolist())
    p = run_job(loop.run_iteration())
    assert len(p.accepted) + len(p.queued) == len(p.batch) == 90
    q = loop.queue
    assert len(q) == len(p.queued) > 0
    # the annotator corrects every hard case to the truth, but leaves the last undecided
    for _ in range(len(q) - 1):
        k = int(y[q.current.index])
        q.accept() if k == q.current.predicted else q.set_label(k)
    undecided = q.current.index
    rec = loop.apply_review()
    after = set(loop.train_idx.tolist())
    expected = before | set(p.accepted.tolist()) | (set(p.queued.tolist()) - {undecided})
    assert after == expected
    assert loop.state.source[undecided] == "" and loop.labels[undecided] == -1
    for i in p.queued:
        if i != undecided:
            assert loop.labels[i] == y[i] and loop.state.source[i] == "manual"
    pos = {int(i): j for j, i in enumerate(p.batch)}
    for i in p.accepted:
        assert loop.labels[i] == p.predicted[pos[int(i)]] and loop.state.source[i] == "auto"
    assert rec["reviewed"] == len(p.queued) - 1 and rec["deferred"] == 1
    # the next training uses exactly that set
    seen = {}
    orig_fit = loop.classifier.fit

    def spy(x, yy, k):
        seen["n"] = len(yy)
        return orig_fit(x, yy, k)

    loop.classifier.fit = spy
    run_job(loop.run_iteration())
    assert seen["n"] == len(expected)


def test_simulated_loop_reaches_good_accuracy_with_little_manual_work(digits):
    loop, y = _digit_loop(digits)
    hist = run_job(simulate(loop, y))
    final = hist[-1]
    assert final["final"] and final["val_acc"] >= 0.85
    iters = [h for h in hist if not h.get("final")]
    assert len(iters) == 3                     # 270 unlabelled / 90 per batch
    assert final["manual_total"] < 50 + 270 * 0.5
    assert all(0 <= h["manual_fraction"] <= 1 for h in iters)


def test_loop_state_restores_with_open_queue(digits, tmp_path):
    st = FolderQueueStorage(tmp_path)
    loop, y = _digit_loop(digits, storage=st)
    run_job(loop.run_iteration())
    loop.queue.annotator = "sam"
    loop.queue.accept()
    first = loop.queue.items[0].index
    loop2 = SemiAutoLoop.restore(FolderQueueStorage(tmp_path), loop.collection, make_classifier("logreg-hand"))
    assert loop2.proposal is not None and loop2.queue.decisions() == {first: loop.queue.items[0].predicted}
    assert loop2.proposal.accepted.dtype == np.int64
    loop2.apply_review()
    assert loop2.state.source[first] == "manual"
    for i in loop.proposal.accepted:     # accepted predictions applied after the restart too
        assert loop2.state.source[i] == "auto"
    assert len(loop2.pool) == len(loop.pool) - 90
    out = loop2.export_csv(tmp_path / "labels.csv")
    text = out.read_text().splitlines()
    assert text[0] == "name,label,class_index,source,confidence" and len(text) == 401


def test_class_without_initial_examples(digits):
    images, y = digits
    labels = np.full(200, -1)
    labels[:60] = np.where(y[:60] == 9, -1, y[:60])   # no 9 among the initial labels
    with pytest.raises(ValueError, match=r"no initial examples of class\(es\) \['9'\]"):
        SemiAutoLoop(from_stack(images[:200]), [str(i) for i in range(10)], labels,
                     make_classifier("logreg-hand"))
    with pytest.warns(MissingClassWarning):
        loop = SemiAutoLoop(from_stack(images[:200]), [str(i) for i in range(10)], labels,
                            make_classifier("logreg-hand"), allow_missing_classes=True,
                            config=SemiAutoConfig(val_fraction=0.2))
    p = run_job(loop.run_iteration())
    assert (p.predicted != 9).all()     # never predicted until labelled
    with pytest.raises(ValueError, match="at least two classes"):
        SemiAutoLoop(from_stack(images[:20]), ["a", "b"], np.r_[np.zeros(10, int), -np.ones(10, int)],
                     make_classifier("logreg-hand"))


# ------------------------------------------------------------ data
def test_folder_unreadable_skipped_and_mismatched_sizes(crops_dir):
    import imageio.v3 as iio

    flat = crops_dir / "WBC"
    (flat / "broken.png").write_bytes(b"not a png at all")
    (flat / "empty.jpg").write_bytes(b"")
    big = np.zeros((50, 40, 3), np.uint8)
    iio.imwrite(flat / "zz_big.png", big)
    col = load_folder(flat)
    assert len(col) == 15 and col.shape == (32, 32, 3)
    assert {n for n, _ in col.skipped} == {"broken.png", "empty.jpg"}
    assert col.resized == ["zz_big.png"]
    with pytest.raises(ValueError, match=r"not 32x32 like the others \(e\.g\. zz_big\.png\)"):
        load_folder(flat, on_mismatch="reject")
    assert load_folder(flat, size=24).shape == (24, 24, 3)
    with pytest.raises(FileNotFoundError):
        load_folder(crops_dir / "nope")


def test_class_folders_and_csv(crops_dir, tmp_path):
    col, labels, names = load_class_folders(crops_dir)
    assert names == CLASSES and len(col) == 42
    assert np.bincount(labels).tolist() == [14, 14, 14]
    csv = tmp_path / "l.csv"
    csv.write_text("name,label\nRBC/" + col.names[14].split("/")[1] + ",WBC\n" + col.names[0] + ",1\n")
    lab = read_labels_csv(csv, col, names)
    assert lab[14] == 2 and lab[0] == 1 and (lab >= 0).sum() == 2
    csv.write_text("name,label\nmissing.png,RBC\n")
    with pytest.raises(ValueError, match="line 2: no image named"):
        read_labels_csv(csv, col, names)
    csv.write_text("file,class\n")
    with pytest.raises(ValueError, match="columns 'name' and 'label'"):
        read_labels_csv(csv, col, names)


def _fit_and_score(clf, col, labels):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = run_job(clf.prepare(col.images))
        run_job(clf.fit(x, labels, 3))
        logits = run_job(clf.logits(x))
    assert logits.shape == (len(labels), 3) and np.isfinite(logits).all()
    return np.mean(logits.argmax(1) == labels)


def test_cnn_finetune_with_imagenet_weights(crops_dir, imagenet_torch_home):
    col, labels, _ = load_class_folders(crops_dir)
    clf = make_classifier("cnn-mobilenet_v2", size=48, epochs=2, batch_size=16, pretrained=True)
    acc = _fit_and_score(clf, col, labels)
    assert clf.used_pretrained is True
    # trained on these very crops: it fits them far better than chance (1/3)
    assert acc > 0.5


def test_logreg_on_cnn_embeddings(crops_dir):
    col, labels, _ = load_class_folders(crops_dir)
    clf = make_classifier("logreg-resnet18", embed_size=32, pretrained=False)
    assert _fit_and_score(clf, col, labels) > 0.5
    with pytest.raises(ValueError, match="unknown classifier"):
        make_classifier("xgboost")


def test_project_folder_inside_a_class_folder_layout_is_not_a_class(tmp_path):
    """Regression: the default project folder (inside the image folder) was
    taken for a class, so resuming with typed class names failed."""
    import imageio.v3 as iio

    from expertloop.engine.semiauto.data import PROJECT_FOLDER, load_images

    rng = np.random.default_rng(0)
    for cls in ("A", "B"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            iio.imwrite(tmp_path / cls / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    iio.imwrite(tmp_path / "u.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (tmp_path / PROJECT_FOLDER).mkdir()
    (tmp_path / PROJECT_FOLDER / "state.json").write_text("{}")

    col, labels, names = load_images(tmp_path)
    assert names == ["A", "B"] and sorted(labels.tolist()) == [-1, 0, 0, 1, 1]
    col, labels, names = load_images(tmp_path, class_names=["B", "A"])
    assert names == ["B", "A"] and sorted(labels.tolist()) == [-1, 0, 0, 1, 1]

    flat = tmp_path / "flat"
    flat.mkdir()
    iio.imwrite(flat / "x.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    (flat / PROJECT_FOLDER).mkdir()
    col, labels, names = load_images(flat, class_names=["a", "b"])
    assert len(col) == 1 and labels.tolist() == [-1] and names == ["a", "b"]
