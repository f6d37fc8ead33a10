"""The crash-safe click log and the annotation table (CSV)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import expertloop
from expertloop.io.napari_hooks import sample_path
from expertloop.io.spots_clicks import (
    CLICK_COLUMNS,
    ClickError,
    ClickLog,
    default_log_path,
    export_csv,
    import_csv,
    read_clicks,
    user_log_folder,
)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_latency_is_time_since_previous_click_and_first_is_flagged(tmp_path):
    clock = FakeClock()
    log = ClickLog(tmp_path / "a.spots.jsonl", shape=(10, 20, 30), annotator="ana", clock=clock)
    clock.t += 7.0
    r1 = log.click((1, 2, 3), contrast_limits=(0, 200), zoom=2.5)
    clock.t += 3.5
    r2 = log.click((4, 5.4, 6))
    clock.t += 60.0
    log.click((5, 5, 5))
    assert r1["latency_s"] == pytest.approx(7.0) and r1["first_in_session"]
    assert r2["latency_s"] == pytest.approx(3.5) and not r2["first_in_session"]
    assert r1["contrast_hi"] == 200 and r1["zoom"] == 2.5 and r2["slice"] == 4
    table = read_clicks(log.path)
    assert table["latency_s"].tolist() == pytest.approx([7.0, 3.5, 60.0])
    assert table["annotator"].tolist() == ["ana"] * 3
    # deleting keeps the others (and their latencies) unchanged
    log.delete(r2["click_id"])
    clock.t += 2.0
    r4 = log.click((6, 6, 6))
    assert r4["latency_s"] == pytest.approx(2.0)
    table = read_clicks(log.path)
    assert table["click_id"].tolist() == [r1["click_id"], table["click_id"][1], r4["click_id"]]
    assert r2["click_id"] not in table["click_id"].tolist()
    # a second session on the same log starts its own first click
    log2 = ClickLog(log.path, shape=(10, 20, 30), clock=clock)
    assert log2.session_id != log.session_id
    assert log2.click((1, 1, 1))["first_in_session"]
    assert len(read_clicks(log.path)["z"]) == 4


def test_bad_clicks_are_refused_with_a_message(tmp_path):
    log = ClickLog(tmp_path / "b.jsonl", shape=(10, 20, 30))
    with pytest.raises(ClickError, match="outside the image"):
        log.click((10, 0, 0))
    with pytest.raises(ClickError, match="outside the image"):
        log.click((0, -3, 0))
    with pytest.raises(ClickError, match="3 coordinates"):
        log.click((1, 2))
    with pytest.raises(ClickError, match="not finite"):
        log.click((1, np.nan, 2))
    with pytest.raises(ValueError, match="2D or 3D"):
        ClickLog(tmp_path / "c.jsonl", shape=(2, 3, 4, 5))
    assert len(read_clicks(log.path)["z"]) == 0
    with pytest.raises(FileNotFoundError, match="not found"):
        read_clicks(tmp_path / "missing.jsonl")
    # a 2D image: z is 0
    log2 = ClickLog(tmp_path / "d.jsonl", shape=(20, 30))
    r = log2.click((4, 5))
    assert (r["z"], r["y"], r["x"], r["slice"]) == (0.0, 4.0, 5.0, 0)


def test_csv_roundtrip_and_bad_tables(tmp_path):
    clock = FakeClock()
    log = ClickLog(tmp_path / "e.jsonl", shape=(10, 20, 30), clock=clock)
    for i in range(3):
        clock.t += 1.5 + i
        log.click((i, 2 * i, 3 * i), contrast_limits=(1, 9))
    table = read_clicks(log.path)
    out = export_csv(table, tmp_path / "t.csv")
    header = out.read_text().splitlines()[0]
    assert header == ",".join(CLICK_COLUMNS)
    back = import_csv(out)
    for c in CLICK_COLUMNS:
        if back[c].dtype.kind == "f":
            assert np.allclose(back[c], table[c], equal_nan=True), c
        else:
            assert back[c].tolist() == table[c].tolist(), c
    (tmp_path / "min.csv").write_text("z,y,x\n1,2,3\n4,5,6\n")
    mini = import_csv(tmp_path / "min.csv")
    assert mini["slice"].tolist() == [1, 4] and np.isnan(mini["latency_s"]).all()
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="needs columns z, y, x"):
        import_csv(tmp_path / "bad.csv")
    (tmp_path / "bad2.csv").write_text("z,y,x\n1,two,3\n")
    with pytest.raises(ValueError, match="line 2"):
        import_csv(tmp_path / "bad2.csv")
    with pytest.raises(FileNotFoundError):
        import_csv(tmp_path / "nope.csv")


def test_default_log_path(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_log_path(tmp_path / "scan1.nii.gz") == tmp_path / "scan1.spots.jsonl"
    assert default_log_path(None, tmp_path, "img") == tmp_path / "img.spots.jsonl"
    users = tmp_path / "xdg" / "napari-expertloop" / "spot-logs"
    assert user_log_folder() == users
    assert default_log_path(None, name="img") == users / "img.spots.jsonl"
    # a sample shipped inside the installed package logs to the user folder, not the package
    package = Path(expertloop.__file__).resolve().parent
    sample = sample_path("colin27_t1_brain.nii.gz")
    assert sample.resolve().is_relative_to(package)
    log = default_log_path(sample, name="colin27_t1_brain")
    assert log == users / "colin27_t1_brain.spots.jsonl"
    assert not log.resolve().is_relative_to(package)


def test_clicks_survive_sigkill(tmp_path):
    """A real process records clicks and is killed with SIGKILL mid-session."""
    path = tmp_path / "killed.spots.jsonl"
    script = textwrap.dedent(f"""
        import sys, time
        from expertloop.io.spots_clicks import ClickLog
        log = ClickLog({str(path)!r}, shape=(50, 50, 50), annotator="victim")
        i = 0
        while True:
            i += 1
            rec = log.click((i % 50, (2 * i) % 50, (3 * i) % 50))
            print(rec["click_id"], flush=True)
            time.sleep(0.01)
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    acknowledged = []
    try:
        deadline = time.time() + 60
        while len(acknowledged) < 8 and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acknowledged.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(acknowledged) == 8, "the subprocess did not record clicks"
    table = read_clicks(path)
    ids = table["click_id"].tolist()
    # every click acknowledged before the kill is on disk, in order, with its latency
    assert ids[: len(acknowledged)] == acknowledged
    assert np.all(np.isfinite(table["latency_s"])) and table["first_in_session"][0]
    # and a new session appends to the same log after the crash
    log = ClickLog(path, shape=(50, 50, 50))
    log.click((1, 1, 1))
    assert len(read_clicks(path)["z"]) == len(ids) + 1
