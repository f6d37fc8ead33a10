"""``expertloop membranes loop`` (the membrane active-learning loop without a
GUI) and ``expertloop membranes predict MODEL IMAGES -o OUT`` (apply a saved
membrane network to images and stacks, as a batch on dask.distributed).

A *simulated expert* stands in for the person: each round it copies the
ground truth inside the proposed region (documented as such; for
benchmarking and for choosing parameters before an expert's time is spent).
"""

from __future__ import annotations

import argparse
import sys

from expertloop.commands._cli import (
    action,
    add_json,
    add_package_export,
    add_package_import,
    batch_result,
    emit,
    group,
    package_args,
)
from expertloop.engine.config import add_arguments, build, given_values
from expertloop.engine.membranes.loop import MembraneConfig


def add_commands(sub) -> None:
    _, ms = group(sub, "membranes", "membrane transfer learning with active-learning regions",
                  "Membranes in electron microscopy: transfer a membrane classifier from a labelled "
                  "source domain to a new target domain, with expert-guided active-learning regions.",
                  dest="membranes_command")
    p = action(
        ms, "loop",
        "membrane transfer + active learning with a simulated expert (copies ground truth)",
        [
            "expertloop membranes loop --project proj --source-images isbi_*.png --source-truth isbi_*_label.png \\",
            "    --source-membrane-value 0 --target-images vnc_*.png --target-truth vnc_*_mem.png \\",
            "    --target-membrane-value 255 --rounds 5",
            "expertloop membranes loop --project proj ... --rounds 8      # continue the same project to round 8",
            "expertloop membranes loop --project ctrl --source-model src.pt ... --strategy random --json",
        ],
        description=(
            "Train a membrane classifier on a source domain (or load one), transfer its first "
            "layers to the target domain, then run rounds: propose a region, let a simulated "
            "expert copy the ground truth inside it, retrain, score on validation images. "
            "The project folder keeps everything: run again with more --rounds to continue."
        ),
    )
    p.add_argument("--project", required=True, help="project folder (created, or resumed if it exists)")
    p.add_argument("--source-images", nargs="+", default=[], help="source-domain images")
    p.add_argument("--source-truth", nargs="+", default=[], help="their dense membrane masks")
    p.add_argument("--source-membrane-value", type=float, default=None,
                   help="value marking membrane in the source masks (ISBI 2012: 0)")
    p.add_argument("--source-model", help="a saved source model (.pt) instead of training one")
    p.add_argument("--save-source", help="also save the trained source model here")
    p.add_argument("--target-images", nargs="+", required=True, help="target-domain images (the pool)")
    p.add_argument("--target-truth", nargs="+", required=True,
                   help="their dense masks: the simulated expert copies them")
    p.add_argument("--target-membrane-value", type=float, required=True,
                   help="value marking membrane in target and validation masks (VNC stack: 255)")
    p.add_argument("--validation-images", nargs="*", default=[],
                   help="target-domain images held out to score each round (F-score)")
    p.add_argument("--validation-truth", nargs="*", default=[],
                   help="their dense masks (membrane value: --target-membrane-value)")
    p.add_argument("--initial-size", type=int, default=128,
                   help="the few initial target labels: truth of a centred square this big "
                        "in the first target image (default 128)")
    p.add_argument("--rounds", type=int, default=5, help="total active-learning rounds (default 5)")
    p.add_argument("--strategy", choices=["objective", "random", "none"], default=None,
                   help="region choice: the paper's objective, random regions of the same size "
                        "(control), or none (retrain without new labels); absent: the project's "
                        "(new project: objective)")
    # every parameter of the project, from MembraneConfig (defaults, ranges, help live there)
    add_arguments(p, MembraneConfig, when_absent="the project's value when resuming")
    add_json(p)
    p.set_defaults(func=cmd_membranes_loop, outputs={"project": "folder", "save_source": "model"})

    from expertloop.commands._batch import INPUTS_HELP, add_batch_arguments

    p = action(
        ms, "predict", "P(membrane) maps of images and stacks with a saved membrane network", [
            "expertloop membranes predict proj/models/round_005.pt new/*.png -o maps/",
            "expertloop membranes predict net.pt stack.tif -o maps/ --tile 512 --workers 0 --json",
        ], description="Write OUT/<image>_membranes.tif (float32 P(membrane), same shape and pixel "
                       "size as the image; a stack is read and predicted one plane at a time).")
    p.add_argument("model", help="a membrane network saved by the widget or 'membranes loop' (.pt)")
    p.add_argument("images", nargs="+", help=INPUTS_HELP)
    p.add_argument("--tile", type=int, default=1024,
                   help="tile size of the dense evaluation; each tile also computes a window-1 pixel halo, "
                        "((tile + window - 1) / tile)^2 of the work: 1.13 for window 64 at 1024, 1.55 at 256 "
                        "(default 1024)")
    add_batch_arguments(p)
    add_json(p)
    p.set_defaults(func=cmd_membranes_predict, outputs={"output": "folder"})

    p = action(ms, "export", "write a membrane network as a bioimage.io model package (.zip)", [
        "expertloop membranes export proj/models/round_005.pt -o membranes.zip --test-image vnc_00.png",
        'expertloop membranes export net.pt -o m.zip --test-image a.png --name "VNC membranes" --author "A. Lab"',
    ], description="Write a bioimage.io model package (format 0.5) for a membrane network: TorchScript and "
                   "state-dict weights, zero_mean_unit_variance preprocessing, the test image and the "
                   "plugin's output for it, a cover, a README and the paper. Needs the bioimageio extra "
                   "(pip install 'napari-expertloop[bioimageio]'); docs/membranes.md.")
    add_package_export(p, "membrane network", "expertloop membranes")
    p.set_defaults(func=cmd_membranes_export)

    p = action(ms, "import", "read a bioimage.io membrane package back as a membrane network (.pt)", [
        "expertloop membranes import membranes.zip -o imported_net",
        "expertloop membranes import unzipped_package/rdf.yaml -o imported_net --json",
    ], description="Check a bioimage.io package (validated with bioimageio.spec) written by "
                   "'membranes export' and save its network as MODEL.pt + MODEL.json, for the widget "
                   "('or source model'), 'membranes predict' and 'membranes loop --source-model'.")
    add_package_import(p)
    p.set_defaults(func=cmd_membranes_import)


def cmd_membranes_export(args: argparse.Namespace) -> int:
    from expertloop.engine.membranes.bioimageio import export_membrane_model
    from expertloop.engine.membranes.net import load_net

    model, _ = load_net(args.model)
    image = _read_all([args.test_image], "test image")[0]
    path = export_membrane_model(model, args.output, image, **package_args(args))
    emit(args, {"package": str(path), "window": model.config.window}, [f"wrote {path}"])
    return 0


def cmd_membranes_import(args: argparse.Namespace) -> int:
    from expertloop.engine.membranes.bioimageio import import_membrane_model
    from expertloop.engine.membranes.net import save_net

    net = import_membrane_model(args.package)
    path = save_net(args.output, net, kind="imported", extra={"bioimageio_package": str(args.package)})
    emit(args, {"model": str(path), "window": net.config.window}, [f"wrote {path}"])
    return 0


def cmd_membranes_predict(args: argparse.Namespace) -> int:
    from expertloop.commands._batch import exit_code, run_batch_command
    from expertloop.engine.batch import expand_inputs, worker_cache
    from expertloop.engine.batch_tasks import OUTPUTS, _membrane_net, membranes_predict

    if args.tile < 1:
        raise ValueError("--tile must be at least 1")
    worker_cache(_membrane_net, str(args.model), args.device)  # a bad model: one error line first
    files = expand_inputs(args.images)
    params = {"model": str(args.model), "device": args.device, "tile": args.tile}
    report = run_batch_command(args, membranes_predict, files, OUTPUTS["membranes"], params)
    emit(args, batch_result(report))
    return exit_code(report)


def _read_all(paths, what):
    import numpy as np

    from expertloop.io import read_image

    out = []
    for path in paths:
        layers = read_image(path)
        data = np.asarray(layers[0].data)
        if data.ndim == 3 and data.shape[-1] in (3, 4):
            raise ValueError(f"{what} {path} is RGB: membrane images must be grayscale")
        out.extend(list(data) if data.ndim == 3 else [data])
    return out


def cmd_membranes_loop(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from expertloop.cli import _progress_printer
    from expertloop.engine.jobs import run_job
    from expertloop.engine.membranes.loop import (
        PROJECT_FILE,
        MembraneProject,
        run_simulated_rounds,
        simulated_expert,
    )
    from expertloop.engine.membranes.net import load_net, membrane_labels, save_net

    progress = _progress_printer()
    folder = Path(args.project)
    targets = _read_all(args.target_images, "target image")
    truths = [membrane_labels(t, args.target_membrane_value) for t in _read_all(args.target_truth, "target truth")]
    if len(truths) != len(targets):
        raise ValueError(f"{len(targets)} target images but {len(truths)} truth images")
    values = given_values(args, MembraneConfig)
    if args.strategy in ("objective", "random"):
        values["strategy"] = args.strategy
    if (folder / PROJECT_FILE).exists():
        project = MembraneProject.open(folder)
        print(f"resuming {folder} at round {project.round}", file=sys.stderr)
        # a changed parameter is applied (saved, journalled), a fixed one refused: never ignored
        for name, (old, new) in project.update_config(values, source="command line").items():
            print(f"  {name}: {old} -> {new} (from the command line, saved in the project)", file=sys.stderr)
    else:
        vimgs = _read_all(args.validation_images, "validation image")
        vtru = [membrane_labels(t, args.target_membrane_value)
                for t in _read_all(args.validation_truth, "validation truth")]
        config = build(MembraneConfig, values)
        h, w = targets[0].shape
        s = min(args.initial_size, h, w)
        if s < 1:
            raise ValueError("--initial-size must be at least 1")
        mask = np.zeros((h, w), bool)
        mask[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s] = True
        initial = [np.zeros(t.shape, np.uint8) for t in targets]
        initial[0] = simulated_expert(initial[0], truths[0], mask)
        project = MembraneProject.create(folder, targets, initial, validation_images=vimgs,
                                         validation_truths=vtru, config=config)
    if not project.has_source:
        if args.source_model:
            model, _ = load_net(args.source_model)  # a ModelFileError is a ValueError: exit code 2
            project.set_source_model(model)
        else:
            if not args.source_images or args.source_membrane_value is None:
                raise ValueError("give --source-images, --source-truth and --source-membrane-value, "
                                 "or --source-model")
            simgs = _read_all(args.source_images, "source image")
            slabs = [membrane_labels(t, args.source_membrane_value)
                     for t in _read_all(args.source_truth, "source truth")]
            if len(simgs) != len(slabs):
                raise ValueError(f"{len(simgs)} source images but {len(slabs)} truth images")
            model = run_job(project.train_source(simgs, slabs), on_progress=progress)
            if args.save_source:
                save_net(args.save_source, model, kind="source")
    if project.round < 0:
        run_job(project.transfer(), on_progress=progress)
    strategy = "none" if args.strategy == "none" else None  # None: the project's strategy
    run_job(run_simulated_rounds(project, truths, max(0, args.rounds - project.round), strategy=strategy),
            on_progress=progress)
    sys.stderr.write("\n")
    emit(args, project.scores, ["round  labelled_px  F-score  precision  recall"] + [
        f"{r['round']:5d}  {r['labelled_pixels']:11d}  {r.get('f1', float('nan')):7.3f}  "
        f"{r.get('precision', float('nan')):9.3f}  {r.get('recall', float('nan')):6.3f}" for r in project.scores])
    return 0
