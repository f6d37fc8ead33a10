"""BackgroundJournal: appends return at once, records reach the disk in order, a failed write is raised."""

from __future__ import annotations

import threading

import pytest

from expertloop.io.journal import BackgroundJournal, read_journal


def test_records_are_written_in_order_by_the_writer_thread(tmp_path):
    j = BackgroundJournal(tmp_path / "j.jsonl")
    for i in range(200):
        j.append({"i": i})
    assert j.flush(10)
    assert [r["i"] for r in read_journal(j.path)] == list(range(200))
    assert j._thread is not threading.current_thread()


def test_bad_record_raises_at_once_and_a_failed_write_is_raised_later(tmp_path):
    j = BackgroundJournal(tmp_path / "j.jsonl")
    with pytest.raises(TypeError):
        j.append(["not", "a", "dict"])
    (tmp_path / "j.jsonl").mkdir()  # the journal's path is now a folder: the write fails
    j.append({"i": 1})
    with pytest.raises(OSError, match="writing the journal"):
        j.flush(10)
    j.path.rmdir()
    j.append({"i": 2})  # the error was reported once; later records are written
    assert j.flush(10) and [r["i"] for r in read_journal(j.path)] == [2]


def test_records_queued_at_interpreter_exit_reach_the_disk(tmp_path):
    """napari closed right after a click: the daemon writer would be killed with
    records still queued; the exit hook waits for them."""
    import subprocess
    import sys
    import textwrap

    path = tmp_path / "j.jsonl"
    code = textwrap.dedent(f"""
        import time
        from expertloop.io.journal import BackgroundJournal
        slow = BackgroundJournal._write
        def write(self, data):  # a slow disk
            time.sleep(0.3)
            slow(self, data)
        BackgroundJournal._write = write
        j = BackgroundJournal({str(path)!r})
        for i in range(5):
            j.append({{"i": i}})
            time.sleep(0.05)
    """)  # exits right after the last append, without flush
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert [r["i"] for r in read_journal(path)] == list(range(5))
