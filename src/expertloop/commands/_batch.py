"""Options and running shared by every batch command (``blood predict``,
``features``, ``flim segment``, ``spots detect``, ``membranes predict``).

They all run through :func:`expertloop.engine.batch.run_batch`; see
``docs/batch.md``.
"""

from __future__ import annotations

import argparse
import sys

INPUTS_HELP = ("images: files, folders (their images), globs such as 'data/*.tif' (quote them) "
               "and @list.txt (one path, folder or glob a line)")


def add_batch_arguments(s: argparse.ArgumentParser, *, output_help: str = "output folder") -> None:
    """``-o``, ``--device`` and the options of where and how the batch runs."""
    s.add_argument("-o", "--output", required=True, help=output_help)
    s.add_argument("--device", default=None,
                   help="compute device: cpu, cuda, cuda:N or mps (default: automatic)")
    g = s.add_argument_group("batch: where the images run (see docs/batch.md)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="address of a running dask scheduler (e.g. tcp://host:8786); its workers "
                        "must see the input and output paths (default: a LocalCluster on this machine)")
    g.add_argument("--scheduler-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="give up connecting to --scheduler after this long (default 10)")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: one per core, at most one per "
                        "image); 0 runs the images one after another in this process, without dask")
    g.add_argument("--in-process", action="store_true",
                   help="LocalCluster workers as threads of this process instead of processes "
                        "(starts faster; one process owns a GPU)")
    g.add_argument("--skip-existing", action="store_true",
                   help="skip images whose outputs exist (rerun a crashed batch with this to finish it)")


def run_batch_command(args: argparse.Namespace, task, files, suffixes, params, out_dir=None):
    """Run ``task`` over ``files`` with the batch options of ``args``; print
    progress, one line per failed image and a summary. Returns the report."""
    from expertloop.cli import _progress_printer
    from expertloop.engine.batch import run_batch
    from expertloop.engine.jobs import run_job

    job = run_batch(task, files, out_dir or args.output, suffixes, params, skip_existing=args.skip_existing,
                    scheduler=args.scheduler, workers=args.workers, processes=not args.in_process,
                    scheduler_timeout=args.scheduler_timeout)
    show = _progress_printer()
    report = run_job(job, on_progress=show)
    print_report(report)
    return report


def print_report(report) -> None:
    """End the progress line; one line per failed image, then the batch summary (on stderr)."""
    print(file=sys.stderr)
    for o in report.failed:
        print(f"failed: {o.source}: {o.message}", file=sys.stderr)
    print(report.summary(), file=sys.stderr)


def exit_code(report) -> int:
    """0 if every image succeeded (or was skipped), 1 if any failed."""
    return 1 if report.failed else 0
