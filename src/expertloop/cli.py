"""The ``expertloop`` command: batch and headless use.

::

    expertloop --version
    expertloop info                     # versions and the compute device
    expertloop gui --sample mri         # napari with the suite and a sample
    expertloop features IMG... -o DIR   # CNN feature PCA images, in batch

Workflows add their own subcommands from ``expertloop/commands/<workflow>.py``
(each module defines ``add_commands(subparsers)``). Library code never calls ``sys.exit``;
only :func:`main` turns errors into exit codes.

Errors: a user error (a bad file, a missing input, an output that cannot be
written, a full or read-only disk) prints one ``expertloop: error: ...`` line
and exits with 2; anything unexpected prints one line and "run with --debug"
and exits with 1; ``--debug`` shows the traceback of either. A subcommand
declares its outputs (``set_defaults(outputs={"output": "folder"})``, kinds
``folder``, ``file``, ``model`` or a function of the arguments giving one), and
:func:`main` checks they can be written before any work starts, so a long
training never fails at its last step because ``-o`` points at a read-only
folder.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from expertloop import __version__


def _progress_printer(stream=sys.stderr):
    def show(record) -> None:
        frac = record.fraction
        pct = f"{100 * frac:5.1f}%" if frac is not None else "  ... "
        stream.write(f"\r{pct} {record.message[:70]:<70}")
        stream.flush()

    return show


# ------------------------------------------------------------- outputs
class OutputError(ValueError):
    """An output path that cannot be written (checked before any work)."""


def _os_reason(exc: OSError) -> str:
    """A plain reason for an OS error, naming read-only and full disks."""
    plain = {errno.EROFS: "the disk is read-only", errno.ENOSPC: "the disk is full",
             errno.EDQUOT: "the disk quota is exceeded", errno.EACCES: "permission denied",
             errno.EPERM: "not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
             errno.EISDIR: "it is a folder", errno.ENAMETOOLONG: "the name is too long",
             errno.ENOENT: "no such file or folder"}
    return plain.get(exc.errno, (exc.strerror or str(exc)).lower())


def _probe_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".expertloop-write-test-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {_os_reason(exc)}") from exc


def check_output(path: str | os.PathLike, kind: str) -> None:
    """Refuse, before any work, an output that cannot be written.

    ``kind``: ``"folder"`` (created if missing; must not be a file),
    ``"file"`` (must not be a folder; its folder is created) or ``"model"``
    (the ``.pt`` and ``.json`` pair of a model path). Raises :class:`OutputError`.
    """
    p = Path(path)
    if kind == "model":
        from expertloop.engine.persistence import model_paths

        for f in model_paths(p):
            check_output(f, "file")
        return
    if kind == "folder":
        if p.exists() and not p.is_dir():
            raise OutputError(f"{p} exists and is a file; the output must be a folder")
        _probe_folder(p)
        return
    if kind != "file":
        raise ValueError(f"unknown output kind {kind!r}")
    if p.is_dir():
        raise OutputError(f"{p} is a folder; the output must be a file name")
    if str(p).endswith(("/", os.sep)):
        raise OutputError(f"{p} ends with a separator; the output must be a file name")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {p}: {parent} is a file, not a folder")
            break
    _probe_folder(p.parent)
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"cannot write {p}: the file is read-only")


def check_outputs(args: argparse.Namespace) -> None:
    """Check every output a subcommand declared in ``outputs`` (see :func:`check_output`)."""
    outputs: Mapping[str, str | Callable] = getattr(args, "outputs", None) or {}
    for attr, kind in outputs.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        check_output(value, kind(args) if callable(kind) else kind)


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


# ------------------------------------------------------------- commands
def cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    from expertloop.commands._cli import emit
    from expertloop.engine.device import device_info

    versions = {"napari-expertloop": __version__, "python": platform.python_version()}
    for pkg in ("napari", "npe2", "magicgui", "torch", "torchvision", "numpy",
                "scikit-image", "scikit-learn", "tifffile", "nibabel"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    info = device_info(args.device)
    lines = [f"napari-expertloop {__version__}", f"python {platform.python_version()} on {platform.platform()}"]
    lines += [f"{k} {v or '(not installed)'}" for k, v in list(versions.items())[2:]]
    emit(args, {"versions": versions, "platform": platform.platform(), "device": str(info)},
         lines + [f"device: {info}"])
    return 0


def build_viewer(paths: Sequence[str] = (), sample: str | None = None,
                 widgets: Sequence[str] | None = None, show: bool = True):
    """A napari viewer with the given files, sample and expertloop widgets."""
    import napari

    viewer = napari.Viewer(show=show)
    for path in paths:
        # NIfTI/TIFF/OME-Zarr through this plugin (voxel size, orientation); anything
        # else (PNG, JPEG, ...) through napari's own readers, as File > Open.
        name = str(path).lower()
        ours = name.rstrip("/").endswith((".nii", ".nii.gz", ".tif", ".tiff", ".zarr"))
        viewer.open(path, plugin="napari-expertloop" if ours else None)
    if sample:
        viewer.open_sample("napari-expertloop", sample)
    if not widgets:  # the sample's workflow, else the 'Start here' dock that lists them
        from expertloop.widgets.start import docks_for_sample

        widgets = docks_for_sample(sample) or ["Start here"]
    for widget in widgets:
        viewer.window.add_plugin_dock_widget("napari-expertloop", widget)
    return viewer


def cmd_gui(args: argparse.Namespace) -> int:
    import napari

    build_viewer(args.paths, args.sample, args.widget)
    napari.run()
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from expertloop.commands._batch import exit_code, run_batch_command
    from expertloop.commands._cli import batch_result, emit
    from expertloop.engine.batch import expand_inputs
    from expertloop.engine.batch_tasks import feature_pca_image
    from expertloop.engine.config import build, given_values
    from expertloop.engine.features import FeatureConfig

    files = expand_inputs(args.images)
    cfg = build(FeatureConfig, given_values(args, FeatureConfig))
    params = {"backbone": cfg.backbone, "pretrained": args.pretrained, "tile": cfg.tile,
              "device": args.device, "seed": cfg.seed}
    report = run_batch_command(args, feature_pca_image, files, (f"_{cfg.backbone}_features.tif",), params)
    emit(args, batch_result(report))
    return exit_code(report)


# --------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from expertloop.commands._cli import (
        EXIT_CODES,
        HelpFormatter,
        action,
        add_device,
        add_json,
    )

    p = argparse.ArgumentParser(
        prog="expertloop",
        description="napari-expertloop: learn from scarce expert labels in bioimages. "
                    "'expertloop COMMAND --help' describes a command, with examples.",
        epilog=EXIT_CODES, formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"napari-expertloop {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (for bug reports)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = action(sub, "info", "print versions and the compute device",
               ["expertloop info", "expertloop info --device cpu --json"],
               description="Print the versions of napari-expertloop and the main packages, and which "
                           "compute device would be used (and why).")
    add_device(s)
    add_json(s)
    s.set_defaults(func=cmd_info)

    s = action(sub, "gui", "open napari with the expertloop widgets", [
        "expertloop gui --sample blood --widget \"Blood cell detector\"",
        "expertloop gui scan.nii.gz --widget \"Spot annotator\" --widget \"Spot detector\"",
    ], description="Open napari with files and/or a sample and dock expertloop widgets (default: "
                   "the sample's workflow, else 'Start here', which lists the workflows). NIfTI and TIFF open with expertloop's reader, other files with napari's.")
    s.add_argument("paths", nargs="*", help="images to open")
    s.add_argument("--sample", choices=["mri", "nuclei", "spots", "membranes", "flim", "blood", "semiauto"],
                   help="open a sample (one per workflow: spots, membranes, flim, blood, semiauto; "
                        "docs/data.md)")
    s.add_argument("--widget", action="append",
                   help="widget to dock, by its name in the Plugins menu (repeatable)")
    s.set_defaults(func=cmd_gui)

    from expertloop.commands._batch import INPUTS_HELP, add_batch_arguments
    from expertloop.engine.config import add_arguments
    from expertloop.engine.features import FeatureConfig

    s = action(sub, "features", "CNN feature PCA images for a batch of files", [
        "expertloop features *.tif -o features/",
        "expertloop features scans/ -o out/ --backbone resnet18 --pretrained no --workers 2",
        "expertloop features nuclei.tif -o out/ --workers 0 --json > features.json",
    ], description="Write OUT/<image>_<backbone>_features.tif (RGB: the first 3 principal components "
                   "of the backbone's features, pixel size times its stride) per image.")
    s.add_argument("images", nargs="+", help=INPUTS_HELP + "; NIfTI, TIFF, PNG or JPEG")
    s.add_argument("--pretrained", default="auto", type=_pretrained,
                   help="ImageNet weights: auto (if available, default), yes or no")
    add_arguments(s, FeatureConfig)  # --backbone, --tile, --seed from the engine
    add_batch_arguments(s)
    add_json(s)
    s.set_defaults(func=cmd_features, outputs={"output": "folder"})

    # Workflow subcommands live in expertloop.commands.<workflow> modules,
    # each with an ``add_commands(subparsers)`` function.
    for module in workflow_command_modules():
        module.add_commands(sub)

    return p


def workflow_command_modules() -> list:
    """The ``expertloop.commands`` modules, in name order (no torch import)."""
    import importlib
    import pkgutil

    from expertloop import commands

    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__)
                   if not m.name.startswith("_"))
    return [importlib.import_module(f"expertloop.commands.{n}") for n in names]


def _pretrained(value: str):
    v = value.lower()
    if v == "auto":
        return "auto"
    if v in ("yes", "true", "1"):
        return True
    if v in ("no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError("use auto, yes or no")


def _user_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:  # raised by the OS (our own have no errno)
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{_os_reason(exc)}"
    return str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere, also after the subcommand
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from expertloop.engine.device import DeviceError

    try:
        check_outputs(args)
        return int(args.func(args))
    except (DeviceError, ValueError, OSError) as exc:  # user errors (OSError: disk, permissions)
        if args.debug:
            traceback.print_exc()
        print(f"expertloop: error: {_user_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nexpertloop: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line, the traceback on request
        if args.debug:
            traceback.print_exc()
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"expertloop: unexpected error: {type(exc).__name__}: {first}", file=sys.stderr)
        if not args.debug:
            print("expertloop: run with --debug to see the traceback (and please report it)",
                  file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
