"""Detection metrics: AP at an IoU threshold (VOC) and COCO-style mAP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from expertloop.engine.blood.regions import as_boxes, box_iou

COCO_IOUS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


def match_detections(pred_boxes, scores, gt_boxes, iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy matching by decreasing score: True where a prediction is a true positive.

    Each ground-truth box is matched at most once (VOC/COCO rule); the
    result is in the order of ``pred_boxes``.
    """
    p, g = as_boxes(pred_boxes), as_boxes(gt_boxes)
    s = np.asarray(scores, float)
    tp = np.zeros(len(p), bool)
    if not len(p) or not len(g):
        return tp
    iou = box_iou(p, g)
    used = np.zeros(len(g), bool)
    for i in np.argsort(-s, kind="stable"):
        cand = np.where(used, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            used[j] = True
            tp[i] = True
    return tp


def _pr(scores, tp, n_gt):
    order = np.argsort(-np.asarray(scores, float), kind="stable")
    t = np.asarray(tp, bool)[order]
    ctp, cfp = np.cumsum(t), np.cumsum(~t)
    recall = ctp / max(n_gt, 1)
    precision = ctp / np.maximum(ctp + cfp, 1)
    return precision, recall


def average_precision(scores, tp, n_gt: int, *, method: str = "all") -> float:
    """Area under the precision-recall curve of ranked detections.

    ``method="all"``: all-point interpolation (Pascal VOC 2010+); ``"coco"``:
    101-point interpolation (COCO). Returns NaN when there is no ground truth.
    """
    if n_gt == 0:
        return float("nan")
    if len(tp) == 0:
        return 0.0
    precision, recall = _pr(scores, tp, n_gt)
    # precision envelope: max precision at recall >= r
    env = np.maximum.accumulate(precision[::-1])[::-1]
    if method == "all":
        r = np.concatenate([[0.0], recall])
        return float(np.sum((r[1:] - r[:-1]) * env))
    if method == "coco":
        pts = np.linspace(0, 1, 101)
        idx = np.searchsorted(recall, pts, side="left")
        vals = np.where(idx < len(env), env[np.minimum(idx, len(env) - 1)], 0.0)
        return float(vals.mean())
    raise ValueError("method must be 'all' or 'coco'")


def detection_ap(predictions: Sequence[dict], ground_truth: Sequence[dict], *,
                 classes: Sequence[str] | None = None, iou_threshold: float = 0.5,
                 method: str = "all") -> dict[str, float]:
    """AP per class over a set of images.

    ``predictions[i]`` and ``ground_truth[i]`` describe image ``i`` as dicts
    with ``boxes`` (N, 4), ``labels`` (N class names) and, for predictions,
    ``scores``. Returns ``{class: AP}`` (NaN for a class with no ground truth).
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} prediction sets for {len(ground_truth)} images")
    if classes is None:
        classes = sorted({str(c) for g in ground_truth for c in g["labels"]})
    out = {}
    for c in classes:
        scores, tps, n_gt = [], [], 0
        for pred, gt in zip(predictions, ground_truth):
            gm = np.array([lab == c for lab in gt["labels"]], bool)
            pm = np.array([lab == c for lab in pred["labels"]], bool)
            gb = as_boxes(gt["boxes"])[gm] if gm.any() else np.zeros((0, 4))
            pb = as_boxes(pred["boxes"])[pm] if pm.any() else np.zeros((0, 4))
            ps = np.asarray(pred["scores"], float)[pm] if pm.any() else np.zeros(0)
            n_gt += len(gb)
            tps.append(match_detections(pb, ps, gb, iou_threshold))
            scores.append(ps)
        out[c] = average_precision(np.concatenate(scores), np.concatenate(tps), n_gt, method=method)
    return out


def coco_map(predictions, ground_truth, *, classes=None, iou_thresholds=COCO_IOUS) -> dict:
    """COCO-style mAP: 101-point AP averaged over IoU 0.50:0.05:0.95 and classes.

    Returns ``{"mAP": ..., "mAP50": ..., "mAP75": ..., "per_class": {c: AP}}``
    (the per-class figures averaged over the IoU thresholds).
    """
    per_iou = {t: detection_ap(predictions, ground_truth, classes=classes, iou_threshold=t,
                               method="coco") for t in iou_thresholds}
    cls = list(next(iter(per_iou.values())))
    per_class = {c: float(np.nanmean([per_iou[t][c] for t in iou_thresholds])) if any(
        np.isfinite(per_iou[t][c]) for t in iou_thresholds) else float("nan") for c in cls}

    def mean_at(t):
        v = [x for x in per_iou[t].values() if np.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")

    finite = [v for v in per_class.values() if np.isfinite(v)]
    return {
        "mAP": float(np.mean(finite)) if finite else float("nan"),
        "mAP50": mean_at(0.5) if 0.5 in per_iou else float("nan"),
        "mAP75": mean_at(0.75) if 0.75 in per_iou else float("nan"),
        "per_class": per_class,
    }
