"""The shared JobRunner in a real viewer: result, progress, cancel, errors."""

import threading
import time

import numpy as np
import pytest

from expertloop.engine.jobs import Progress
from expertloop.widgets._jobs import JobRunner


def adding_job(n, log, delay=0.0):
    try:
        acc = np.zeros((16, 16))
        for i in range(n):
            acc += i
            time.sleep(delay)
            yield Progress(i + 1, n, f"step {i + 1}", partial=i)
        log.append(("thread", threading.current_thread() is threading.main_thread()))
        return acc
    finally:
        log.append("closed")


@pytest.fixture
def runner(make_napari_viewer):
    viewer = make_napari_viewer()
    r = JobRunner()
    viewer.window.add_dock_widget(r, name="runner")
    return viewer, r


def test_job_runs_off_the_gui_thread_and_result_lands_on_main(qtbot, runner):
    viewer, r = runner
    log, progress = [], []

    def on_result(acc):
        assert threading.current_thread() is threading.main_thread()
        viewer.add_image(acc, name="result")

    r.start(adding_job(5, log), description="adding", on_result=on_result, on_progress=progress.append)
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    assert ("thread", False) in log and "closed" in log
    assert viewer.layers["result"].data[0, 0] == 0 + 1 + 2 + 3 + 4
    assert [p.step for p in progress] == [1, 2, 3, 4, 5]
    assert r.status == "adding: done" and not r.running
    assert not r._cancel_btn.enabled


def test_cancel_midway_stops_job_and_viewer_stays_usable(qtbot, runner):
    viewer, r = runner
    log, results, cancelled = [], [], []
    progress = []
    r.start(
        adding_job(10_000, log, delay=0.005),
        description="long",
        on_result=results.append,
        on_cancel=lambda: cancelled.append(True),
        on_progress=progress.append,
    )
    qtbot.waitUntil(lambda: len(progress) >= 3, timeout=10_000)
    assert r._cancel_btn.enabled
    r._cancel_btn.clicked.emit()  # what a click on Cancel does
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    assert cancelled == [True] and results == []
    assert "closed" in log  # the job's finally ran
    assert len(progress) < 10_000
    assert r.status == "long: cancelled"
    # the viewer still works and another job can run
    viewer.add_image(np.ones((8, 8)), name="after")
    assert "after" in viewer.layers
    r.start(adding_job(2, []), description="again", on_result=results.append)
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    assert len(results) == 1


def test_engine_exception_becomes_a_notification(qtbot, runner, notifications):
    viewer, r = runner
    errors = []

    def failing():
        yield Progress(1, 2, "about to fail")
        raise RuntimeError("CUDA out of memory (simulated)")  # torch-style error

    r.start(failing(), description="failing job", on_error=errors.append)
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    assert len(errors) == 1
    msgs = [str(n.message) for n in notifications]
    assert any("failing job failed" in m and "CUDA out of memory" in m for m in msgs), msgs
    assert r.status == "failing job: failed"
    viewer.add_points([[1, 1]])
    assert len(viewer.layers) == 1


def test_only_one_job_at_a_time(qtbot, runner, notifications):
    viewer, r = runner
    r.start(adding_job(50, [], delay=0.01), description="first")
    assert r.start(adding_job(2, []), description="second") is None
    assert any("another job is still running" in str(n.message) for n in notifications)
    r.cancel()
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)


def test_napari_activity_bar_only_for_jobs_that_run_a_while(qtbot, runner, monkeypatch):
    """The activity-dock bar (30-300 ms of GUI time to make) is not made by the click:
    a short job never gets one, a job still running after NAPARI_BAR_DELAY_S does,
    and it is closed when the job ends."""
    import expertloop.widgets._jobs as jobs

    made = []
    real = jobs.napari_progress

    def recording(*args, **kwargs):
        bar = real(*args, **kwargs)
        made.append(bar)
        return bar

    monkeypatch.setattr(jobs, "napari_progress", recording)
    monkeypatch.setattr(JobRunner, "NAPARI_BAR_DELAY_S", 0.2)
    viewer, r = runner
    log = []
    r.start(adding_job(2, log), description="short")
    assert made == [] and r._pbr is None  # not made inside the click
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    qtbot.wait(400)
    assert made == []  # finished before the delay: no bar ever
    gate = threading.Event()

    def slow():
        yield Progress(0, 3, "waiting")
        gate.wait(10)
        yield Progress(3, 3, "done")
        return 1

    r.start(slow(), description="slow")
    assert made == []
    qtbot.waitUntil(lambda: len(made) == 1, timeout=5_000)
    assert made[0].total == 3 and r._pbr is made[0]
    gate.set()
    qtbot.waitUntil(lambda: not r.running, timeout=10_000)
    assert r._pbr is None


def test_a_dock_job_leaves_a_core_to_the_gui_thread(qtbot):
    """A JobRunner (every dock has one) caps torch's threads at cpu_count - 1
    for its jobs (issue 18 item 16: with all cores busy the GUI stalled)."""
    import os

    from expertloop.engine.backend import get_torch
    from expertloop.widgets._jobs import JobRunner

    runner = JobRunner()
    seen = []

    def job():
        yield Progress(0, 1, "threads")
        seen.append(get_torch().get_num_threads())
        return "ok"

    runner.start(job(), description="threads")
    qtbot.waitUntil(lambda: not runner.running, timeout=30_000)
    assert seen and seen[0] <= max(1, (os.cpu_count() or 1) - 1)
