"""Benchmark: semi-automatic labelling (threshold self-training + review) vs random vs all labels.

Paper-style figures on real labelled data:

* final validation accuracy of the threshold strategy vs the model trained
  on all labels (target: >= 99 % of it) and the fraction of the unlabelled
  images reviewed by hand (target: <= 25 %);
* manual fraction per iteration (the paper: 36 % -> 4 %);
* total manual work vs random sampling: random at a fixed 25 % rate (the
  paper's control), budgeted margin sampling, and how many random manual
  labels reach the threshold strategy's accuracy (the paper: 78 % fewer);
* seconds per iteration for 2,000 images (train + predict).

Datasets: scikit-learn's handwritten digits (bundled) and BCCD blood-cell
crops (Pascal VOC boxes -> 32x32 crops; ``--data`` points at the shared data
folder holding ``blood/bccd``). The annotator is SIMULATED from ground truth.

    python benchmarks/bench_semiauto.py --data /path/to/shared/data [--quick] [--embed]

Human-readable lines first, then one JSON line with all figures.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

from expertloop.engine.jobs import run_job  # noqa: E402
from expertloop.engine.semiauto import (  # noqa: E402
    SemiAutoConfig,
    SemiAutoLoop,
    make_classifier,
    simulate,
)
from expertloop.engine.semiauto.classifiers import Precomputed  # noqa: E402
from expertloop.engine.semiauto.datasets import (  # noqa: E402
    digits_dataset,
    simulation_split,
    voc_crops_dataset,
)


def run_strategy(col, truth, names, clf_name, x, labels, val, **cfg):
    loop = SemiAutoLoop(col, names, labels, Precomputed(make_classifier(clf_name), x),
                        config=SemiAutoConfig(**cfg), val_indices=val, val_labels=truth[val])
    t0 = time.perf_counter()
    hist = run_job(simulate(loop, truth))
    return hist, time.perf_counter() - t0


def all_labelled(clf_name, x, truth, val):
    clf = make_classifier(clf_name)
    tr = np.setdiff1d(np.arange(len(truth)), val)
    run_job(clf.fit(x[tr], truth[tr], int(truth.max()) + 1))
    return float(np.mean(run_job(clf.logits(x[val])).argmax(1) == truth[val])), len(tr)


def iteration_time(clf_name, x, truth, n=2000, seed=0):
    """Seconds for one iteration: fit on up to n labelled images, predict up to n others.

    Returns ``(fit_s, predict_s, n_fit, n_predict)``: with fewer than 2n
    images, the set is split in half (the sizes say so).
    """
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(truth))
    half = min(n, len(idx) // 2)
    tr, te = idx[:half], idx[half:half + n]
    clf = make_classifier(clf_name)
    t0 = time.perf_counter()
    run_job(clf.fit(x[tr], truth[tr], int(truth.max()) + 1))
    t1 = time.perf_counter()
    run_job(clf.logits(x[te]))
    return t1 - t0, time.perf_counter() - t1, len(tr), len(te)


def bench_dataset(tag, col, truth, names, clf_name, batch, n_initial, n_val, out):
    print(f"\n== {tag}: {len(col)} images, {len(names)} classes {np.bincount(truth).tolist()}, "
          f"classifier {clf_name}, batch {batch}")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = run_job(make_classifier(clf_name).prepare(col.images))
    t_prep = time.perf_counter() - t0
    labels, val = simulation_split(truth, n_initial, n_val, seed=0)
    n_unlab = int((labels < 0).sum() - 0)
    n_unlab = len(truth) - len(val) - int((labels >= 0).sum())
    acc_all, n_all = all_labelled(clf_name, x, truth, val)
    print(f"features/input for {len(col)} images: {t_prep:.1f} s; all {n_all} labelled -> "
          f"validation accuracy {acc_all:.4f}")
    res = {"n_images": len(col), "n_val": int(len(val)), "n_initial": int((labels >= 0).sum()),
           "n_unlabelled": n_unlab, "all_labelled_acc": acc_all, "all_labelled_manual": n_all,
           "prepare_s": round(t_prep, 2), "classifier": clf_name}
    runs = {
        "threshold": {"strategy": "threshold", "t": 0.9},
        "random25": {"strategy": "random", "rate": 0.25},
        "margin": {"strategy": "margin", "rate": 0.1, "t": 0.9},
        "random_all": {"strategy": "random", "rate": 1.0},
    }
    for name, cfg in runs.items():
        hist, secs = run_strategy(col, truth, names, clf_name, x, labels, val, batch_size=batch, **cfg)
        iters = [h for h in hist if not h.get("final")]
        final = hist[-1]
        manual_new = final["manual_total"] - res["n_initial"]
        res[name] = {
            "final_acc": round(final["val_acc"], 4),
            "rel_to_all": round(final["val_acc"] / acc_all, 4),
            "manual_total": int(final["manual_total"]),
            "reviewed_fraction": round(manual_new / max(n_unlab, 1), 4),
            "label_errors": int(final["label_errors"]),
            "manual_fraction_per_iter": [round(h["manual_fraction"], 3) for h in iters],
            "acc_per_iter": [round(h["val_acc"], 4) for h in iters] + [round(final["val_acc"], 4)],
            "labelled_per_iter": [h["n_labelled"] for h in iters] + [final["n_labelled"]],
            "ece_before": [round(h.get("ece_before", np.nan), 4) for h in iters],
            "ece_after": [round(h.get("ece_after", np.nan), 4) for h in iters],
            "seconds": round(secs, 1),
        }
        r = res[name]
        print(f"{name:10s}: final acc {r['final_acc']:.4f} ({100 * r['rel_to_all']:.1f}% of all-labelled), "
              f"manual labels {r['manual_total']} (reviewed {100 * r['reviewed_fraction']:.1f}% of the "
              f"unlabelled), wrong labels {r['label_errors']}, {secs:.1f} s")
        print(f"{'':10s}  manual fraction per iteration: "
              + " ".join(f"{100 * f:.0f}%" for f in r["manual_fraction_per_iter"]))
        if name == "threshold":
            print(f"{'':10s}  ECE per iteration before -> after temperature scaling: "
                  + " ".join(f"{b:.3f}->{a:.3f}" for b, a in zip(r["ece_before"], r["ece_after"])))
    # manual labels random sampling needs to reach the threshold strategy's accuracy
    thr, ra = res["threshold"], res["random_all"]
    need = next((n for n, a in zip(ra["labelled_per_iter"], ra["acc_per_iter"]) if a >= thr["final_acc"]), None)
    res["random_labels_to_match_threshold"] = need
    res["saving_vs_random"] = None if need is None else round(1 - thr["manual_total"] / need, 4)
    res["target_met"] = bool(thr["rel_to_all"] >= 0.99 and thr["reviewed_fraction"] <= 0.25)
    print(f"random sampling needs {need if need is not None else '> all'} manual labels to reach "
          f"{thr['final_acc']:.4f}; threshold used {thr['manual_total']}"
          + (f" ({100 * res['saving_vs_random']:.0f}% less)" if need else ""))
    print(f"target (>= 99% of all-labelled accuracy, <= 25% reviewed): "
          f"{'MET' if res['target_met'] else 'NOT met'}")
    fit_s, pred_s, n_fit, n_pred = iteration_time(clf_name, x, truth)
    res["iteration_s"] = {"fit": round(fit_s, 2), "predict": round(pred_s, 2),
                          "n_fit": n_fit, "n_predict": n_pred,
                          "features_s": round(t_prep, 2), "features_n": len(col)}
    print(f"one iteration: fit on {n_fit} images {fit_s:.2f} s + predict {n_pred} images "
          f"{pred_s:.2f} s (+ {t_prep:.1f} s once for the features of all {len(col)} images)")
    out[tag] = res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="shared data folder holding blood/bccd")
    ap.add_argument("--quick", action="store_true", help="small subsets (for development)")
    ap.add_argument("--embed", action="store_true", help="also: logistic regression on MobileNetV2 embeddings")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    out: dict = {"benchmark": "semiauto", "machine": machine(), "quick": args.quick}
    t_all = time.perf_counter()
    with threadpool_limits(2):
        col, truth, names = digits_dataset()
        if args.quick:
            col.images, col.names, truth = col.images[:800], col.names[:800], truth[:800]
        bench_dataset("digits", col, truth, names, "logreg-hand", 200, 10, 30, out)
        if args.data:
            root = Path(args.data) / "blood" / "bccd"
            col, truth, names = voc_crops_dataset(root, size=32, max_images=60 if args.quick else None)
            print(f"\nBCCD: {len(col)} crops from {'60' if args.quick else 'all'} images")
            bench_dataset("bccd", col, truth, names, "logreg-hand", 500, 10, 50, out)
            if args.embed:
                bench_dataset("bccd_mobilenet", col, truth, names, "logreg-mobilenet_v2", 500, 10, 50, out)
        else:
            print("\n(no --data: BCCD crops skipped)")
    out["total_s"] = round(time.perf_counter() - t_all, 1)
    emit(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
