"""Evaluation: ROC AUC per held-out scan, over train/test scenarios.

Scenarios (lists of ``(train_indices, test_index)``):

* :func:`paper_scenarios`: the L-CNN paper's protocol: train on ONE scan,
  test on each other scan (3 scans give 6 scenarios);
* :func:`leave_one_out_scenarios`: train on all scans but one, test on it.

:func:`evaluate_scenarios` trains every requested variant (``"lcnn"``,
``"cnn"``, ``"random"``, ``"lcnn-t1"``, ``"lcnn-t2"`` ...: method plus
transfer depth) per scenario and returns an :class:`Evaluation` with the AUC
table (:meth:`Evaluation.table`) and ROC curves (:meth:`Evaluation.plot_roc`).
Test labels come from ``truth`` (3D points), with the same ``tau`` as training.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from expertloop.engine.jobs import Job, Progress, rescale
from expertloop.engine.spots.candidates import label_candidates
from expertloop.engine.spots.lcnn import (
    SpotConfig,
    TrainingSet,
    predict_patches,
    train_spot_detector,
)

VARIANTS = {
    "lcnn": ("lcnn", 3), "cnn": ("cnn", 0), "random": ("random", 3),
    "lcnn-t1": ("lcnn", 1), "lcnn-t2": ("lcnn", 2), "lcnn-t3": ("lcnn", 3),
}


def paper_scenarios(n_scans: int) -> list[tuple[tuple[int, ...], int]]:
    return [((i,), j) for i in range(n_scans) for j in range(n_scans) if i != j]


def leave_one_out_scenarios(n_scans: int) -> list[tuple[tuple[int, ...], int]]:
    return [(tuple(i for i in range(n_scans) if i != j), j) for j in range(n_scans)]


def roc_auc(y, score) -> float:
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, score))


@dataclass
class Evaluation:
    rows: list = field(default_factory=list)     # dicts: scenario, train, test, variant, auc, ...
    curves: dict = field(default_factory=dict)   # (scenario, variant) -> (fpr, tpr)

    def auc(self, variant: str) -> np.ndarray:
        return np.array([r["auc"] for r in self.rows if r["variant"] == variant])

    def mean_auc(self) -> dict[str, float]:
        return {v: float(np.nanmean(self.auc(v))) for v in dict.fromkeys(r["variant"] for r in self.rows)}

    def wins(self, a: str, b: str) -> int:
        """Scenarios where variant ``a`` has an AUC at least that of ``b``."""
        return int(np.sum(self.auc(a) >= self.auc(b)))

    def table(self) -> str:
        """A plain-text table: one row per scenario, one column per variant."""
        variants = list(dict.fromkeys(r["variant"] for r in self.rows))
        scen = list(dict.fromkeys((r["scenario"], r["train"], r["test"]) for r in self.rows))
        look = {(r["scenario"], r["variant"]): r["auc"] for r in self.rows}
        head = f"{'scenario':<10}{'train':<12}{'test':<8}" + "".join(f"{v:>10}" for v in variants)
        lines = [head, "-" * len(head)]
        for s, tr, te in scen:
            lines.append(f"{s:<10}{tr:<12}{te:<8}" + "".join(f"{look[(s, v)]:>10.4f}" for v in variants))
        means = self.mean_auc()
        lines.append("-" * len(head))
        lines.append(f"{'mean':<30}" + "".join(f"{means[v]:>10.4f}" for v in variants))
        return "\n".join(lines)

    def plot_roc(self, path=None, scenario=None):
        """ROC curves (matplotlib figure) of one scenario (default: all, one panel each)."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        scen = list(dict.fromkeys(s for s, _ in self.curves))
        if scenario is not None:
            scen = [scenario]
        cols = min(3, len(scen))
        rows = -(-len(scen) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.6 * rows), squeeze=False)
        for ax, s in zip(axes.ravel(), scen):
            for (s2, v), (fpr, tpr) in self.curves.items():
                if s2 == s:
                    auc = next(r["auc"] for r in self.rows if r["scenario"] == s and r["variant"] == v)
                    ax.plot(fpr, tpr, label=f"{v} ({auc:.3f})")
            ax.plot([0, 1], [0, 1], ":", color="grey")
            ax.set_title(s)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            ax.legend(fontsize=7, loc="lower right")
        for ax in axes.ravel()[len(scen):]:
            ax.axis("off")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig


def evaluate_scenarios(
    sets: list[TrainingSet],
    truth: list[np.ndarray],
    scenarios,
    variants=("lcnn", "cnn", "random"),
    config: SpotConfig | None = None,
    *,
    device=None,
) -> Job[Evaluation]:
    """Job: AUC of each variant on the held-out scan of each scenario."""
    from sklearn.metrics import roc_curve

    base = config or SpotConfig()
    if len(sets) != len(truth):
        raise ValueError("one truth point set per scan is needed")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    test_y = [label_candidates(s.candidates.centers, t, tau=base.tau)[0] for s, t in zip(sets, truth)]
    ev = Evaluation()
    total = len(scenarios) * len(variants)
    k = 0
    for train_idx, test in scenarios:
        name = "T" + "+".join(str(i + 1) for i in train_idx) + f"->{test + 1}"
        for v in variants:
            method, depth = VARIANTS[v]
            cfg = replace(base, method=method, transfer_layers=depth)
            det = yield from rescale(train_spot_detector([sets[i] for i in train_idx], cfg, device=device),
                                     k * 100, k * 100 + 90, total * 100)
            prob = yield from rescale(predict_patches(det, sets[test].candidates.patches),
                                      k * 100 + 90, k * 100 + 100, total * 100)
            auc = roc_auc(test_y[test], prob)
            fpr, tpr, _ = roc_curve(test_y[test], prob)
            step = max(1, len(fpr) // 400)
            ev.curves[(name, v)] = (fpr[::step], tpr[::step])
            ev.rows.append({"scenario": name, "train": ",".join(sets[i].name for i in train_idx),
                            "test": sets[test].name, "variant": v, "auc": auc,
                            "n_clusters": det.info.get("n_clusters"),
                            "transferred": len(det.info.get("transferred", []))})
            k += 1
            yield Progress(k * 100, total * 100, f"{name} {v}: AUC {auc:.4f}")
    return ev


def match_points(points, scores, centers, radii, *, tol: float = 1.0) -> np.ndarray:
    """True-positive flags of ranked detections against planted spots.

    Detections are taken by decreasing score; each one is a hit when it lies
    inside the still-unmatched spot's ellipsoid (``radii + tol`` per axis) that
    is nearest in normalised distance. Each spot is matched at most once.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, float).reshape(-1, 3)
    c = np.asarray(centers, float).reshape(-1, 3)
    r = np.asarray(radii, float).reshape(-1, 3) + float(tol)
    tp = np.zeros(len(pts), bool)
    if not len(pts) or not len(c):
        return tp
    used = np.zeros(len(c), bool)
    tree = cKDTree(c)
    reach = float(r.max())
    for i in np.argsort(-np.asarray(scores, float), kind="stable"):
        near = [j for j in tree.query_ball_point(pts[i], reach) if not used[j]]
        if not near:
            continue
        d = np.sqrt((((pts[i] - c[near]) / r[near]) ** 2).sum(axis=1))
        k = int(np.argmin(d))
        if d[k] <= 1.0:
            used[near[k]] = True
            tp[i] = True
    return tp


def point_detection_scores(points, scores, centers, radii, *, tol: float = 1.0) -> dict[str, float]:
    """AP (all-point) and best F1 (with its score threshold) of ranked 3D detections
    against ALL planted spots (not only the clicked ones)."""
    from expertloop.engine.blood.metrics import average_precision

    scores = np.asarray(scores, float)
    tp = match_points(points, scores, centers, radii, tol=tol)
    n_gt = len(np.asarray(centers).reshape(-1, 3))
    order = np.argsort(-scores, kind="stable")
    ctp = np.cumsum(tp[order])
    prec = ctp / np.arange(1, len(order) + 1)
    rec = ctp / max(n_gt, 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    best = int(np.argmax(f1)) if len(f1) else 0
    return {"ap": average_precision(scores, tp, n_gt) if len(tp) else 0.0,
            "best_f1": float(f1[best]) if len(f1) else 0.0,
            "best_f1_threshold": float(scores[order][best]) if len(f1) else float("nan"),
            "best_f1_precision": float(prec[best]) if len(f1) else 0.0,
            "best_f1_recall": float(rec[best]) if len(f1) else 0.0,
            "n_detections": int(len(tp)), "n_spots": int(n_gt)}
