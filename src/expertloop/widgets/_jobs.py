"""The one shared widget helper: run an engine job off the GUI thread.

:class:`JobRunner` is a small magicgui container (progress bar, status line,
Cancel button) that every workflow widget embeds. ``runner.start(job, ...)``
runs an engine job (a generator of :class:`~expertloop.engine.jobs.Progress`)
in a napari ``thread_worker``:

* each yielded record moves the runner's bar and a napari progress bar in the
  activity dock;
* Cancel stops the job at its next yield (the job is closed in its own
  thread, so its ``finally`` blocks run) and calls ``on_cancel``;
* an exception in the job becomes an error notification (the GUI stays
  alive) and calls ``on_error``;
* the result is handed to ``on_result`` on the main thread, where it is safe
  to add layers to the viewer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning

from expertloop.engine.jobs import (
    CANCELLED,
    CancelToken,
    Job,
    JobError,
    Progress,
    drive,
)

log = logging.getLogger(__name__)

def _guarded(job: Job, token: CancelToken):
    """:func:`~expertloop.engine.jobs.drive` with exceptions as JobError.

    (superqt's worker treats a bare RuntimeError, e.g. from torch, as a
    deleted-object condition and would hide it.)
    """
    try:
        return (yield from drive(job, token))
    except Exception as exc:
        raise JobError(f"{type(exc).__name__}: {exc}") from exc


class JobRunner(Container):
    """Progress bar + status + Cancel, running one engine job at a time."""

    #: seconds a job runs before it also gets a progress bar in napari's activity dock
    NAPARI_BAR_DELAY_S = 0.5

    def __init__(self, **kwargs: Any) -> None:
        self._bar = ProgressBar(value=0, min=0, max=1, label="")
        self._status = Label(value="idle")
        self._cancel_btn = PushButton(text="Cancel", enabled=False)
        super().__init__(
            widgets=[self._bar, self._status, self._cancel_btn],
            labels=False,
            **kwargs,
        )
        self._cancel_btn.changed.connect(self.cancel)
        from expertloop.engine.backend import leave_cores_free

        leave_cores_free(1)  # jobs' torch threads leave a core to the GUI thread (no torch import)
        self.worker = None
        self._token: CancelToken | None = None
        self._pbr: napari_progress | None = None
        self.last_error: BaseException | None = None
        self._in_napari_update = False
        self._last_napari_update = 0.0

    # ---------------------------------------------------------------- API
    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def status(self) -> str:
        return self._status.value

    def start(
        self,
        job: Job,
        *,
        description: str,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_cancel: Callable[[], None] | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ):
        """Run ``job`` in a worker thread and return the worker.

        ``on_finished`` runs after the job ended in any way, once the runner is
        idle again (so it may start the next job).
        """
        if self.running:
            show_info(f"'{description}' not started: another job is still running")
            job.close()
            return None
        self._token = token = CancelToken()
        self._description = description
        self.last_error = None
        # napari's activity-dock bar is opened only once the job has run NAPARI_BAR_DELAY_S:
        # making it costs the click 30-300 ms of GUI time (it adds a Qt widget and calls
        # processEvents), so short jobs (save, export, load) do without it
        self._pbr = None
        self._last_total = 0
        # errors are reported by _report below, not re-raised into the event loop
        worker = create_worker(_guarded, job, token, _start_thread=False, _ignore_errors=True)
        self.worker = worker

        def _progress(record: Progress) -> None:
            if on_progress is not None:
                on_progress(record)
            self._show_progress(record)

        def _returned(value: Any) -> None:
            if value is CANCELLED:
                self._status.value = f"{description}: cancelled"
                if on_cancel is not None:
                    on_cancel()
                return
            self._status.value = f"{description}: done"
            self._bar.max = max(self._bar.max, 1)
            self._bar.value = self._bar.max
            if on_result is not None:
                try:
                    on_result(value)
                except Exception as exc:  # showing the result failed
                    self._report(exc, on_error)

        def _errored(exc: BaseException) -> None:
            self._report(exc, on_error)

        worker.yielded.connect(_progress)
        worker.returned.connect(_returned)
        worker.errored.connect(_errored)
        # warnings raised inside the job (e.g. "using random weights")
        worker.warned.connect(lambda w: self._warn(description, w))
        worker.finished.connect(self._finished)
        if on_finished is not None:  # connected before the thread starts: never missed
            worker.finished.connect(on_finished)
        self._cancel_btn.enabled = True
        self._status.value = f"{description}: starting"
        worker.start()
        from qtpy.QtCore import QTimer

        QTimer.singleShot(int(self.NAPARI_BAR_DELAY_S * 1000), lambda: self._open_napari_bar(worker))
        return worker

    def _open_napari_bar(self, worker) -> None:
        """The napari progress bar of a job still running after NAPARI_BAR_DELAY_S."""
        if self.worker is worker and self._pbr is None and not self._in_napari_update:
            self._in_napari_update = True
            try:
                bar = napari_progress(total=self._last_total, desc=self._status.value or self._description)
            finally:
                self._in_napari_update = False
            if self.worker is worker:
                self._pbr = bar
            else:  # the job finished inside napari's processEvents while the bar was made
                bar.close()

    def cancel(self, *_: Any) -> None:
        """Ask the running job to stop at its next yield."""
        if self._token is not None and self.running:
            self._token.cancel()
            self._status.value = f"{self._description}: cancelling"
            self._cancel_btn.enabled = False

    # ------------------------------------------------------------ private
    def _show_progress(self, record: Progress) -> None:
        total = record.total or 0
        self._last_total = total
        self._bar.max = max(total, 1)
        self._bar.value = min(record.step, self._bar.max) if total else 0
        self._status.value = record.message or f"{self._description}: step {record.step}"
        # napari's progress bar calls QApplication.processEvents() when it
        # changes, so later signals (even `finished`) can run inside this
        # call: update it at most 10 times a second and never re-entrantly.
        pbr = self._pbr
        now = time.monotonic()
        if pbr is None or self._in_napari_update or now - self._last_napari_update < 0.1:
            return
        self._in_napari_update = True
        self._last_napari_update = now
        try:
            if pbr.total != total:
                pbr.total = total
            if self._pbr is pbr:
                pbr.n = record.step
            if self._pbr is pbr:
                pbr.set_description(record.message or self._description)
        finally:
            self._in_napari_update = False

    @staticmethod
    def _warn(description: str, w: tuple) -> None:
        message, category = w[0], w[1]
        if issubclass(category, (DeprecationWarning, PendingDeprecationWarning, FutureWarning)):
            return  # developer warnings: not for the user's notification area
        show_warning(f"{description}: {message}")

    def _report(self, exc: BaseException, on_error) -> None:
        self.last_error = exc
        cause = exc.__cause__ or exc
        log.error("%s failed", self._description, exc_info=(type(cause), cause, cause.__traceback__))
        message = str(exc) if isinstance(exc, JobError) else f"{type(exc).__name__}: {exc}"
        self._status.value = f"{self._description}: failed"
        show_error(f"{self._description} failed: {message}")
        if on_error is not None:
            on_error(exc)

    def _finished(self) -> None:
        if self._pbr is not None:
            self._pbr.close()
            self._pbr = None
        self._cancel_btn.enabled = False
        self.worker = None
        self._token = None
