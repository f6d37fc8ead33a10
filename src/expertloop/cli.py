"""The ``expertloop`` command: batch and headless use.

::

    expertloop --version
    expertloop info                     # versions and the compute device
    expertloop gui --sample mri         # napari with the suite and a sample
    expertloop features IMG... -o DIR   # CNN feature PCA images, in batch

Workflows add their own subcommands from ``expertloop/commands/<workflow>.py``
(each module defines ``add_commands(subparsers)``). Library code never calls ``sys.exit``;
only :func:`main` turns errors into exit codes.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from expertloop import __version__


def _progress_printer(stream=sys.stderr):
    def show(record) -> None:
        frac = record.fraction
        pct = f"{100 * frac:5.1f}%" if frac is not None else "  ... "
        stream.write(f"\r{pct} {record.message[:70]:<70}")
        stream.flush()

    return show


# ------------------------------------------------------------- commands
def cmd_info(args: argparse.Namespace) -> int:
    import importlib.metadata as md

    from expertloop.engine.device import device_info

    print(f"napari-expertloop {__version__}")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for pkg in ("napari", "npe2", "magicgui", "torch", "torchvision", "numpy",
                "scikit-image", "scikit-learn", "tifffile", "nibabel"):
        try:
            print(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg} (not installed)")
    info = device_info(args.device)
    print(f"device: {info}")
    return 0


def build_viewer(paths: Sequence[str] = (), sample: str | None = None,
                 widgets: Sequence[str] | None = None, show: bool = True):
    """A napari viewer with the given files, sample and expertloop widgets."""
    import napari

    viewer = napari.Viewer(show=show)
    for path in paths:
        # NIfTI/TIFF through this plugin (voxel size, orientation); anything
        # else (PNG, JPEG, ...) through napari's own readers, as File > Open.
        name = str(path).lower()
        ours = name.endswith((".nii", ".nii.gz", ".tif", ".tiff"))
        viewer.open(path, plugin="napari-expertloop" if ours else None)
    if sample:
        viewer.open_sample("napari-expertloop", sample)
    for widget in widgets or ["Deep features"]:
        viewer.window.add_plugin_dock_widget("napari-expertloop", widget)
    return viewer


def cmd_gui(args: argparse.Namespace) -> int:
    import napari

    build_viewer(args.paths, args.sample, args.widget)
    napari.run()
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    import numpy as np

    from expertloop.engine.features import feature_pca
    from expertloop.engine.jobs import run_job
    from expertloop.io import ImageReadError, read_image, write_tiff

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for i, path in enumerate(args.images, 1):
        print(f"[{i}/{len(args.images)}] {path}", file=sys.stderr)
        try:
            item = read_image(path)[0]
        except ImageReadError as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            failures += 1
            continue
        job = feature_pca(
            item.data, args.backbone, pretrained=args.pretrained, tile=args.tile,
            rgb=bool(item.meta.get("rgb")), device=args.device, seed=args.seed,
        )
        rgb, stride = run_job(job, on_progress=_progress_printer())
        print(file=sys.stderr)
        target = out_dir / f"{item.meta['name']}_{args.backbone}_features.tif"
        scale = [float(s) for s in item.meta.get("scale", [1.0] * (rgb.ndim - 1))]
        scale[-2:] = [s * stride for s in scale[-2:]]
        write_tiff(target, (rgb * 255).astype(np.uint8), {"rgb": True, "scale": scale})
        print(f"  wrote {target}", file=sys.stderr)
    return 1 if failures else 0


# --------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="expertloop",
        description="napari-expertloop: learn from scarce expert labels in bioimages.",
    )
    p.add_argument("--version", action="version", version=f"napari-expertloop {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="print versions and the compute device")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: auto)")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("gui", help="open napari with the expertloop widgets")
    s.add_argument("paths", nargs="*", help="images to open")
    s.add_argument("--sample", choices=["mri", "nuclei", "spots", "membranes", "flim", "blood"],
                   help="open a sample (one per workflow: spots, membranes, flim, blood; docs/data.md)")
    s.add_argument("--widget", action="append", help="widget to dock (repeatable)")
    s.set_defaults(func=cmd_gui)

    from expertloop.engine.features import BACKBONES

    s = sub.add_parser("features", help="CNN feature PCA images for a batch of files")
    s.add_argument("images", nargs="+", help="NIfTI, TIFF, PNG or JPEG files")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--backbone", default="mobilenet_v2", choices=sorted(BACKBONES))
    s.add_argument("--pretrained", default="auto", type=_pretrained,
                   help="auto (default), yes or no")
    s.add_argument("--tile", type=int, default=512)
    s.add_argument("--device", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_features)

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from expertloop.engine.device import DeviceError

    try:
        return int(args.func(args))
    except (DeviceError, ValueError, FileNotFoundError) as exc:
        print(f"expertloop: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nexpertloop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
