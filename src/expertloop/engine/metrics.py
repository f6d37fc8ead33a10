"""Evaluation metrics shared by the workflows (numpy only)."""

from __future__ import annotations

import numpy as np


def _pair(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred), np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth {t.shape}")
    return p, t


def binary_scores(pred, truth) -> dict[str, float]:
    """Precision, recall and F1 of a binary prediction (non-zero = positive).

    With no positives anywhere (prediction and truth empty) all three are 1.
    """
    p, t = _pair(pred, truth)
    p, t = p.astype(bool), t.astype(bool)
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def dice(pred, truth) -> float:
    """Dice overlap of two binary masks (1.0 when both are empty)."""
    p, t = _pair(pred, truth)
    p, t = p.astype(bool), t.astype(bool)
    denom = np.count_nonzero(p) + np.count_nonzero(t)
    return 1.0 if denom == 0 else 2.0 * np.count_nonzero(p & t) / denom


def accuracy(pred, truth) -> float:
    """Fraction of equal entries."""
    p, t = _pair(pred, truth)
    if p.size == 0:
        raise ValueError("accuracy of nothing is undefined")
    return float(np.mean(p == t))


def confusion_matrix(truth, pred, n_classes: int) -> np.ndarray:
    """``(K, K)`` counts; rows are the true class, columns the predicted one."""
    p, t = _pair(pred, truth)
    t = t.astype(np.int64).ravel()
    p = p.astype(np.int64).ravel()
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must lie in 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def expected_calibration_error(probs, y, n_bins: int = 15) -> float:
    """ECE: mean |accuracy - confidence| over equal-width confidence bins, weighted by size."""
    pr = np.asarray(probs, np.float64)
    y = np.asarray(y, np.int64)
    if pr.ndim != 2 or len(pr) != len(y):
        raise ValueError(f"probs must be (N, K) and y (N,), got {pr.shape} and {y.shape}")
    if len(y) == 0:
        raise ValueError("calibration error of nothing is undefined")
    conf = pr.max(axis=1)
    correct = (pr.argmax(axis=1) == y).astype(np.float64)
    bins = np.clip((conf * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    cf = np.bincount(bins, weights=conf, minlength=n_bins)
    used = count > 0
    return float(np.sum(np.abs(acc[used] - cf[used])) / len(y))
