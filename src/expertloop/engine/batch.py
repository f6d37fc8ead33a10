"""Batch runs over many images on ``dask.distributed``: one engine function for all.

:func:`run_batch` is the one batch mechanism of expertloop: ``expertloop blood
predict``, ``features``, ``flim segment``, ``spots detect`` and ``membranes
predict`` all run through it (the per-image steps are in
:mod:`expertloop.engine.batch_tasks`). It is a job (yields progress, returns a
:class:`BatchReport`, cancellable), so a widget can drive it as well.

Where the images run
--------------------
* default: a ``distributed.LocalCluster`` of worker *processes* sized to the
  machine (one worker per core, at most one per image), each with one task
  thread; torch and BLAS in each worker use ``cores // workers`` threads so
  the workers do not oversubscribe the cores;
* ``scheduler="tcp://host:8786"``: an existing cluster (every worker must see
  the input and output paths, e.g. a shared file system);
* ``client=``: a ``distributed.Client`` you made in Python;
* ``processes=False``: the LocalCluster's workers are threads of this process
  (quick to start; used by the tests and fine for GPU runs, where one
  process should own the device);
* ``workers=0``: no dask at all, the images one after another in this process
  (the serial baseline of ``benchmarks/bench_scale.py``).

Models are loaded once per worker process (:func:`worker_cache`), not once
per image.

What is written
---------------
Each image's outputs are written under temporary names in the output folder
and renamed into place (``os.replace``, atomic on one file system) only when
the whole image succeeded, so a crash or a killed worker never leaves a
half-written output (the temporary files of a killed worker are removed at
the end of the batch, those of a crashed run at the start of the next). ``skip_existing=True`` skips images whose outputs all
exist: rerun the same command to finish a crashed batch. An image that fails
is listed in the report with its reason and does not stop the others.
Output names come from :func:`output_names` (unique even for files of the
same name in different folders).
"""

from __future__ import annotations

import glob
import inspect
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from expertloop.engine.config import param
from expertloop.engine.jobs import Job, JobCancelled, Progress, run_job


class BatchInputError(ValueError):
    """Bad batch inputs or settings; the message is one line a user can act on."""


# ---------------------------------------------------------------- inputs
def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _matches(path: Path, suffixes: Sequence[str]) -> bool:
    return path.name.lower().endswith(tuple(s.lower() for s in suffixes))


def _is_image(path: Path, suffixes: Sequence[str], folder_suffixes: Sequence[str]) -> bool:
    if path.is_dir():
        return bool(folder_suffixes) and _matches(path, folder_suffixes)
    return path.is_file() and _matches(path, suffixes)


def expand_inputs(inputs: Iterable[str | os.PathLike], suffixes: Sequence[str] | None = None,
                  folder_suffixes: Sequence[str] | None = None) -> list[Path]:
    """Image files from files, folders, globs and ``@list.txt`` files, in order, without repeats.

    * a file is taken as given (a wrong type fails later, for that image only);
    * a folder gives its files whose names end with one of ``suffixes`` (not
      recursive), and its subfolders ending with ``folder_suffixes`` (default
      ``.zarr``: OME-Zarr images, stored as folders);
    * a glob (``data/*.tif``, ``data/**/*.png``) gives the images it matches;
    * ``@list.txt`` gives the entries of the text file, one a line (files,
      folders or globs; relative to the list file's folder; blank lines and
      lines starting with ``#`` are skipped).

    Raises :class:`BatchInputError` (one line) for a missing path, a glob
    matching no image, a folder without images or an empty result.
    """
    from expertloop.io.readers import FOLDER_SUFFIXES, SUPPORTED_SUFFIXES

    suffixes = tuple(SUPPORTED_SUFFIXES if suffixes is None else suffixes)
    folder_suffixes = tuple(FOLDER_SUFFIXES if folder_suffixes is None else folder_suffixes)
    out: dict[Path, None] = {}

    def add(item: str, base: Path | None) -> None:
        if item.startswith("@"):
            lst = Path(item[1:]).expanduser()
            lst = lst if lst.is_absolute() or base is None else base / lst
            try:
                lines = lst.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise BatchInputError(f"cannot read the list file {lst}: {exc.strerror or exc}") from exc
            entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            if not entries:
                raise BatchInputError(f"the list file {lst} names no images")
            for e in entries:
                add(e, lst.parent)
            return
        p = Path(item).expanduser()
        if base is not None and not p.is_absolute():
            p = base / p
        if _is_glob(item):
            found = [Path(m) for m in sorted(glob.glob(str(p), recursive=True))]
            found = [f for f in found if _is_image(f, suffixes, folder_suffixes)]
            if not found:
                raise BatchInputError(f"no image matches {p} (looked for {', '.join(suffixes + folder_suffixes)})")
            out.update(dict.fromkeys(found))
        elif p.is_dir() and not _is_image(p, suffixes, folder_suffixes):
            found = sorted(f for f in p.iterdir() if _is_image(f, suffixes, folder_suffixes))
            if not found:
                raise BatchInputError(f"no images in the folder {p} (looked for {', '.join(suffixes + folder_suffixes)})")
            out.update(dict.fromkeys(found))
        elif p.exists():
            out[p] = None
        else:
            raise BatchInputError(f"{p} not found")

    for item in inputs:
        add(os.fspath(item), None)
    if not out:
        raise BatchInputError("no input images given")
    return list(out)


def _strip_suffix(name: str, suffixes: Sequence[str]) -> str:
    for suf in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suf.lower()) and len(name) > len(suf):
            return name[: -len(suf)]
    return Path(name).stem


def output_names(files: Sequence[Path], suffixes: Sequence[str] | None = None) -> list[str]:
    """One unique output name per input: the file name without its image
    suffix (``a.b.tif`` -> ``a.b``); files of the same name in different
    folders get their folders in the name (``x__img``, ``y__img``)."""
    from expertloop.io.readers import SUPPORTED_SUFFIXES

    suffixes = tuple(SUPPORTED_SUFFIXES if suffixes is None else suffixes) + (".ome.zarr", ".zarr")
    stems = [_strip_suffix(f.name, suffixes) for f in files]
    dup = {s for s in stems if stems.count(s) > 1}
    if not dup:
        return stems
    resolved = [f.resolve() for f in files]
    common = Path(os.path.commonpath([str(r.parent) for r in resolved]))
    out = []
    for s, r in zip(stems, resolved):
        if s in dup:
            s = "__".join(r.parent.relative_to(common).parts + (s,))
        out.append(s)
    if len(set(out)) != len(out):  # e.g. a.tif and a.png in one folder
        out = [f"{s}.{f.name.rsplit('.', 1)[-1].lower()}" if out.count(s) > 1 else s
               for s, f in zip(out, files)]
    return out


def check_output_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check it is writable (one-line error if not)."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".expertloop-write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise BatchInputError(f"cannot write to the output folder {p}: {exc.strerror or exc}") from exc
    return p


# ---------------------------------------------------------------- workers
_cache: dict[tuple, Any] = {}
_cache_lock = threading.Lock()


def worker_cache(loader: Callable[..., Any], *args: Any) -> Any:
    """``loader(*args)``, computed once per process (so once per dask worker):
    the way batch tasks load their model. An argument naming a file that was
    rewritten since is loaded again (the file's modification time is in the key)."""
    stamps = tuple(os.stat(a).st_mtime_ns if isinstance(a, str) and os.path.isfile(a) else None
                   for a in args)
    key = (getattr(loader, "__module__", ""), getattr(loader, "__qualname__", repr(loader)), args, stamps)
    with _cache_lock:
        if key not in _cache:
            _cache[key] = loader(*args)
        return _cache[key]


def limit_threads(n: int) -> None:
    """Use ``n`` threads for torch and the BLAS/OpenMP pools of this process."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    from expertloop.engine.backend import get_torch

    get_torch().set_num_threads(n)


def temporary_name(target: Path) -> Path:
    """Where ``target`` is written before it is renamed into place (same
    folder, same suffix, hidden)."""
    return target.with_name(f".part-{uuid.uuid4().hex[:10]}-{target.name}")


def remove_leftovers(targets: Iterable[Path]) -> int:
    """Delete temporary files of ``targets`` left by a killed worker or a
    crashed run (see :func:`temporary_name`); returns how many."""
    n = 0
    for t in targets:
        for p in t.parent.glob(f".part-{'[0-9a-f]' * 10}-{glob.escape(t.name)}"):
            p.unlink(missing_ok=True)
            n += 1
    return n


@dataclass
class ImageOutcome:
    """What happened to one image."""

    source: Path
    name: str
    outputs: list[Path]
    status: str  # "done", "skipped" (outputs existed) or "failed"
    message: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def iter_one(task: Callable, source: Path, name: str, targets: list[Path], params: Any,
             threads: int | None = None) -> Job[ImageOutcome]:
    """Job: run ``task`` on one image; write its outputs atomically.

    ``task(source, paths, name, params)`` must write every one of ``paths``
    (temporary names of ``targets``) and return a one-line summary, or be a
    job (generator function) returning it: its progress is then re-yielded
    here and closing this job (Cancel) closes the task's job at its next
    yield. An error is reported in the returned :class:`ImageOutcome`
    (status ``"failed"``), never raised; a cancellation is not a failure:
    :class:`~expertloop.engine.jobs.JobCancelled` (a ``run_job`` inside the
    task that followed the batch's Cancel) propagates. Temporary files are
    removed in every case. Lazy (dask) reads are computed with
    :func:`expertloop.engine.tiling.to_numpy` (in the worker, not through the
    cluster's scheduler).
    """
    t0 = time.perf_counter()
    tmp = [temporary_name(t) for t in targets]
    try:
        if threads:
            limit_threads(threads)
        message = task(source, tmp, name, params)
        if inspect.isgenerator(message):
            message = yield from message
        missing = [t.name for t, p in zip(targets, tmp) if not p.exists()]
        if missing:
            raise RuntimeError(f"the step wrote no {', '.join(missing)}")
        for p, t in zip(tmp, targets):
            os.replace(p, t)
    except JobCancelled:
        raise
    except Exception as exc:  # reported per image, the batch goes on
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, (ValueError, OSError)):
            text = f"{type(exc).__name__}: {text}"
        return ImageOutcome(source, name, targets, "failed", text.splitlines()[0],
                            time.perf_counter() - t0)
    finally:
        for p in tmp:
            if p.exists():
                p.unlink()
    return ImageOutcome(source, name, targets, "done", message or "", time.perf_counter() - t0)


def run_one(task: Callable, source: Path, name: str, targets: list[Path], params: Any,
            threads: int | None = None) -> ImageOutcome:
    """:func:`iter_one` run to its end (what a dask worker runs per image)."""
    return run_job(iter_one(task, source, name, targets, params, threads))


# ---------------------------------------------------------------- the batch
@dataclass
class BatchReport:
    """The outcome of :func:`run_batch`, one :class:`ImageOutcome` per input in input order."""

    outcomes: list[ImageOutcome] = field(default_factory=list)
    seconds: float = 0.0
    where: str = ""

    @property
    def failed(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def done(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "done"]

    @property
    def skipped(self) -> list[ImageOutcome]:
        return [o for o in self.outcomes if o.status == "skipped"]

    def summary(self) -> str:
        return (f"{len(self.done)} done, {len(self.skipped)} skipped (outputs existed), "
                f"{len(self.failed)} failed, in {self.seconds:.1f} s on {self.where}")


@dataclass
class BatchPlace:
    """Where a batch started from a widget runs (the command line has the same
    choices as ``--workers`` and ``--scheduler``)."""

    workers: int = param(0, help="worker processes of a dask LocalCluster on this machine; 0: the images "
                                 "one after another in napari's own process", label="batch workers",
                         min=0, max=256)
    scheduler: str = param("", help="address of a running dask scheduler, e.g. tcp://host:8786, whose "
                                    "workers see the images and the output folder (empty: this machine)",
                           label="dask scheduler")

    def run_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`run_batch` (and of the jobs built on it)."""
        if self.scheduler.strip():
            return {"scheduler": self.scheduler.strip()}
        return {"workers": int(self.workers)}


def default_workers(n_images: int) -> int:
    return max(1, min(os.cpu_count() or 1, n_images))


def connect(scheduler: str, timeout: float = 10.0):
    """A ``distributed.Client`` on an existing scheduler, or a one-line :class:`BatchInputError`."""
    from distributed import Client

    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BatchInputError(f"cannot reach the dask scheduler at {scheduler}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc


def run_batch(task: Callable, files: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              suffixes: Sequence[str], params: Any = None, *, names: Sequence[str] | None = None,
              skip_existing: bool = False, client=None, scheduler: str | None = None,
              workers: int | None = None, processes: bool = True,
              scheduler_timeout: float = 10.0) -> Job[BatchReport]:
    """Job: run ``task`` on every image of ``files`` and write its outputs into ``out_dir``.

    Image ``i`` writes ``out_dir / (names[i] + s)`` for each ``s`` in
    ``suffixes`` (``names`` default: :func:`output_names`). ``task`` is a
    module-level function ``task(source, paths, name, params) -> str`` (it is
    sent to the workers by reference); ``params`` must be picklable. See the
    module docs for ``client``, ``scheduler`` (given up on after
    ``scheduler_timeout`` seconds), ``workers`` and ``processes``.
    Validation (output folder, names) happens before the job starts.
    """
    files = [Path(f) for f in files]
    if not files:
        raise BatchInputError("no input images given")
    if not suffixes:
        raise ValueError("a batch step must write at least one output per image")
    names = list(output_names(files) if names is None else names)
    if len(names) != len(files) or len(set(names)) != len(names):
        raise ValueError("output names must be unique, one per input")
    if workers is not None and workers < 0:
        raise BatchInputError("workers must be 0 (serial) or more")
    out = check_output_folder(out_dir)
    targets = [[out / f"{n}{s}" for s in suffixes] for n in names]
    return _run(task, files, names, targets, params, skip_existing, client, scheduler, workers, processes,
                scheduler_timeout)


def _run(task, files, names, targets, params, skip_existing, client, scheduler, workers,
         processes, scheduler_timeout) -> Job[BatchReport]:
    t0 = time.perf_counter()
    outcomes: list[ImageOutcome | None] = [None] * len(files)
    todo = []
    for i, (f, n, t) in enumerate(zip(files, names, targets)):
        if skip_existing and all(p.exists() for p in t):
            outcomes[i] = ImageOutcome(f, n, t, "skipped", "outputs exist")
        else:
            todo.append(i)
    total = len(files)
    done = total - len(todo)
    yield Progress(done, total, f"{done} of {total} images already done" if done else "starting")

    every = [p for t in targets for p in t]
    remove_leftovers(every)  # of a crashed earlier run

    def finish(where: str) -> BatchReport:
        remove_leftovers(every)  # of workers killed during this run
        return BatchReport([o for o in outcomes if o is not None], time.perf_counter() - t0, where)

    if not todo:
        return finish("nothing to do")
    if workers == 0 and client is None and scheduler is None:
        # in this process: each image's own job is driven from here, so its
        # progress shows and Cancel stops it at its next step
        for i in todo:
            one = iter_one(task, files[i], names[i], targets[i], params)
            try:
                while True:
                    try:
                        record = next(one)
                    except StopIteration as stop:
                        o = stop.value
                        break
                    frac = record.fraction or 0.0
                    yield Progress(round(100 * (done + frac)), 100 * total, f"{names[i]}: {record.message}")
            except JobCancelled:  # a run_job inside the task followed Cancel
                yield Progress(100 * done, 100 * total, f"{names[i]}: cancelled")
                raise  # not reached when driven with the cancel token: the job is closed at the yield
            finally:
                one.close()
            outcomes[i] = o
            done += 1
            yield Progress(100 * done, 100 * total, f"{o.name}: {o.message if o.ok else 'FAILED: ' + o.message}")
        return finish("this process (serial)")

    from distributed import LocalCluster, wait

    own_cluster = own_client = None
    futures: dict = {}
    try:
        threads = None
        if not logging.getLogger().isEnabledFor(logging.INFO):
            # dask sets its own loggers to INFO; their records reach the
            # application's handler unless the application asked for INFO
            logging.getLogger("distributed").setLevel(logging.WARNING)
        if client is None and scheduler is not None:
            client = own_client = connect(scheduler, scheduler_timeout)
            where = f"the scheduler at {scheduler}"
        elif client is None:
            n = workers or default_workers(len(todo))
            threads = max(1, (os.cpu_count() or 1) // n) if processes else None
            own_cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=processes,
                                       dashboard_address=None, silence_logs=50)
            client = own_client = own_cluster.get_client()
            where = f"a LocalCluster of {n} worker {'processes' if processes else 'threads'}"
        else:
            where = f"the client's cluster ({client.scheduler.address})"
        yield Progress(done, total, f"running on {where}")
        futures = {client.submit(run_one, task, files[i], names[i], targets[i], params, threads,
                                 pure=False, key=f"expertloop-{names[i]}-{uuid.uuid4().hex[:8]}"): i
                   for i in todo}
        pending = set(futures)
        while pending:
            try:
                finished = wait(pending, timeout=0.2, return_when="FIRST_COMPLETED").done
            except TimeoutError:
                yield Progress(done, total, f"{len(pending)} images running or queued")
                continue
            for fut in finished:
                i = futures[fut]
                try:
                    o = fut.result()
                except Exception as exc:  # e.g. KilledWorker: the image is listed as failed
                    o = ImageOutcome(files[i], names[i], targets[i], "failed",
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                outcomes[i] = o
                done += 1
                pending.discard(fut)
                yield Progress(done, total, f"{o.name}: {o.message if o.ok else 'FAILED: ' + o.message}")
        return finish(where)
    finally:
        if own_client is not None:
            if any(o is None for o in outcomes):  # cancelled: stop what is still queued
                own_client.cancel(list(futures), force=True)
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
