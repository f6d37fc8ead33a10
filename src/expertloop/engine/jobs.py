"""The job protocol shared by every long engine step.

A *job* is a generator that ``yield``\\ s :class:`Progress` records and
``return``\\ s its result::

    def smooth_stack(stack, sigma) -> Job[np.ndarray]:
        out = np.empty_like(stack)
        for i, plane in enumerate(stack):
            out[i] = gaussian(plane, sigma)
            yield Progress(i + 1, len(stack), f"plane {i + 1}/{len(stack)}")
        return out

Rules every job follows:

* it yields often (at least every ~50 ms of work), so the GUI stays live and
  cancellation is quick;
* it may be stopped at any yield: the runner then calls ``close()`` on it,
  which raises ``GeneratorExit`` at that yield, so ``try/finally`` blocks run
  and no half-written file is left behind;
* it never touches Qt or napari; a partial result (e.g. a preview) may ride
  on ``Progress.partial``.

:func:`run_job` drives a job synchronously (scripts, tests, the CLI); the
napari widgets drive the same generator in a worker thread
(:mod:`expertloop.widgets._jobs`).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress record yielded by a job."""

    step: int
    total: int | None = None  # None: unknown length
    message: str = ""
    partial: Any = None  # optional partial result, e.g. a preview image

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(max(self.step / self.total, 0.0), 1.0)

    def __str__(self) -> str:
        count = f"{self.step}/{self.total}" if self.total else str(self.step)
        return f"[{count}] {self.message}".rstrip()


Job = Generator[Progress, None, T]


class JobCancelled(Exception):
    """Raised by :func:`run_job` when a job was cancelled."""


class JobError(Exception):
    """An engine job failed; the original exception is ``__cause__``.

    (Deliberately not a ``RuntimeError``: Qt worker code treats RuntimeError
    as a deleted-object condition and would swallow it.)
    """


class CancelToken:
    """Thread-safe cancellation flag shared between a runner and a caller."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


#: what :func:`drive` returns when the job was cancelled
CANCELLED = object()

_driving = threading.local()


def current_cancel() -> CancelToken | None:
    """The cancel token of the job this thread is running a step of (None outside jobs).

    :func:`run_job` called inside a job's step (a batch step running one
    image to its end, say) uses it, so Cancel stops the inner job too."""
    return getattr(_driving, "token", None)


def drive(job: Job[T], cancel: CancelToken | None = None) -> Job[T]:
    """Re-yield ``job``'s records, stopping at a yield once ``cancel`` is set.

    The one place that checks cancellation and validates records: both
    :func:`run_job` and the napari ``JobRunner`` drive jobs through it.
    Returns the job's result, or :data:`CANCELLED`. The job is always closed
    in the thread that drives it, so its ``finally`` blocks run there.
    """
    if not hasattr(job, "send") or not hasattr(job, "close"):
        raise TypeError(
            f"expected a job generator, got {type(job).__name__}: "
            "did you call the job function?"
        )
    try:
        while True:
            if cancel is not None and cancel.cancelled:
                return CANCELLED
            outer = current_cancel()
            _driving.token = cancel if cancel is not None else outer
            try:
                record = next(job)
            except StopIteration as stop:
                return stop.value
            finally:
                _driving.token = outer
            if not isinstance(record, Progress):
                raise TypeError(
                    f"a job must yield Progress records, got {type(record).__name__}"
                )
            yield record
    finally:
        job.close()


def run_job(
    job: Job[T],
    *,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: CancelToken | None = None,
) -> T:
    """Run a job to completion in this thread and return its result.

    ``on_progress`` receives every :class:`Progress` record; ``cancel`` is
    checked at every yield: when set, the job is closed at that yield and
    :class:`JobCancelled` is raised. Without ``cancel``, a ``run_job`` inside
    a step of another job follows that job's token (:func:`current_cancel`).
    Exceptions from the job propagate unchanged.
    """
    driver = drive(job, cancel if cancel is not None else current_cancel())
    while True:
        try:
            record = next(driver)
        except StopIteration as stop:
            if stop.value is CANCELLED:
                raise JobCancelled("job cancelled") from None
            return stop.value
        if on_progress is not None:
            on_progress(record)


def rescale(job: Job[T], start: float, stop: float, total: int) -> Job[T]:
    """Map a sub-job's progress onto ``[start, stop]`` of ``total``.

    Use it to compose jobs: ``a = yield from rescale(sub_a(), 0, 50, 100)``,
    then ``b = yield from rescale(sub_b(), 50, 100, 100)``.
    """
    try:
        while True:
            try:
                record = next(job)
            except StopIteration as stop_:
                return stop_.value
            frac = record.fraction
            step = round(start + (frac * (stop - start) if frac is not None else 0))
            yield Progress(step, total, record.message, record.partial)
    finally:
        job.close()


class _Checked:
    def __repr__(self) -> str:
        return "CHECKED"


#: what a :func:`checks_first` job yields once its input checks have passed
CHECKED: Any = _Checked()


def _returning(value: T) -> Job[T]:
    return value
    yield  # pragma: no cover  (makes this a generator)


def checks_first(job_function: Callable[..., Job[T]]) -> Callable[..., Job[T]]:
    """Decorator: the job's input checks run when it is *called*, not at its first step.

    The decorated generator function checks its inputs, then ``yield CHECKED``;
    calling it runs it up to that point, so a bad input raises right away,
    in the caller's thread (a widget can say so before starting a worker),
    and returns the job, which goes on from there. Keep the code before
    ``CHECKED`` cheap: it runs in the caller's thread. ::

        @checks_first
        def smooth(stack, sigma) -> Job[np.ndarray]:
            if sigma <= 0:
                raise ValueError("sigma must be positive")
            yield CHECKED
            ...
    """
    @functools.wraps(job_function)
    def call(*args: Any, **kwargs: Any) -> Job[T]:
        job = job_function(*args, **kwargs)
        try:
            first = next(job)
        except StopIteration as stop:
            return _returning(stop.value)
        if first is not CHECKED:
            job.close()
            raise TypeError(f"{job_function.__qualname__}: a @checks_first job yields CHECKED "
                            "after its checks, before any progress")
        return job

    return call


def call_job(message: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Job[T]:
    """Job: one call ``fn(*args, **kwargs)`` (e.g. a file read or write), for a widget's worker thread.

    It yields before the call (so Cancel before it starts skips it) and after it.
    """
    yield Progress(0, 1, message)
    out = fn(*args, **kwargs)
    yield Progress(1, 1, message)
    return out


def print_progress(record: Progress) -> None:
    """A simple ``on_progress`` callback for scripts: one line per record."""
    print(record, flush=True)
