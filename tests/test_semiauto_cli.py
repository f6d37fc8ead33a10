"""``expertloop semiauto`` subcommands."""

from __future__ import annotations

import csv
import json

from expertloop.cli import main


def test_simulate_digits_writes_labels_and_history(tmp_path, capsys):
    out, hist = tmp_path / "labels.csv", tmp_path / "hist.json"
    rc = main(["semiauto", "simulate", "--digits", "--batch-size", "400", "--initial", "5", "--val", "20",
               "--project", str(tmp_path / "proj"), "-o", str(out), "--history", str(hist)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final" in text and "manual labels in total" in text
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 1797
    sources = {r["source"] for r in rows}
    assert {"initial", "validation", "auto", "manual"} <= sources
    h = json.loads(hist.read_text())
    assert h[-1]["final"] and h[-1]["val_acc"] > 0.85
    # every manual decision is in the project's journal
    recs = [json.loads(line) for line in open(tmp_path / "proj" / "decisions.jsonl")]
    assert len(recs) == sum(r["source"] == "manual" for r in rows)
    # the same --project again is refused (its state and decisions are kept), not silently restarted
    state = (tmp_path / "proj" / "state.json").read_text()
    assert main(["semiauto", "simulate", "--digits", "-t", "0.5", "--project", str(tmp_path / "proj"),
                 "-o", str(tmp_path / "x.csv")]) == 2
    assert "already holds a semi-automatic labelling project" in capsys.readouterr().err
    assert (tmp_path / "proj" / "state.json").read_text() == state


def test_simulate_class_folders_and_bad_threshold(data_dir, tmp_path, capsys):
    out = tmp_path / "l.csv"
    crops = str(data_dir / "semiauto" / "bccd_crops")
    rc = main(["semiauto", "simulate", "--folders", crops, "--project", str(tmp_path / "proj"),
               "--initial", "3", "--val", "4", "--batch-size", "10", "--strategy", "margin",
               "--budget", "3", "-o", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 42 and sum(r["source"] == "manual" for r in rows) <= 3 * 3
    # the saved project exports the same labels
    again = tmp_path / "again.csv"
    assert main(["semiauto", "export", str(tmp_path / "proj"), "--folder", crops, "-o", str(again)]) == 0
    assert again.read_text() == out.read_text()
    rc = main(["semiauto", "simulate", "--digits", "-t", "1.2", "-o", str(out)])
    assert rc == 2
    assert "(0, 1)" in capsys.readouterr().err
    rc = main(["semiauto", "simulate", "--folders", str(tmp_path / "missing"), "-o", str(out)])
    assert rc == 2
