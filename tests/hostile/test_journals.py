"""Hostile and damaged journals (issue 18, defect 12): one bad line in a click
log or a decision log is skipped and reported with its line number, the
other records are kept, and a replayed label is never guessed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from expertloop.engine.semiauto.queue import QueueItem, ReviewQueue
from expertloop.io.journal import read_journal
from expertloop.io.semiauto_storage import FolderQueueStorage
from expertloop.io.spots_clicks import ClickLog, read_clicks

CLASSES = ["RBC", "Platelets", "WBC"]


def _append_lines(path, lines):
    with open(path, "a", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def test_non_object_lines_are_skipped_with_their_line_numbers(tmp_path):
    p = tmp_path / "j.jsonl"
    _append_lines(p, ['{"a": 1}', "[1, 2]", '"text"', "3", "null", '{"b": 2', '{"c": 3}'])
    problems = []
    assert read_journal(p, problems=problems) == [{"a": 1}, {"c": 3}]
    assert [line for line, _ in problems] == [2, 3, 4, 5, 6]
    assert "list, not an object" in problems[0][1] and "torn write" in problems[4][1]


def test_click_log_keeps_good_clicks_around_bad_records(tmp_path):
    p = tmp_path / "clicks.jsonl"
    log = ClickLog(p, shape=(4, 20, 20), annotator="ann")
    log.click((1, 2, 3))
    good = {k: v for k, v in json.loads(p.read_text().splitlines()[-1]).items()}
    bad_records = [
        "[1, 2, 3]",                                                  # not an object
        json.dumps({**good, "click_id": "m1", "x": None}),            # missing coordinate
        json.dumps({k: v for k, v in {**good, "click_id": "m2"}.items() if k != "slice"}),
        json.dumps({**good, "click_id": "m3", "y": "abc"}),           # not a number
        json.dumps({**good, "click_id": "m4", "z": float("nan")}),           # NaN
        json.dumps({**good, "click_id": 7}),                          # id not text
    ]
    _append_lines(p, bad_records)
    log.click((2, 5, 6))
    problems = []
    table = read_clicks(p, problems=problems)
    assert len(table["x"]) == 2
    np.testing.assert_array_equal(table["x"], [3.0, 6.0])
    assert [line for line, _ in problems] == [3, 4, 5, 6, 7, 8]
    assert "x = None" in problems[1][1] and "slice" in problems[2][1]
    assert "finite" in problems[4][1]


@pytest.mark.parametrize("label", [-1, 99, "WBC", None, 1.5, True])
def test_queue_replay_never_guesses_a_class(tmp_path, label):
    storage = FolderQueueStorage(tmp_path)
    items = [QueueItem(i, f"img{i}", predicted=i % 3, confidence=0.5) for i in range(3)]
    q = ReviewQueue(items, CLASSES, storage=storage, annotator="ann")
    first = q.current
    q.set_label(2)
    rec = {"queue": q.queue_id, "action": "change", "item": q.current.index, "annotator": "x"}
    if label is not None:
        rec["label"] = label
    _append_lines(tmp_path / "decisions.jsonl", [json.dumps(rec), "[not, json", "42"])
    q2 = ReviewQueue.restore(storage)
    assert q2.decisions() == {first.index: 2}  # the good decision, nothing guessed
    lines = [line for line, _ in q2.replay_problems]
    assert lines == [2]
    assert "not a class index" in q2.replay_problems[0][1]


def test_queue_replay_skips_unknown_items_and_actions(tmp_path):
    storage = FolderQueueStorage(tmp_path)
    q = ReviewQueue([QueueItem(0, "a", 0, 0.5), QueueItem(1, "b", 1, 0.5)], CLASSES,
                    storage=storage)
    _append_lines(tmp_path / "decisions.jsonl", [
        json.dumps({"queue": q.queue_id, "action": "accept", "item": 77, "label": 0}),
        json.dumps({"queue": q.queue_id, "action": "explode", "item": 0, "label": 0}),
        json.dumps({"queue": q.queue_id, "action": "accept", "item": [0], "label": 0}),
        json.dumps({"queue": q.queue_id, "action": "accept", "item": 1, "label": 1})])
    q2 = ReviewQueue.restore(storage)
    assert q2.decisions() == {1: 1}
    assert [line for line, _ in q2.replay_problems] == [1, 2, 3]


def test_napari_click_reader_warns_about_skipped_records(tmp_path):
    from expertloop.io.napari_annotations import read_clicks_layer

    p = tmp_path / "scan.spots.jsonl"
    ClickLog(p, shape=(4, 20, 20)).click((1, 2, 3))
    _append_lines(p, ["[1]"])
    with pytest.warns(UserWarning, match=r"1 unreadable record\(s\) skipped \(line 3\)"):
        (layer,) = read_clicks_layer(str(p))
    assert len(layer[0]) == 1
