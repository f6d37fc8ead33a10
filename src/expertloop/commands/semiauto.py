"""``expertloop semiauto``: run the semi-automatic labelling loop from the command line.

::

    expertloop semiauto simulate --digits -o labels.csv
    expertloop semiauto simulate --voc /data/bccd --strategy margin -o labels.csv
    expertloop semiauto simulate --folders crops_by_class/ --classifier cnn-mobilenet_v2 -o labels.csv
    expertloop semiauto export PROJECT_DIR --folder IMAGES -o labels.csv
    expertloop semiauto push-to-store PROJECT_DIR --store STORE --collection "round 1" --as ada --assign-to bob
    expertloop semiauto pull-from-store PROJECT_DIR --store STORE --collection "round 1" --as ada

``simulate`` runs the whole loop with a **simulated annotator** that answers
each hard case from the ground truth (for benchmarking a setting before
experts spend time on it), prints one line per iteration and writes the
labels as CSV (``--history`` also writes the per-iteration figures as JSON).
``export`` writes the labels of a project made in the napari widget.
``push-to-store`` puts the open queue's hard cases into a collection of an
annotation project (``expertloop store``) for review in the "Annotation
project" dock; ``pull-from-store`` records the reviewed labels as the queue's
decisions (then "Apply review" in the widget, or resume the project).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from expertloop.commands._cli import emit


def _dataset(args):
    from expertloop.engine.semiauto.datasets import (
        class_folders_dataset,
        digits_dataset,
        voc_crops_dataset,
    )

    if args.digits:
        return digits_dataset()
    if args.voc:
        return voc_crops_dataset(args.voc, size=args.size)
    return class_folders_dataset(args.folders, size=args.size)


def cmd_simulate(args: argparse.Namespace) -> int:
    from expertloop.cli import _progress_printer
    from expertloop.engine.config import build, given_values
    from expertloop.engine.jobs import run_job
    from expertloop.engine.semiauto import (
        SemiAutoConfig,
        SemiAutoLoop,
        make_classifier,
        simulate,
    )
    from expertloop.engine.semiauto.datasets import simulation_split
    from expertloop.io.semiauto_storage import FolderQueueStorage, MemoryQueueStorage

    col, truth, names = _dataset(args)
    config = build(SemiAutoConfig, given_values(args, SemiAutoConfig)).check()
    labels, val = simulation_split(truth, args.initial, args.val, seed=config.seed)
    storage = FolderQueueStorage(args.project) if args.project else MemoryQueueStorage()
    if args.project and storage.load_state():
        # a simulation starts from scratch: never silently replace a project and its decisions
        raise ValueError(f"{args.project} already holds a semi-automatic labelling project: "
                         "simulate into a new --project folder (or open this one in the widget)")
    kw = {"device": args.device} if args.device else {}
    loop = SemiAutoLoop(col, names, labels, make_classifier(args.classifier, **kw), config=config,
                        val_indices=val, val_labels=truth[val], storage=storage)
    print(f"{len(col)} images, {len(names)} classes; D0 {len(loop.train_idx)}, V {len(val)}; "
          f"{args.classifier}, strategy {config.strategy}, t={config.t}, batch {config.batch_size}",
          file=sys.stderr)
    hist = run_job(simulate(loop, truth), on_progress=_progress_printer())
    print(file=sys.stderr)
    lines = ["iter  labelled  val_acc  ECE(before->after)  batch  accepted  reviewed  corrected  manual%"]
    for h in hist:
        if h.get("final"):
            lines.append(f"final {h['n_labelled']:8d}  {h['val_acc']:.4f}   manual labels in total: "
                         f"{h['manual_total']}, wrong labels in the set: {h['label_errors']}")
        else:
            ece = f"{h.get('ece_before', float('nan')):.3f}->{h.get('ece_after', float('nan')):.3f}"
            lines.append(f"{h['iteration']:4d}  {h['n_labelled']:8d}  {h['val_acc']:.4f}   {ece:>17}  "
                         f"{h['batch']:5d}  {h['accepted']:8d}  {h['reviewed']:8d}  {h['corrected']:9d}  "
                         f"{100 * h['manual_fraction']:6.1f}")
    emit(args, hist, lines)
    if args.label_rest:
        run_job(loop.predict_rest())
    out = loop.export_csv(args.output)
    print(f"labels written to {out}", file=sys.stderr)
    if args.history:
        with open(args.history, "w", encoding="utf-8") as fh:
            json.dump(hist, fh, indent=1, default=float)
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    from expertloop.engine.semiauto.classifiers import make_classifier
    from expertloop.engine.semiauto.data import load_images
    from expertloop.engine.semiauto.loop import SemiAutoLoop
    from expertloop.io.semiauto_storage import FolderQueueStorage

    col = load_images(args.folder)[0]
    loop = SemiAutoLoop.restore(FolderQueueStorage(args.project), col, make_classifier("logreg-hand"))
    out = loop.export_csv(args.output)
    n = int((loop.labels >= 0).sum())
    print(f"{n}/{len(col)} labelled; written to {out}", file=sys.stderr)
    emit(args, {"labelled": n, "images": len(col), "csv": str(out)})
    return 0


def _bridge(fn):
    """Open the store, run ``fn(store, args)``; store and input errors become exit code 2."""

    def wrapped(args: argparse.Namespace) -> int:
        from expertloop.store import Store, StoreError

        try:
            with Store.open(args.store) as store:
                return fn(store, args)
        except (StoreError, ValueError, FileNotFoundError) as exc:
            print(f"expertloop semiauto: error: {exc}", file=sys.stderr)
            return 2

    return wrapped


@_bridge
def cmd_push_to_store(store, args) -> int:
    from expertloop.engine.semiauto.store_bridge import push_queue_to_store

    assign = [a.strip() for a in (args.assign_to or "").split(",") if a.strip()]
    res = push_queue_to_store(args.project, store, args.collection, actor=args.actor, assign_to=assign,
                              stack_name=args.stack_name, include_decided=args.include_decided)
    emit(args, {**res, "assigned_to": assign}, [
        f"queue {res['queue']}: {res['pushed']} hard case(s) pushed to {res['collection']!r}"
        f" ({res['skipped_decided']} already decided locally)"
        + (f"; assigned to {', '.join(assign)}" if assign else "")])
    return 0


@_bridge
def cmd_pull_from_store(store, args) -> int:
    from expertloop.engine.semiauto.store_bridge import pull_decisions_from_store

    rep = pull_decisions_from_store(args.project, store, args.collection, actor=args.actor,
                                    resolve=args.resolve)
    emit(args, dataclasses.asdict(rep), [rep.summary()])
    for r in rep.rejected:
        print(f"refused: {r['name']} labelled {r['label']!r} by {', '.join(r['annotators'])}: not a class",
              file=sys.stderr)
    for c in rep.conflicts:
        print(f"conflict: {c['name']}: local {c['local']!r} kept, store says {c['store']!r}", file=sys.stderr)
    return 1 if rep.rejected else 0


def add_commands(sub) -> None:
    from expertloop.commands._cli import action, add_device, add_json, group
    from expertloop.engine.config import add_arguments
    from expertloop.engine.semiauto.classifiers import CLASSIFIERS, DEFAULT_CLASSIFIER
    from expertloop.engine.semiauto.loop import SemiAutoConfig

    _, ss = group(sub, "semiauto", "semi-automatic labelling (self-training + review queue)",
                  "Semi-automatic labelling: a classifier trained on a few labels labels the confident "
                  "images itself and queues the hard cases for a person to review.",
                  dest="semiauto_command")

    s = action(ss, "simulate", "run the whole loop with a simulated annotator (ground truth)", [
        "expertloop semiauto simulate --digits -o labels.csv",
        "expertloop semiauto simulate --voc /data/bccd --strategy margin --budget 20 -o labels.csv",
        "expertloop semiauto simulate --folders crops_by_class/ --classifier cnn-mobilenet_v2 -o labels.csv --json",
    ], description="Run the whole loop with a SIMULATED annotator that answers each hard case from the "
                   "ground truth, to try a setting before experts spend time on it. Prints one line per "
                   "iteration and writes the labels as CSV.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--digits", action="store_true", help="scikit-learn's bundled handwritten digits")
    src.add_argument("--voc", metavar="DIR", help="crops around Pascal VOC boxes (Annotations/, JPEGImages/)")
    src.add_argument("--folders", metavar="DIR", help="folder-per-class layout used as ground truth")
    s.add_argument("--size", type=int, default=32, help="crop / image size in pixels (default 32)")
    s.add_argument("--classifier", default=DEFAULT_CLASSIFIER, choices=sorted(CLASSIFIERS),
                   help=f"classifier retrained each iteration (default {DEFAULT_CLASSIFIER})")
    add_arguments(s, SemiAutoConfig)  # -t/--threshold, --batch-size, --strategy, --rate, --budget, --seed
    s.add_argument("--initial", type=int, default=10, help="initial labels per class (D0)")
    s.add_argument("--val", type=int, default=30, help="validation images per class (V)")
    s.add_argument("--project", default=None, help="project folder for the queue and decisions")
    s.add_argument("--label-rest", action="store_true", help="label what is left with the final model")
    s.add_argument("--history", default=None, help="write the per-iteration figures as JSON here")
    add_device(s)
    s.add_argument("-o", "--output", required=True, help="labels CSV to write")
    add_json(s)
    s.set_defaults(func=cmd_simulate, outputs={"output": "file", "project": "folder", "history": "file"})

    s = action(ss, "export", "write the labels of a project as CSV", [
        "expertloop semiauto export images/semiauto_project --folder images -o labels.csv",
    ], description="Write the labels of a project made in the napari widget (or by 'simulate "
                   "--project') as CSV: name, label, class_index, source, confidence.")
    s.add_argument("project", help="project folder (state.json, queue.json, decisions.jsonl)")
    s.add_argument("--folder", required=True, help="the project's image folder")
    s.add_argument("-o", "--output", required=True, help="labels CSV to write")
    add_json(s)
    s.set_defaults(func=cmd_export, outputs={"output": "file"})

    for name, fn, hlp, examples in (
            ("push-to-store", cmd_push_to_store,
             "push the open queue's hard cases into an annotation project collection",
             ['expertloop semiauto push-to-store images/semiauto_project --store team.db '
              '--collection "round 1" --as ada --assign-to bob,cy']),
            ("pull-from-store", cmd_pull_from_store,
             "record the labels reviewed in an annotation project as queue decisions",
             ['expertloop semiauto pull-from-store images/semiauto_project --store team.db '
              '--collection "round 1" --as ada --resolve latest'])):
        s = action(ss, name, hlp, examples)
        s.add_argument("project", help="semi-automatic labelling project folder (with an open queue)")
        s.add_argument("--store", required=True, help="annotation project folder, .db file or SQLAlchemy URL")
        s.add_argument("--collection", required=True, help="collection of review tasks")
        s.add_argument("--as", "--actor", dest="actor", required=True,
                       help="store user acting (an admin to push; an admin or assigned annotator to pull)")
        if name == "push-to-store":
            s.add_argument("--assign-to", default="", help="annotators to assign, comma-separated")
            s.add_argument("--stack-name", default="semiauto",
                           help="name in stack://NAME#ROW URIs of images without a file (default semiauto)")
            s.add_argument("--include-decided", action="store_true",
                           help="also push items already decided in the local queue")
        else:
            s.add_argument("--resolve", choices=["majority", "latest"], default="majority",
                           help="several annotators per image: majority label or latest (default majority)")
        add_json(s)
        s.set_defaults(func=fn)
