import threading

import pytest

from expertloop.engine.jobs import (
    CancelToken,
    JobCancelled,
    Progress,
    rescale,
    run_job,
)


def counting_job(n, log):
    try:
        total = 0
        for i in range(n):
            total += i
            yield Progress(i + 1, n, f"step {i + 1}")
        return total
    finally:
        log.append("closed")


def test_run_job_returns_result_and_reports_progress():
    log, seen = [], []
    assert run_job(counting_job(5, log), on_progress=seen.append) == 10
    assert [p.step for p in seen] == [1, 2, 3, 4, 5]
    assert seen[-1].fraction == 1.0 and seen[0].total == 5
    assert log == ["closed"]


def test_cancel_stops_at_a_yield_and_runs_finally():
    log, token = [], CancelToken()
    seen = []

    def on_progress(p):
        seen.append(p.step)
        if p.step == 2:
            token.cancel()

    with pytest.raises(JobCancelled):
        run_job(counting_job(100, log), on_progress=on_progress, cancel=token)
    assert seen == [1, 2]
    assert log == ["closed"]


def test_cancel_from_another_thread():
    token = CancelToken()
    started = threading.Event()

    def slow():
        i = 0
        while True:
            i += 1
            started.set()
            yield Progress(i, None, "spinning")

    t = threading.Timer(0.05, token.cancel)
    t.start()
    with pytest.raises(JobCancelled):
        run_job(slow(), cancel=token)
    assert started.is_set()


def test_job_errors_propagate_unchanged():
    def bad():
        yield Progress(1, 2)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        run_job(bad())


def test_bad_jobs_are_rejected_clearly():
    with pytest.raises(TypeError, match="did you call"):
        run_job(counting_job)  # the function, not a generator

    def yields_junk():
        yield 3

    with pytest.raises(TypeError, match="Progress"):
        run_job(yields_junk())


def test_rescale_composes_sub_jobs():
    def outer(log):
        a = yield from rescale(counting_job(4, log), 0, 50, 100)
        b = yield from rescale(counting_job(2, log), 50, 100, 100)
        return a + b

    log, seen = [], []
    assert run_job(outer(log), on_progress=seen.append) == 6 + 1
    assert [p.step for p in seen] == [12, 25, 38, 50, 75, 100]
    assert all(p.total == 100 for p in seen)
    assert log == ["closed", "closed"]


def test_progress_fraction_unknown_total():
    assert Progress(3).fraction is None
    assert "3" in str(Progress(3, None, "x"))


def test_checks_first_raises_at_the_call_then_runs_from_the_checks():
    from expertloop.engine.jobs import CHECKED, checks_first

    ran = []

    @checks_first
    def job(n):
        if n < 0:
            raise ValueError("n must be >= 0")
        ran.append("checked")
        yield CHECKED
        for i in range(n):
            yield Progress(i + 1, n)
        return n * 10

    with pytest.raises(ValueError, match="n must be"):
        job(-1)  # no run_job needed: the call itself raises
    j = job(2)
    assert ran == ["checked"]
    seen = []
    assert run_job(j, on_progress=seen.append) == 20 and [p.step for p in seen] == [1, 2]

    @checks_first
    def forgot():
        yield Progress(1, 1)

    with pytest.raises(TypeError, match="yields CHECKED"):
        forgot()

    @checks_first
    def trivial():
        yield CHECKED
        return "done"

    assert run_job(trivial()) == "done"


def _serial_step(token, log):
    """A batch-like step: runs an inner job to its end with run_job (no token
    given); Cancel arrives while the inner job runs (a click in the GUI)."""
    def inner():
        for i in range(100):
            if i == 3:
                token.cancel()
            log.append(i)
            yield Progress(i + 1, 100)
    try:
        run_job(inner())
    except JobCancelled:
        log.append("inner cancelled")


def test_run_job_inside_a_step_follows_the_outer_cancel():
    from expertloop.engine.jobs import current_cancel

    token, log = CancelToken(), []

    def outer():
        for _ in range(3):
            _serial_step(token, log)
            yield Progress(1, 3, "image done")
        return "finished"

    with pytest.raises(JobCancelled):
        run_job(outer(), cancel=token)
    assert log == [0, 1, 2, 3, "inner cancelled"]  # stopped at the inner job's next yield
    assert current_cancel() is None
    # a job driven without a token leaves nested run_job calls alone
    log2, other = [], CancelToken()

    def outer2():
        _serial_step(other, log2)  # cancels a token nobody drives with
        yield Progress(1, 1)
        return "ok"

    assert run_job(outer2()) == "ok" and len(log2) == 100
