"""What every ``expertloop`` subcommand shares: help layout, ``--json``, exit codes.

* :func:`action` makes a subcommand parser with a description and an
  ``examples:`` section, shown by ``expertloop GROUP ACTION --help``.
* :func:`add_json` adds ``--json`` with the one meaning it has everywhere:
  standard output carries exactly one JSON document, the command's result;
  progress and messages go to standard error. :func:`emit` prints either that
  document or the human-readable lines.
* :data:`EXIT_CODES` is the table shown by ``expertloop --help``.

Not a workflow module (the leading underscore keeps it out of
``cli.workflow_command_modules``); imports nothing heavy.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: exit codes of every expertloop command (shown by ``expertloop --help``)
EXIT_CODES = """\
exit codes (every command):
  0    done
  1    done, but some inputs were skipped or a check found problems
       (each one is named on standard error); or an unexpected internal
       error (one line; --debug shows the traceback)
  2    nothing done: bad arguments, an unreadable or invalid input file, an
       invalid model, a refused store operation
  130  interrupted (Ctrl-C)

--json (where a command has it): standard output is exactly one JSON
document, the command's result; progress and messages go to standard error.
"""

JSON_HELP = ("print the result as one JSON document on standard output "
             "(messages go to standard error)")


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-line paragraphs to the terminal; keeps paragraphs that have
    their own line breaks (examples, tables, command lists) as written."""

    def _fill_text(self, text, width, indent):
        paras = text.split("\n\n")
        return "\n\n".join(p if "\n" in p.strip("\n") else super(HelpFormatter, self)._fill_text(p, width, indent)
                           for p in paras)


def action(sub, name: str, help: str, examples: Sequence[str], description: str | None = None,
           **kw) -> argparse.ArgumentParser:
    """A subcommand with ``help`` (one line, in the group's list), a
    ``description`` (default: ``help`` as a sentence) and ``examples``."""
    text = description or (help[:1].upper() + help[1:] + ".")
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    return sub.add_parser(name, help=help, description=text, epilog=epilog,
                          formatter_class=HelpFormatter, **kw)


def group(sub, name: str, help: str, description: str, dest: str, metavar: str = "ACTION"):
    """A command group (``expertloop NAME ACTION ...``) and its sub-parsers."""
    p = sub.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)
    return p, p.add_subparsers(dest=dest, metavar=metavar, required=True)


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N or mps (default: CUDA, then MPS, then CPU)")


def add_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def add_package_export(parser: argparse.ArgumentParser, what: str, default_name: str) -> None:
    """Arguments of 'WORKFLOW export' (a bioimage.io package of a saved network)."""
    parser.add_argument("model", help=f"a {what} saved by the widget or the command line (.pt)")
    parser.add_argument("-o", "--output", required=True, help="package to write (.zip)")
    parser.add_argument("--test-image", required=True,
                        help="an image like those the network is for: the package's test input")
    parser.add_argument("--name", default=default_name, help="model name shown on bioimage.io")
    parser.add_argument("--author", action="append",
                        help="author name (repeatable; default: napari-expertloop user)")
    parser.add_argument("--license", default="BSD-3-Clause",
                        help="SPDX licence of the weights (default BSD-3-Clause)")
    add_json(parser)
    parser.set_defaults(outputs={"output": "file"})


def add_package_import(parser: argparse.ArgumentParser) -> None:
    """Arguments of 'WORKFLOW import' (a bioimage.io package back to .pt)."""
    parser.add_argument("package", help="bioimage.io model package (.zip or rdf.yaml)")
    parser.add_argument("-o", "--output", required=True, help="model path (writes .pt + .json)")
    add_json(parser)
    parser.set_defaults(outputs={"output": "model"})


def package_args(args: argparse.Namespace) -> dict:
    """Keyword arguments of an ``export_*_model`` function from 'export' arguments."""
    return {"name": args.name, "authors": tuple(args.author or ("napari-expertloop user",)),
            "license": args.license}


def _plain(obj: Any):
    """JSON for numpy scalars/arrays, paths and sets."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def emit(args: argparse.Namespace, result: Any, lines: Iterable[str] = ()) -> None:
    """With ``--json``: ``result`` as JSON on stdout. Without: ``lines`` on stdout."""
    if getattr(args, "json", False):
        sys.stdout.write(json.dumps(result, default=_plain) + "\n")
    else:
        for line in lines:
            print(line)


def batch_result(report, **extra) -> dict:
    """The ``--json`` document of a batch command: one record per input image."""
    images = [{"image": str(o.source), "name": o.name, "status": o.status, "message": o.message,
               "outputs": [str(x) for x in o.outputs]} for o in report.outcomes]
    return {"images": images, "failed": sum(o.status == "failed" for o in report.outcomes), **extra}


def note(message: str) -> None:
    """A message for the person (standard error, so ``--json`` output stays clean)."""
    print(message, file=sys.stderr)
