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

import atexit
import json
import logging
import os
import threading
import weakref
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
        self._write(self._encode(record))

    def extend(self, records) -> None:
        for r in records:
            self.append(r)

    def flush(self, timeout: float | None = None) -> bool:
        """Every appended record is on disk (always true here: appends are synchronous)."""
        return True

    @staticmethod
    def _encode(record: dict[str, Any]) -> bytes:
        if not isinstance(record, dict):
            raise TypeError("a journal record must be a dict")
        line = json.dumps(record, default=_default, ensure_ascii=False, allow_nan=True)
        if "\n" in line:  # json.dumps never emits raw newlines; guard anyway
            raise ValueError("a journal record must serialise to one line")
        return (line + "\n").encode("utf-8")

    def _write(self, data: bytes) -> None:
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

    def read(self) -> list[dict[str, Any]]:
        return read_journal(self.path)

    def __repr__(self) -> str:
        return f"Journal({str(self.path)!r})"


class BackgroundJournal(Journal):
    """A :class:`Journal` whose :meth:`append` returns at once: the record is
    checked and encoded on the caller's thread (a bad record raises there), then
    written and ``fsync``-ed, in order, by one writer thread (records queued
    meanwhile go out in one write + one ``fsync``). For a GUI: no disk wait per
    click. :meth:`flush` waits until everything appended is on disk; a write that
    failed is raised by the next :meth:`append` or :meth:`flush` (never dropped
    silently)."""

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        super().__init__(path, fsync=fsync)
        self._pending: list[bytes] = []
        self._cond = threading.Condition()
        self._busy = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"journal {self.path.name}", daemon=True)
        self._thread.start()
        # the writer is a daemon thread: at interpreter exit (napari closed right after a
        # click) wait for what is queued, or those clicks would be lost
        ref = weakref.ref(self)
        atexit.register(lambda: (j := ref()) is not None and j.flush(10))

    def _raise_error(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise OSError(f"writing the journal {self.path} failed: {exc}") from exc

    def append(self, record: dict[str, Any]) -> None:
        data = self._encode(record)
        with self._cond:
            self._raise_error()
            self._pending.append(data)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch, self._pending, self._busy = self._pending, [], True
            try:
                self._write(b"".join(batch))
            except Exception as exc:  # reported by the next append/flush
                log.error("%s: writing %d records failed: %s", self.path, len(batch), exc)
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s) until every appended record is written; True if so."""
        with self._cond:
            done = self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)
            self._raise_error()
        return done


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
