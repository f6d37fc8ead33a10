"""Append-only JSON-lines journals that survive a crash.

Every record is written as one line, flushed and ``fsync``-ed before
:meth:`Journal.append` returns, so killing the process (even with SIGKILL)
loses no record already appended. A torn last line (the process died in the
middle of a write) or any other line that is not a JSON object is skipped,
with its line number, by :func:`read_journal`.

::

    log = Journal("clicks.jsonl")
    log.append({"event": "click", "x": 3.0, "y": 4.5})
    records = read_journal("clicks.jsonl")

Values must be JSON-serialisable (numpy scalars and arrays are converted).
Several processes may append to one journal: each record is written with a
single ``write`` call on a file opened in append mode (atomic on local
filesystems for lines below the pipe buffer size, 4 KiB).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class Journal:
    """An append-only JSON-lines file; one :meth:`append` = one durable line."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        if not isinstance(record, dict):
            raise TypeError("a journal record must be a dict")
        line = json.dumps(record, default=_default, ensure_ascii=False, allow_nan=True)
        if "\n" in line:  # json.dumps never emits raw newlines; guard anyway
            raise ValueError("a journal record must serialise to one line")
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # close a torn line left by a crash
                os.write(fd, data)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def extend(self, records) -> None:
        for r in records:
            self.append(r)

    def read(self) -> list[dict[str, Any]]:
        return read_journal(self.path)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"


def read_journal(path: str | os.PathLike, *, problems: list | None = None,
                 with_lines: bool = False) -> list:
    """All complete records of a journal, in order ([] if the file is missing).

    A line that is not valid JSON (a torn write at a crash) or not a JSON
    object is skipped and logged with its line number, and appended to
    ``problems`` as ``(line, reason)`` when a list is given: one bad line
    never makes the rest of the journal unreadable. ``with_lines`` returns
    ``(line number, record)`` pairs instead of records.
    """
    p = Path(path)
    if not p.exists():
        return []
    out: list = []
    with open(p, encoding="utf-8", errors="replace") as fh:
        lines = fh.read().split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            report_bad_record(p, i, "not valid JSON (torn write?)", problems)
            continue
        if not isinstance(rec, dict):
            report_bad_record(p, i, f"a JSON {type(rec).__name__}, not an object", problems)
            continue
        out.append((i, rec) if with_lines else rec)
    return out


def report_bad_record(path: str | os.PathLike, line: int | None, reason: str,
                      problems: list | None) -> None:
    """Log a skipped record (``path``, line ``line``) and add it to ``problems``."""
    where = f"line {line}" if line is not None else "a record"
    log.warning("%s: skipping %s: %s", path, where, reason)
    if problems is not None:
        problems.append((line, reason))
