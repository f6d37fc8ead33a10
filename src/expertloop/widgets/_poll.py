"""Live views: a cheap check run off the GUI thread every few seconds.

:class:`Poller` runs ``check()`` in a napari worker thread on a QTimer, never
two at once, and hands a result that is not ``None`` to ``on_result`` on the
GUI thread. The annotation docks use it to see annotations that others (the
web service, another napari) save in the same project: ``check`` compares a
fingerprint of the annotations (one aggregate query, or an HTTP ETag) and reads
them only when it changed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, QTimer

log = logging.getLogger(__name__)


class Poller(QObject):
    """Every ``interval`` seconds, run ``check()`` in a worker thread (one at a time)."""

    def __init__(self, check: Callable[[], Any], on_result: Callable[[Any], None], *,
                 interval: float = 2.0, on_error: Callable[[BaseException], None] | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.check, self.on_result, self.on_error = check, on_result, on_error
        self._timer = QTimer(self)
        self._timer.timeout.connect(self.poll_now)
        self.interval = interval
        self.worker = None
        self.checks = 0  # finished checks (for tests and the status line)

    @property
    def interval(self) -> float:
        return self._timer.interval() / 1000.0

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._timer.setInterval(max(10, int(seconds * 1000)))

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        """No more checks; a result still in flight is dropped."""
        self._timer.stop()
        if self.worker is not None:
            self._drop(self.worker)

    def poll_now(self) -> None:
        if self.worker is not None:  # the previous check is still running
            return
        worker = create_worker(self.check, _start_thread=False, _ignore_errors=True)
        worker._poller_dropped = False
        self.worker = worker

        def returned(value: Any) -> None:
            if not worker._poller_dropped and value is not None and self._alive():
                self.on_result(value)

        def errored(exc: BaseException) -> None:
            if worker._poller_dropped or not self._alive():
                return
            log.warning("live update failed: %s", exc)
            if self.on_error is not None:
                self.on_error(exc)

        def finished() -> None:
            self.checks += 1
            if self.worker is worker:
                self.worker = None

        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.finished.connect(finished)
        worker.start()

    def _alive(self) -> bool:
        """False once Qt deleted the poller (its dock closed while a check ran)."""
        try:
            self._timer.isActive()
        except RuntimeError:
            return False
        return True

    def _drop(self, worker) -> None:
        worker._poller_dropped = True
        self.worker = None


def marks_snapshot(layer, kind: str) -> list:
    """A Points/Shapes layer's marks in (row, col), comparable between two moments
    (to tell the user's unsaved edits from what was loaded)."""
    if layer is None:
        return []
    if kind == "points":
        return np.round(np.asarray(layer.data, float).reshape(-1, layer.ndim)[:, -2:], 3).tolist()
    return [(t, np.round(np.asarray(d, float)[:, -2:], 3).tolist())
            for d, t in zip(layer.data, layer.shape_type)]
