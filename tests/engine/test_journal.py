"""The append-only journal keeps every record through a SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from expertloop.io.journal import Journal, read_journal


def test_append_read_and_numpy_values(tmp_path):
    j = Journal(tmp_path / "sub" / "log.jsonl")
    j.append({"x": np.float32(1.5), "v": np.arange(3), "name": "é"})
    j.extend([{"i": i} for i in range(3)])
    assert read_journal(j.path) == [{"x": 1.5, "v": [0, 1, 2], "name": "é"},
                                    {"i": 0}, {"i": 1}, {"i": 2}]
    assert read_journal(tmp_path / "missing.jsonl") == []


def test_torn_line_is_skipped_and_closed(tmp_path):
    path = tmp_path / "log.jsonl"
    j = Journal(path)
    j.append({"a": 1})
    with open(path, "a") as fh:
        fh.write('{"torn": ')  # a crash in the middle of a write
    j.append({"b": 2})
    assert read_journal(path) == [{"a": 1}, {"b": 2}]


def test_records_survive_sigkill(tmp_path):
    path = tmp_path / "log.jsonl"
    code = (
        "import sys, time\n"
        "from expertloop.io.journal import Journal\n"
        f"j = Journal({str(path)!r})\n"
        "for i in range(5):\n"
        "    j.append({'i': i})\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.05)
    assert [r["i"] for r in read_journal(path)] == list(range(5))
