"""``expertloop blood ...``: batch prediction and training from Pascal VOC folders.

::

    expertloop blood predict IMAGES... -m model.pt -o out/ [--score-threshold 0.5] [--scheduler ADDR]
    expertloop blood train VOC_FOLDER -o model.pt [--det-epochs 20] [--detector mobilenet_v2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from expertloop.commands._cli import batch_result, emit


def cmd_predict(args: argparse.Namespace) -> int:
    from expertloop.cli import _progress_printer
    from expertloop.commands._batch import exit_code, print_report
    from expertloop.engine.batch import expand_inputs, worker_cache
    from expertloop.engine.batch_tasks import _blood_model
    from expertloop.engine.blood.pipeline import predict_folder
    from expertloop.engine.jobs import run_job

    # a bad model file: one error line before any worker starts (and the
    # in-process runs reuse the loaded model)
    worker_cache(_blood_model, str(args.model), args.device)
    files = expand_inputs(args.inputs)
    thresholds = {"candidate_floor": args.candidate_floor, "score_threshold": args.score_threshold,
                  "type_threshold": args.type_threshold}
    job = predict_folder(str(args.model), files, args.output, thresholds=thresholds, formats=args.format,
                         device=args.device, skip_existing=args.skip_existing, scheduler=args.scheduler,
                         workers=args.workers, processes=not args.in_process,
                         scheduler_timeout=args.scheduler_timeout)
    done = run_job(job, on_progress=_progress_printer())
    print_report(done.report)
    for p in done.written:
        print(f"wrote {p}", file=sys.stderr)
    emit(args, batch_result(done.report, files=[str(p) for p in done.written]))
    return exit_code(done.report)


def cmd_train(args: argparse.Namespace) -> int:
    from skimage.io import imread

    from expertloop.cli import _progress_printer
    from expertloop.engine.blood import (
        BloodSample,
        merge_boxes,
        new_blood_model,
        save_blood_model,
        train_blood_model,
    )
    from expertloop.engine.blood.pipeline import BloodTraining
    from expertloop.engine.config import build, given_values
    from expertloop.engine.jobs import run_job
    from expertloop.io.blood_formats import (
        AnnotationFileError,
        read_voc_folder,
        voc_image_path,
    )

    root = Path(args.folder)
    anns = read_voc_folder(root)
    img_dir = root / "JPEGImages" if (root / "JPEGImages").is_dir() else root
    samples = []
    for a in anns:
        try:
            f = voc_image_path(img_dir, a)
        except AnnotationFileError as exc:
            print(f"  skipped: {exc}", file=sys.stderr)
            continue
        if not f.is_file():
            print(f"  skipped {a.filename}: image not found", file=sys.stderr)
            continue
        if args.merge is not None:  # multi-cell regions from overlapping per-cell boxes
            r = merge_boxes(a.boxes, a.labels, min_overlap=args.merge)
            samples.append(BloodSample(imread(f), r.boxes, ["region"] * len(r), list(r.types), a.filename))
        else:
            samples.append(BloodSample(imread(f), a.boxes, a.labels, [frozenset([x]) for x in a.labels], a.filename))
    if not samples:
        raise FileNotFoundError(f"no annotated images in {root}")
    classes = sorted({lab for a in anns for lab in a.labels})
    cfg = build(BloodTraining, given_values(args, BloodTraining))
    model = new_blood_model(det_classes=["region"] if args.merge is not None else classes, type_names=classes,
                            abnormal_types=args.abnormal or [], det_backbone=cfg.detector,
                            embedder=cfg.embedder, pretrained=args.pretrained, min_size=cfg.min_size,
                            max_size=int(round(cfg.min_size * 4 / 3)))
    print(f"training on {len(samples)} images; classes {classes}", file=sys.stderr)
    run_job(train_blood_model(model, samples, det_epochs=cfg.det_epochs, head_epochs=cfg.head_epochs,
                              time_limit=cfg.time_limit, device=args.device), on_progress=_progress_printer())
    print(file=sys.stderr)
    path = save_blood_model(args.output, model)
    print(f"wrote {path}", file=sys.stderr)
    emit(args, {"model": str(path), "images": len(samples), "classes": classes,
                "abnormal": list(args.abnormal or [])})
    return 0


def add_commands(sub) -> None:
    from expertloop.cli import _pretrained
    from expertloop.commands._batch import INPUTS_HELP, add_batch_arguments
    from expertloop.commands._cli import action, add_device, add_json, group
    from expertloop.engine.blood.model import THRESHOLDS, BloodModel
    from expertloop.engine.blood.pipeline import BloodTraining
    from expertloop.engine.config import add_arguments

    _, bsub = group(sub, "blood", "blood-cell detection and multi-label classification",
                    "Blood smears: detect cells (single or touching) with Faster R-CNN, give each region "
                    "its cell types and an abnormal flag; train from Pascal VOC boxes.",
                    dest="blood_command")

    s = action(bsub, "predict", "detect and classify cells in images or folders", [
        "expertloop blood predict smears/ -m blood.pt -o results/",
        "expertloop blood predict a.jpg b.jpg -m blood.pt -o results/ --format coco --score-threshold 0.7",
        "expertloop blood predict smears/ -m blood.pt -o results/ --skip-existing --json > summary.json",
    ], description="Detect and classify cells. Each image's regions are written to "
                   "OUT/per_image/ as soon as it is done; OUT/regions.csv and "
                   "OUT/regions_coco.json are merged from them at the end. Images that fail are "
                   "listed (exit code 1).")
    s.add_argument("inputs", nargs="+", help=INPUTS_HELP)
    s.add_argument("-m", "--model", required=True, help="model file (.pt with its .json)")
    s.add_argument("--format", nargs="+", choices=["csv", "coco"], default=["csv", "coco"],
                   help="merged summaries to write (default: both)")
    add_arguments(s, BloodModel, THRESHOLDS, when_absent="the value saved in the model")
    add_batch_arguments(s)
    add_json(s)
    s.set_defaults(func=cmd_predict, outputs={"output": "folder"})

    s = action(bsub, "train", "train a model from a Pascal VOC folder (Annotations/, JPEGImages/)", [
        "expertloop blood train BCCD/ -o blood.pt",
        "expertloop blood train BCCD/ -o blood.pt --abnormal WBC Platelets --det-epochs 10 --time-limit 600",
        "expertloop blood train BCCD/ -o regions.pt --merge 0.3",
    ], description="Train the detector and the cell-type heads from a Pascal VOC folder (Annotations/*.xml "
                   "with JPEGImages/, or the XML files next to the images). The box classes become the "
                   "cell types; --abnormal names those counted as abnormal.")
    s.add_argument("folder", help="Pascal VOC folder")
    s.add_argument("-o", "--output", required=True, help="model file to write")
    s.add_argument("--pretrained", default="auto", type=_pretrained,
                   help="ImageNet weights: auto (if available, default), yes or no")
    s.add_argument("--merge", type=float, default=None, metavar="MIN_OVERLAP",
                   help="merge overlapping boxes into multi-cell regions (types = their classes)")
    s.add_argument("--abnormal", nargs="*", help="classes counted as abnormal")
    add_arguments(s, BloodTraining)  # --detector, --embedder, --det-epochs, ... from the engine
    add_device(s)
    add_json(s)
    s.set_defaults(func=cmd_train, outputs={"output": "model"})
