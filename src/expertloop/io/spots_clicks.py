"""Timed spot clicks: a crash-safe click log and the annotation table (CSV).

Every click is appended to a JSON-lines journal (:class:`expertloop.io.journal.Journal`,
one ``fsync`` per record) *as it happens*, so killing napari, even with
SIGKILL, loses no click already made. :func:`read_clicks` replays the journal
into the annotation table; :func:`export_csv` / :func:`import_csv` move that
table in and out as CSV.

Journal records (one JSON object per line)::

    {"event": "session", "session_id": ..., "annotator": ..., "image": ..., "shape": [...], "timestamp": ...}
    {"event": "click", "click_id": ..., <the table columns below>}
    {"event": "delete", "click_id": ..., "session_id": ..., "timestamp": ...}

Annotation table (``CLICK_COLUMNS``, also the CSV header, also the Points
layer's ``features`` plus the coordinates):

=================== ==========================================================
column              meaning
=================== ==========================================================
``click_id``        unique id of the click (``<session_id>-<n>``)
``z``, ``y``, ``x`` position in the image's pixel (data) coordinates; ``z`` is
                    the slice axis (for a 2D image ``z`` is 0)
``slice``           integer slice index the click was made on
``latency_s``       raw labelling latency: seconds since the previous click of
                    the same session (for the session's first click: since the
                    session started, flagged by ``first_in_session``)
``first_in_session`` True for the first click of a session
``timestamp``       wall-clock time of the click (Unix seconds, UTC)
``annotator``       who clicked
``session_id``      one id per annotation session (widget binding or script)
``contrast_lo``,    the image's contrast limits when the click was made
``contrast_hi``
``zoom``            the viewer's camera zoom when the click was made
=================== ==========================================================

Deleting a point keeps the log consistent: a ``delete`` record (tombstone)
is appended for its ``click_id``; :func:`read_clicks` drops tombstoned
clicks. The latencies of the *other* clicks are not changed: the next click's
latency is still measured from the last click *made* (deleted or not),
because the time spent on a wrong click is time the expert really spent.
"""

from __future__ import annotations

import csv
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs

from expertloop.io.journal import BackgroundJournal, Journal, read_journal

CLICK_COLUMNS = (
    "click_id", "z", "y", "x", "slice", "latency_s", "first_in_session", "timestamp",
    "annotator", "session_id", "contrast_lo", "contrast_hi", "zoom",
)
FEATURE_COLUMNS = tuple(c for c in CLICK_COLUMNS if c not in ("z", "y", "x"))
_FLOAT = {"z", "y", "x", "latency_s", "timestamp", "contrast_lo", "contrast_hi", "zoom"}
_INT = {"slice"}
_BOOL = {"first_in_session"}


class ClickError(ValueError):
    """A click that cannot be recorded (outside the image, bad coordinates)."""


def user_log_folder() -> Path:
    """The per-user folder for click logs of images that have no writable
    home of their own (``<user data dir>/napari-expertloop/spot-logs``)."""
    return Path(platformdirs.user_data_dir("napari-expertloop")) / "spot-logs"


def _inside_package(path: str | os.PathLike) -> bool:
    package = Path(__file__).resolve().parents[1]
    return Path(path).resolve().is_relative_to(package)


def default_log_path(image_path: str | os.PathLike | None, folder: str | os.PathLike | None = None,
                     name: str = "image") -> Path:
    """Where the click log of an image goes: ``<folder>/<name>.spots.jsonl``
    if a folder is given, else ``<image>.spots.jsonl`` next to the image file;
    an image without a file, or one shipped inside the installed package (the
    samples), logs to :func:`user_log_folder` instead."""
    if folder is not None:
        return Path(folder) / f"{name}.spots.jsonl"
    if image_path is None or _inside_package(image_path):
        return user_log_folder() / f"{name}.spots.jsonl"
    p = Path(image_path)
    stem = p.name
    for suf in (".nii.gz", ".nii", ".tiff", ".tif", ".png", ".jpg", ".jpeg"):
        if stem.lower().endswith(suf):
            stem = stem[: -len(suf)]
            break
    return p.with_name(f"{stem}.spots.jsonl")


class ClickLog:
    """Record timed clicks of one annotation session into a journal.

    ``shape`` is the image's spatial shape (``(Z, Y, X)`` or ``(Y, X)``);
    clicks outside it raise :class:`ClickError`. ``clock`` (seconds,
    monotonic) can be replaced in tests or simulations.

    Usable from the napari console or a script::

        log = ClickLog("scan1.spots.jsonl", shape=(181, 217, 181), annotator="ana")
        rec = log.click((90, 100, 80), contrast_limits=(0, 255), zoom=2.0)
        rec["latency_s"]  # seconds since the session started (first click)
    """

    def __init__(self, path: str | os.PathLike, *, shape: Sequence[int] | None = None,
                 annotator: str = "expert", image: str | None = None, session_id: str | None = None,
                 clock=time.monotonic, wallclock=time.time, background: bool = False) -> None:
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if len(shape) not in (2, 3):
                raise ValueError(f"spot annotation needs a 2D or 3D image, got shape {shape}")
        self.shape = shape
        # background: appends return at once, a writer thread writes + fsyncs them in order
        self.journal = (BackgroundJournal if background else Journal)(path)
        self.path = self.journal.path
        self.annotator = str(annotator)
        self.session_id = session_id or uuid.uuid4().hex[:12]
        self._clock = clock
        self._wall = wallclock
        self._start = clock()
        self._last: float | None = None
        self._n = 0
        self.journal.append({
            "event": "session", "session_id": self.session_id, "annotator": self.annotator,
            "image": image, "shape": list(shape) if shape is not None else None,
            "timestamp": wallclock(),
        })

    def check(self, coords: Sequence[float]) -> np.ndarray:
        c = np.asarray(coords, dtype=np.float64).ravel()
        if self.shape is not None and len(c) != len(self.shape):
            raise ClickError(f"a click needs {len(self.shape)} coordinates, got {len(c)}")
        if not np.all(np.isfinite(c)):
            raise ClickError(f"click coordinates {c.tolist()} are not finite")
        if self.shape is not None:
            r = np.round(c)
            if (r < 0).any() or (r >= np.asarray(self.shape)).any():
                raise ClickError(
                    f"click at {np.round(c, 1).tolist()} is outside the image "
                    f"(shape {list(self.shape)}); it was not recorded"
                )
        return c

    def click(self, coords: Sequence[float], *, contrast_limits: Sequence[float] | None = None,
              zoom: float | None = None) -> dict[str, Any]:
        """Record one click now; returns the table row that was written."""
        c = self.check(coords)
        now = self._clock()
        first = self._last is None
        latency = now - (self._start if first else self._last)
        self._last = now
        self._n += 1
        zyx = (0.0, *c) if len(c) == 2 else tuple(c)
        lo, hi = (contrast_limits if contrast_limits is not None else (np.nan, np.nan))
        row = {
            "click_id": f"{self.session_id}-{self._n}",
            "z": float(zyx[0]), "y": float(zyx[1]), "x": float(zyx[2]),
            "slice": int(round(zyx[0])),
            "latency_s": float(latency),
            "first_in_session": bool(first),
            "timestamp": float(self._wall()),
            "annotator": self.annotator,
            "session_id": self.session_id,
            "contrast_lo": float(lo), "contrast_hi": float(hi),
            "zoom": float(zoom) if zoom is not None else float("nan"),
        }
        self.journal.append({"event": "click", **row})
        return row

    def delete(self, click_id: str) -> None:
        """Append a tombstone for ``click_id`` (the click is dropped on replay)."""
        self.journal.append({"event": "delete", "click_id": str(click_id),
                             "session_id": self.session_id, "timestamp": self._wall()})


# --------------------------------------------------------------- the table
def _empty_table() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for c in CLICK_COLUMNS:
        if c in _FLOAT:
            out[c] = np.zeros(0, np.float64)
        elif c in _INT:
            out[c] = np.zeros(0, np.int64)
        elif c in _BOOL:
            out[c] = np.zeros(0, bool)
        else:
            out[c] = np.zeros(0, object)
    return out


def rows_to_table(rows: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A list of click rows -> dict of column arrays (``CLICK_COLUMNS``)."""
    if not rows:
        return _empty_table()
    out: dict[str, np.ndarray] = {}
    for c in CLICK_COLUMNS:
        vals = [r.get(c) for r in rows]
        if c in _FLOAT:
            out[c] = np.array([np.nan if v is None or v == "" else float(v) for v in vals], np.float64)
        elif c in _INT:
            out[c] = np.array([int(float(v)) for v in vals], np.int64)
        elif c in _BOOL:
            out[c] = np.array([v in (True, "True", "true", "1", 1) for v in vals], bool)
        else:
            out[c] = np.array(["" if v is None else str(v) for v in vals], object)
    return out


def _click_problem(rec: dict[str, Any]) -> str | None:
    """Why a journal click record cannot be used (None if it can)."""
    if not isinstance(rec.get("click_id"), str) or not rec["click_id"]:
        return "a click without a click_id"
    for c in CLICK_COLUMNS:
        v = rec.get(c)
        try:
            if c in ("z", "y", "x"):
                if not np.isfinite(float(v)):
                    return f"{c} = {v!r} is not a finite number"
            elif c in _INT:
                if v is None or not float(v).is_integer():
                    return f"{c} = {v!r} is not a whole number"
            elif c in _FLOAT and v not in (None, ""):
                float(v)
        except (TypeError, ValueError, OverflowError):
            return f"{c} = {str(v)[:40]} is not a number"
    return None


def read_clicks(path: str | os.PathLike, *, problems: list | None = None) -> dict[str, np.ndarray]:
    """Replay a click journal: the table of clicks not deleted, in click order.

    A line that is not a JSON object, or a click record with a missing or
    non-numeric coordinate, is skipped, logged with its line number and
    added to ``problems`` (``(line, reason)``) when a list is given; the
    other clicks are kept.
    """
    from expertloop.io.journal import report_bad_record

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"click log {p} not found")
    records = read_journal(p, problems=problems, with_lines=True)
    deleted = {r.get("click_id") for _, r in records if r.get("event") == "delete"}
    rows = []
    for line, r in records:
        if r.get("event") != "click" or r.get("click_id") in deleted:
            continue
        why = _click_problem(r)
        if why is not None:
            report_bad_record(p, line, why, problems)
            continue
        rows.append(r)
    return rows_to_table(rows)


def table_points(table: dict[str, np.ndarray], ndim: int = 3) -> np.ndarray:
    """The ``(N, ndim)`` coordinates of a click table (``ndim`` 2 drops ``z``)."""
    cols = ("z", "y", "x") if ndim == 3 else ("y", "x")
    return np.stack([np.asarray(table[c], np.float64) for c in cols], axis=1).reshape(-1, ndim)


def export_csv(table: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write the annotation table as CSV with the ``CLICK_COLUMNS`` header."""
    p = Path(path)
    n = len(table["z"]) if "z" in table else 0
    missing = [c for c in CLICK_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"annotation table lacks columns {missing}")
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CLICK_COLUMNS)
        for i in range(n):
            w.writerow([_fmt(table[c][i]) for c in CLICK_COLUMNS])
    os.replace(tmp, p)
    return p


def _fmt(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, (float, np.floating)):
        return "" if np.isnan(v) else repr(float(v))
    return str(v)


def import_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an annotation table written by :func:`export_csv` (or by hand).

    Required columns: ``z``, ``y``, ``x``; ``latency_s`` is needed for
    training the L-CNN. Missing optional columns are filled (NaN / empty).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"annotation table {p} not found")
    with open(p, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM (Excel) is not a column name
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        need = [c for c in ("z", "y", "x") if c not in header]
        if need:
            raise ValueError(f"{p.name}: the annotation table needs columns z, y, x; missing {need}")
        rows = []
        for i, r in enumerate(reader, 2):
            try:
                row = dict(r)
                for c in ("z", "y", "x"):
                    float(row[c])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{p.name}: line {i} has a bad coordinate ({exc})") from exc
            row.setdefault("slice", int(round(float(row["z"]))))
            if row.get("slice") in (None, ""):
                row["slice"] = int(round(float(row["z"])))
            row.setdefault("click_id", f"csv-{i - 1}")
            rows.append(row)
    return rows_to_table(rows)
