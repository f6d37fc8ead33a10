"""``expertloop spots ...``: spot phantoms, L-CNN training and spot detection.

* ``spots phantom VOLUME -o DIR``: plant dark spots into a real 3D volume and
  let a SIMULATED expert click them (a documented simulation): writes
  ``<name>_phantom.nii.gz``, ``<name>_phantom.clicks.csv`` and the ground truth
  ``<name>_phantom.truth.csv``.
* ``spots train IMAGE TABLE [IMAGE TABLE ...] -o MODEL``: train the L-CNN (or
  a control, ``--method``) from images and their click tables (CSV written by
  the Spot annotator's *Export CSV*, or a ``.spots.jsonl`` click log).
* ``spots detect MODEL IMAGE... -o DIR``: detect 3D spots; writes one CSV per
  image (``z, y, x, probability, n_slices, n_patches``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from expertloop.commands._cli import batch_result, emit


def _progress():
    from expertloop.cli import _progress_printer

    return _progress_printer()


def _read_table(path: str):
    from expertloop.io.spots_clicks import import_csv, read_clicks

    return read_clicks(path) if str(path).endswith(".jsonl") else import_csv(path)


def cmd_phantom(args: argparse.Namespace) -> int:
    import numpy as np

    from expertloop.engine.spots.phantom import (
        make_phantom,
        simulate_expert,
        truth_points,
    )
    from expertloop.io import ImageReadError, read_image, write_nifti
    from expertloop.io.spots_clicks import export_csv

    try:
        item = read_image(args.volume)[0]
    except (ImageReadError, OSError) as exc:
        print(f"expertloop spots: error: {exc}", file=sys.stderr)
        return 2
    try:
        ph = make_phantom(item.data, args.spots, seed=args.seed, noise=args.noise)
    except ValueError as exc:
        print(f"expertloop spots: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{item.meta.get('name', 'volume')}_phantom"
    write_nifti(out / f"{name}.nii.gz", ph.volume, item.meta)
    clicks = simulate_expert(ph, seed=args.seed)
    export_csv(clicks, out / f"{name}.clicks.csv")
    truth = truth_points(ph)
    np.savetxt(out / f"{name}.truth.csv", truth, delimiter=",", header="z,y,x", comments="", fmt="%d")
    print(f"{ph.n_spots} spots, {len(clicks['z'])} simulated clicks -> {out / name}.*", file=sys.stderr)
    emit(args, {"spots": ph.n_spots, "clicks": len(clicks["z"]),
                "files": [str(out / f"{name}{ext}") for ext in (".nii.gz", ".clicks.csv", ".truth.csv")]})
    return 0


def _config(args):
    from expertloop.engine.config import build, given_values
    from expertloop.engine.spots.lcnn import SpotConfig

    return build(SpotConfig, given_values(args, SpotConfig))


def cmd_train(args: argparse.Namespace) -> int:
    from expertloop.engine.jobs import run_job
    from expertloop.engine.spots.lcnn import prepare_scan, train_spot_detector
    from expertloop.io import ImageReadError, read_image

    pairs = args.pairs
    if len(pairs) % 2:
        print("expertloop spots: error: give IMAGE TABLE pairs (an image, then its click table)", file=sys.stderr)
        return 2
    cfg = _config(args)
    sets = []
    try:
        for img_path, table_path in zip(pairs[::2], pairs[1::2]):
            item = read_image(img_path)[0]
            table = _read_table(table_path)
            sets.append(run_job(prepare_scan(item.data, table, cfg, name=Path(img_path).name),
                                on_progress=_progress()))
            print(f"\n{img_path}: {sets[-1].n_positive} spot patches of {len(sets[-1].y)}", file=sys.stderr)
        det = run_job(train_spot_detector(sets, cfg, device=args.device),
                      on_progress=_progress())
    except (ImageReadError, OSError, ValueError) as exc:
        print(f"\nexpertloop spots: error: {exc}", file=sys.stderr)
        return 2
    path = det.save(args.output)
    print(f"\n{det.info}\nwrote {path}", file=sys.stderr)
    emit(args, {"model": str(path), "info": det.info,
                "scans": [{"name": t.name, "spot_patches": int(t.n_positive), "patches": len(t.y)} for t in sets]})
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from expertloop.commands._batch import exit_code, run_batch_command
    from expertloop.engine.batch import expand_inputs, worker_cache
    from expertloop.engine.batch_tasks import OUTPUTS, _spot_detector, spots_detect
    from expertloop.engine.persistence import ModelFileError

    try:
        worker_cache(_spot_detector, str(args.model), args.device)  # a bad model: one error line first
    except (ModelFileError, OSError) as exc:
        print(f"expertloop spots: error: {exc}", file=sys.stderr)
        return 2
    files = expand_inputs(args.images)
    params = {"model": str(args.model), "device": args.device, "threshold": args.threshold,
              "join_radius": args.join_radius}
    report = run_batch_command(args, spots_detect, files, OUTPUTS["spots"], params)
    emit(args, batch_result(report))
    return exit_code(report)


def add_commands(sub) -> None:
    from expertloop.cli import positive_int
    from expertloop.commands._batch import INPUTS_HELP, add_batch_arguments
    from expertloop.commands._cli import action, add_device, add_json, add_seed, group
    from expertloop.engine.config import add_arguments
    from expertloop.engine.spots.lcnn import SpotConfig, SpotSelection

    _, ss = group(sub, "spots", "timed spot annotation and the L-CNN spot detector",
                  "Spots in 3D MRI: simulate spot data, train the L-CNN spot detector from timed "
                  "clicks (the Spot annotator's tables or click logs), detect spots in new scans.",
                  dest="spots_command")

    s = action(ss, "phantom", "plant spots into a real volume + a SIMULATED expert's clicks", [
        "expertloop spots phantom colin27_t1.nii.gz -o phantom/",
        "expertloop spots phantom scan.nii.gz -o phantom/ --spots 80 --noise 0.05 --seed 1",
    ], description="Plant dark spots into a copy of a real 3D volume and let a SIMULATED expert click "
                   "them (a documented simulation, for trying the detector without an expert). Writes "
                   "NAME_phantom.nii.gz, NAME_phantom.clicks.csv (timed clicks) and NAME_phantom.truth.csv "
                   "(every planted spot).")
    s.add_argument("volume", help="a 3D NIfTI or TIFF volume")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--spots", type=positive_int, default=150, help="number of spots to plant (>= 1)")
    s.add_argument("--noise", type=float, default=0.02,
                   help="Gaussian noise added, in units of the scaled intensity (default 0.02)")
    add_seed(s)
    add_json(s)
    s.set_defaults(func=cmd_phantom, outputs={"output": "folder"})

    s = action(ss, "train", "train the L-CNN spot detector from timed clicks", [
        "expertloop spots train scan1.nii.gz scan1.clicks.csv -o spots_model",
        "expertloop spots train a.nii.gz a.spots.jsonl b.nii.gz b.clicks.csv -o m",
        "expertloop spots train scan.nii.gz scan.clicks.csv -o cnn_control --method cnn",
    ], description="Train the L-CNN spot detector from images and their click tables (CSV from the "
                   "Spot annotator's Export CSV, or a .spots.jsonl click log). The click latencies "
                   "pre-train a source network whose first layers are transferred. Writes MODEL.pt and "
                   "MODEL.json.")
    s.add_argument("pairs", nargs="+", metavar="IMAGE TABLE", help="image, click table (CSV or .jsonl) pairs")
    s.add_argument("-o", "--output", required=True, help="model path (writes .pt + .json)")
    add_arguments(s, SpotConfig)  # defaults, ranges and help from the engine's SpotConfig
    add_device(s)
    add_json(s)
    s.set_defaults(func=cmd_train, outputs={"output": "model"})

    s = action(ss, "detect", "detect 3D spots with a trained spot model", [
        "expertloop spots detect spots_model.pt scan2.nii.gz -o detections/",
        "expertloop spots detect spots_model.pt scans/ -o out/ --skip-existing --json",
    ], description="Write OUT/<image>_spots.csv (z, y, x, probability, n_slices, "
                   "n_patches) per image.")
    s.add_argument("model", help="model path (.pt with its .json)")
    s.add_argument("images", nargs="+", help=INPUTS_HELP)
    add_arguments(s, SpotSelection)
    add_batch_arguments(s, output_help="output folder (one CSV per image)")
    add_json(s)
    s.set_defaults(func=cmd_detect, outputs={"output": "folder"})
