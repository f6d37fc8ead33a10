"""Batch runs on dask.distributed (engine/batch.py): inputs, atomic outputs,
failures, resuming, and real LocalClusters (threads, and 2 worker processes
with one of them SIGKILLed mid-batch)."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import tifffile

from expertloop.engine.batch import (
    BatchInputError,
    expand_inputs,
    output_names,
    run_batch,
)
from expertloop.engine.batch_tasks import OUTPUTS, membranes_predict
from expertloop.engine.jobs import run_job


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from expertloop.engine.membranes.net import NetConfig, build_net, save_net

    net = build_net(NetConfig(window=16, channels=(4, 4, 4), hidden=(8, 8)), seed=3)
    return str(save_net(tmp_path_factory.mktemp("model") / "m", net, kind="target"))


def _images(folder, n, shape=(40, 48)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.tif"
        tifffile.imwrite(p, rng.integers(0, 255, shape, dtype=np.uint8))
        paths.append(p)
    return paths


def _outputs(folder):
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("img*_membranes.tif"))}


def test_expand_inputs_files_folders_globs_and_lists(tmp_path):
    imgs = _images(tmp_path / "a", 3)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "lst.txt").write_text("# comment\n\na/img2.tif\na/img0.tif\n")
    assert expand_inputs([tmp_path / "a"]) == imgs  # the folder's images, not notes.txt
    assert expand_inputs([str(tmp_path / "a" / "img[01].tif")]) == imgs[:2]
    assert expand_inputs([f"@{tmp_path / 'lst.txt'}", str(imgs[2])]) == [imgs[2], imgs[0]]  # no repeats
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "x.txt").write_text("x")
    for bad, words in [([str(tmp_path / "*.png")], "no image matches"),
                       ([tmp_path / "texts"], "no images in the folder"),
                       ([tmp_path / "missing.tif"], "not found"),
                       ([f"@{tmp_path / 'nolist.txt'}"], "cannot read the list file")]:
        with pytest.raises(BatchInputError, match=words):
            expand_inputs(bad)


def test_output_names_are_unique(tmp_path):
    a, b = tmp_path / "x" / "img.tif", tmp_path / "y" / "img.tif"
    assert output_names([tmp_path / "a.b.ome.tif", tmp_path / "c.png"]) == ["a.b", "c"]
    assert output_names([a, b]) == ["x__img", "y__img"]
    assert output_names([tmp_path / "s.tif", tmp_path / "s.png"]) == ["s.tif", "s.png"]


def test_threaded_cluster_equals_serial_lists_failures_and_resumes(model, tmp_path):
    imgs = _images(tmp_path / "in", 4)
    bad = tmp_path / "in" / "broken.tif"
    bad.write_bytes(b"not a tiff")
    files = imgs + [bad]
    params = {"model": model, "tile": 32}
    serial = run_job(run_batch(membranes_predict, files, tmp_path / "serial", OUTPUTS["membranes"],
                               params, workers=0))
    report = run_job(run_batch(membranes_predict, files, tmp_path / "dask", OUTPUTS["membranes"],
                               params, workers=2, processes=False))
    for r in (serial, report):
        assert [o.source.name for o in r.failed] == ["broken.tif"], [o.message for o in r.failed]
        assert "TIFF" in r.failed[0].message
        assert len(r.done) == 4
    assert "LocalCluster of 2 worker threads" in report.where
    a, b = _outputs(tmp_path / "serial"), _outputs(tmp_path / "dask")
    assert sorted(a) == [f"img{i}_membranes.tif" for i in range(4)] == sorted(b)
    for k in a:
        assert a[k].shape == (40, 48) and a[k].dtype == np.float32
        np.testing.assert_array_equal(a[k], b[k])
    assert not [p for p in (tmp_path / "dask").iterdir() if p.name.startswith(".part-")]  # no leftovers
    # resume: existing outputs are skipped, a removed one is redone
    os.remove(tmp_path / "dask" / "img1_membranes.tif")
    crashed = tmp_path / "dask" / ".part-0123456789-img1_membranes.tif"  # as a killed run leaves it
    crashed.write_bytes(b"half")
    again = run_job(run_batch(membranes_predict, files, tmp_path / "dask", OUTPUTS["membranes"],
                              params, workers=0, skip_existing=True))
    assert [o.name for o in again.done] == ["img1"] and len(again.skipped) == 3 and not crashed.exists()
    np.testing.assert_array_equal(_outputs(tmp_path / "dask")["img1_membranes.tif"], a["img1_membranes.tif"])


def test_process_cluster_survives_a_killed_worker(model, tmp_path):
    """2 worker processes; one is SIGKILLed after the first image: dask
    reschedules its work, every image is written once and equals the serial output."""
    files = _images(tmp_path / "in", 8, shape=(96, 96))
    params = {"model": model, "tile": 32}
    serial = run_job(run_batch(membranes_predict, files, tmp_path / "serial", OUTPUTS["membranes"],
                               params, workers=0))
    assert len(serial.done) == 8
    job = run_batch(membranes_predict, files, tmp_path / "dask", OUTPUTS["membranes"], params, workers=2)
    killed = False
    try:
        while True:
            rec = next(job)
            if not killed and rec.step >= 1:
                from distributed import default_client

                pids = default_client().run(os.getpid)
                os.kill(sorted(pids.values())[0], signal.SIGKILL)
                killed = True
    except StopIteration as stop:
        report = stop.value
    assert killed and "2 worker processes" in report.where
    assert len(report.done) == 8 and not report.failed, [o.message for o in report.failed]
    a, b = _outputs(tmp_path / "serial"), _outputs(tmp_path / "dask")
    assert sorted(a) == sorted(b) and len(b) == 8
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not [p for p in (tmp_path / "dask").iterdir() if p.name.startswith(".part-")]


def test_unwritable_output_and_dead_scheduler_are_one_line_errors(model, tmp_path):
    files = _images(tmp_path / "in", 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BatchInputError, match="cannot write to the output folder"):
        run_batch(membranes_predict, files, blocker / "out", OUTPUTS["membranes"], {"model": model})
    job = run_batch(membranes_predict, files, tmp_path / "out", OUTPUTS["membranes"], {"model": model},
                    scheduler="tcp://127.0.0.1:9", scheduler_timeout=1)
    with pytest.raises(BatchInputError, match="cannot reach the dask scheduler at tcp://127.0.0.1:9"):
        run_job(job)


def _steps_task(source, paths, name, params):
    """A step that is a job: 4 progress steps, then its output."""
    from expertloop.engine.jobs import Progress

    for k in range(4):
        yield Progress(k + 1, 4, f"step {k + 1}")
    paths[0].write_text(name)
    return "written"


def _nested_task(source, paths, name, params):
    """A step that runs an inner job with run_job (it follows the batch's Cancel);
    on image i1 the user presses Cancel while that inner job runs."""
    from expertloop.engine.jobs import current_cancel

    if name == "i1":
        current_cancel().cancel()
    return run_job(_steps_task(source, paths, name, params))


@pytest.mark.parametrize("task", [_steps_task, _nested_task])
def test_serial_batch_cancel_stops_inside_an_image_and_is_not_a_failure(task, tmp_path):
    from expertloop.engine.jobs import CancelToken, JobCancelled

    files = [tmp_path / f"i{k}.tif" for k in range(3)]
    for f in files:
        f.write_bytes(b"x")
    out = tmp_path / "out"
    seen, token = [], CancelToken()
    stop_at = "i1: step 2"  # a job step: cancel inside image i1 (the nested one cancels itself)

    def on_progress(p):
        seen.append(p.message)
        if p.message == stop_at:
            token.cancel()

    with pytest.raises(JobCancelled):
        run_job(run_batch(task, files, out, (".txt",), workers=0), on_progress=on_progress, cancel=token)
    assert "i0: written" in seen and not any("FAILED" in m for m in seen), seen  # cancelled is not failed
    if task is _steps_task:
        assert "i0: step 3" in seen  # the image's own progress shows
        assert seen[-1] == "i1: step 2"  # stopped at the image's next step, not after the image
    else:
        assert seen[-1] == "i1: cancelled"  # the inner run_job's JobCancelled ends the batch cleanly
    assert sorted(p.name for p in out.iterdir()) == ["i0.txt"]  # nothing of i1, no temporary file
