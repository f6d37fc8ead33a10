"""L-CNN spot detection on spot phantoms built from real MRI (a SIMULATION).

Spots are planted into the real Colin27 T1 brain MRI (181x217x181; shipped as
the package's sample data, or ``--data PATH``) and clicked by a simulated
expert whose latency grows with spot difficulty (see
``expertloop.engine.spots.phantom``). Each phantom scan has its own spots,
noise level and bias field.

Figures:

* AUC of L-CNN vs the conventional CNN vs random clusters (and transfer
  depth 1/2), per scenario of the paper's protocol (train on one scan, test
  on each other one: 3 scans -> 6 scenarios), plus how many scenarios L-CNN
  >= CNN and the mean/max AUC gain;
* candidate/patch extraction time for one 181x217x181 volume (target <= 10 s
  on 2 CPU cores);
* whole-volume prediction time (CNN on all candidates + 3D joining; target
  <= 5 s on 2 CPU cores), and the end-to-end time including extraction;
* baseline, same run: on an unseen phantom scan of the same volume, the
  detector trained on scan 1 (3D spots joined from probability >=
  ``--rank-threshold``, ranked by probability) vs a multi-scale LoG dark-blob
  filter (``expertloop.engine.baselines.log_blob_candidates``), both scored
  by ``point_detection_scores``: AP and best F1 against ALL planted spots;
  ratios detector / LoG in the JSON;
* cross-scanner, same run: the same detector (trained on a Colin27 scan) and
  the same LoG filter on a phantom built on a DIFFERENT real T1 volume
  (``--cross-volume``; default: the MNI152 2009a T1 template that nilearn
  ships, when nilearn is installed), scored the same way.

    python benchmarks/bench_spots.py [--quick] [--data PATH] [--out DIR]

``--quick``: 2 scans (2 scenarios), L-CNN/CNN/random only, fewer epochs.
Last line: one JSON line of figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402


def cross_volume_path(arg: str | None) -> Path | None:
    """The second real volume of the cross-scanner scenario (None: skip it)."""
    if arg is not None:
        return None if arg.lower() == "none" else Path(arg)
    try:
        import nilearn
    except ImportError:
        return None
    p = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return p if p.exists() else None


def report_vs_log(scored: dict, title: str, target: str, t_log: float, **extra) -> dict:
    """Print detector vs LoG (AP, best F1) with the ratios; return the JSON block."""
    print(f"{title}, AP / best F1 (precision, recall) against all planted spots:")
    for k, v in scored.items():
        print(f"  {k:14s} AP {v['ap']:.3f}  best F1 {v['best_f1']:.3f} (P {v['best_f1_precision']:.2f}, "
              f"R {v['best_f1_recall']:.2f} at score {v['best_f1_threshold']:.3g}; {v['n_detections']} ranked)")
    d, b = scored["detector_lcnn"], scored["log_blobs"]
    ratios = {"ap_detector_over_log": round(d["ap"] / max(b["ap"], 1e-9), 3),
              "best_f1_detector_over_log": round(d["best_f1"] / max(b["best_f1"], 1e-9), 3)}
    print(f"  ratios detector / LoG: AP {ratios['ap_detector_over_log']}, best F1 "
          f"{ratios['best_f1_detector_over_log']} (target AP >= {target}); LoG took {t_log:.1f} s")
    return {**extra, "log_seconds": round(t_log, 2), **ratios,
            **{k: {m: (round(x, 4) if isinstance(x, float) else x) for m, x in v.items()} for k, v in scored.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--data", default=None, help="a 3D MRI volume (default: the Colin27 sample)")
    p.add_argument("--scans", type=int, default=None)
    p.add_argument("--spots", type=int, default=150)
    p.add_argument("--out", default=None, help="folder for the results table and ROC plot")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the 2-core target)")
    p.add_argument("--variants", default=None,
                   help="comma-separated, from lcnn,cnn,random,lcnn-t1,lcnn-t2 (default: all; --quick: 3)")
    p.add_argument("--epochs", type=int, default=4, help="target CNN epochs")
    p.add_argument("--source-epochs", type=int, default=20)
    p.add_argument("--max-negatives", type=int, default=5000)
    p.add_argument("--no-timing", action="store_true", help="skip the prediction-time and baseline part")
    p.add_argument("--cross-volume", default=None,
                   help="a second real 3D T1 volume for the cross-scanner scenario (default: nilearn's "
                        "MNI152 template when nilearn is installed; 'none' skips it)")
    p.add_argument("--rank-threshold", type=float, default=0.05,
                   help="probability from which detector spots are joined and ranked for AP / best F1")
    args = p.parse_args(argv)

    from expertloop.engine.backend import get_torch
    from expertloop.engine.jobs import run_job
    from expertloop.engine.spots import (
        SpotConfig,
        detect_spots,
        extract_candidates,
        make_phantom,
        prepare_scan,
        simulate_expert,
        train_spot_detector,
        truth_points,
    )
    from expertloop.engine.spots.evaluate import evaluate_scenarios, paper_scenarios
    from expertloop.io import read_image

    torch = get_torch()
    torch.set_num_threads(args.threads)
    data = Path(args.data) if args.data else Path(__file__).parents[1] / "src/expertloop/data/colin27_t1_brain.nii.gz"
    volume = read_image(data)[0].data
    n_scans = args.scans or (2 if args.quick else 3)
    variants = ("lcnn", "cnn", "random") if args.quick else ("lcnn", "cnn", "random", "lcnn-t1", "lcnn-t2")
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(","))
    # training budget kept small so that 30 trainings fit a shared 2-core machine
    cfg = SpotConfig(target_epochs=args.epochs, source_epochs=args.source_epochs,
                     max_negatives=args.max_negatives)
    print(f"volume {data.name} {volume.shape}; {n_scans} phantom scans x {args.spots} spots (SIMULATION)")
    print(f"machine: {machine()}; torch threads {args.threads}")

    sets, truth = [], []
    t_extract = []
    n_clicks = []
    for i in range(n_scans):
        ph = make_phantom(volume, args.spots, seed=i, noise=0.02 + 0.01 * i)
        clicks = simulate_expert(ph, seed=i)
        t0 = time.perf_counter()
        cand = run_job(extract_candidates(ph.volume, patch_size=cfg.patch_size))
        t_extract.append(time.perf_counter() - t0)
        sets.append(run_job(prepare_scan(ph.volume, clicks, cfg, name=f"scan{i + 1}", candidates=cand)))
        truth.append(truth_points(ph))
        n_clicks.append(len(clicks["z"]))
        print(f"scan{i + 1}: {len(cand)} candidates in {t_extract[-1]:.2f} s, {len(clicks['z'])} clicks "
              f"({np.sum(clicks['latency_s'] > 45)} breaks > 45 s), {sets[-1].n_positive} positive patches")

    t0 = time.perf_counter()
    def show(rec):
        if "AUC" in rec.message:
            print(f"  [{time.perf_counter() - t0:6.0f} s] {rec.message}", flush=True)

    ev = run_job(evaluate_scenarios(sets, truth, paper_scenarios(n_scans), variants, cfg), on_progress=show)
    t_eval = time.perf_counter() - t0
    print()
    print("ROC AUC on the held-out scan (train on one scan, test on another):")
    print(ev.table())
    figures = {}
    if {"lcnn", "cnn", "random"} <= set(variants):
        lc, cn, rnd = ev.auc("lcnn"), ev.auc("cnn"), ev.auc("random")
        gain = lc - cn
        print(f"L-CNN >= CNN in {int(np.sum(gain >= 0))}/{len(gain)} scenarios; gain mean {gain.mean():+.4f}, "
              f"max {gain.max():+.4f}; L-CNN >= random clusters in {int(np.sum(lc >= rnd))}/{len(gain)}")
        figures.update({
            "lcnn_ge_cnn": int(np.sum(gain >= 0)), "lcnn_ge_random": int(np.sum(lc >= rnd)),
            "lcnn_gain_mean": round(float(gain.mean()), 4), "lcnn_gain_max": round(float(gain.max()), 4),
        })
    print(f"evaluation ({len(ev.rows)} trainings) took {t_eval:.0f} s")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "spots_auc_table.txt").write_text(ev.table() + "\n")
        ev.plot_roc(out / "spots_roc.png")
        print(f"wrote {out / 'spots_auc_table.txt'} and {out / 'spots_roc.png'}")

    figures.update({
        "benchmark": "spots", "quick": args.quick, "simulation": True, "volume_shape": list(volume.shape),
        "n_scans": n_scans, "n_scenarios": len(paper_scenarios(n_scans)), "spots_per_scan": args.spots,
        "clicks_per_scan": n_clicks,
        "auc": {v: [round(float(a), 4) for a in ev.auc(v)] for v in variants},
        "mean_auc": {k: round(v, 4) for k, v in ev.mean_auc().items()},
        "patch_extraction_s": round(min(t_extract), 2), "patch_extraction_target_s": 10,
        "train_budget": {"epochs": cfg.target_epochs, "source_epochs": cfg.source_epochs,
                         "max_negatives": cfg.max_negatives},
        "torch_threads": args.threads, "cores": machine()["cores"],
    })
    print(f"patch extraction for one {volume.shape} volume: {min(t_extract):.2f} s (best of {n_scans})")
    if args.no_timing:
        emit(figures)
        return 0
    # whole-volume prediction time with a model trained on scan 1
    det = run_job(train_spot_detector(sets[0], cfg))
    test_ph = make_phantom(volume, args.spots, seed=99)
    test_volume = test_ph.volume
    t0 = time.perf_counter()
    cand = run_job(extract_candidates(test_volume))
    t_cand = time.perf_counter() - t0
    t1 = time.perf_counter()
    found = run_job(detect_spots(det, test_volume, candidates=cand))
    spots = found.spots(0.5)
    t_pred = time.perf_counter() - t1
    print(f"whole-volume prediction ({len(cand)} candidates -> {len(spots['points'])} 3D spots): "
          f"{t_pred:.2f} s (CNN + joining), {t_cand + t_pred:.2f} s with candidate extraction")
    figures.update({
        "prediction_s": round(t_pred, 2), "prediction_target_s": 5,
        "prediction_with_extraction_s": round(t_cand + t_pred, 2), "n_candidates": len(cand),
    })
    # baseline a user would pick: a multi-scale LoG dark-blob filter, scored exactly like the
    # detector (AP and best F1 against ALL planted spots of the same unseen scan)
    from expertloop.engine.baselines import log_blob_candidates
    from expertloop.engine.spots.evaluate import point_detection_scores

    low = found.spots(args.rank_threshold)
    t0 = time.perf_counter()
    log_pts, log_scores = log_blob_candidates(test_volume, dark=True, mask=test_ph.mask)
    t_log = time.perf_counter() - t0
    scored = {"detector_lcnn": point_detection_scores(low["points"], low["probability"], test_ph.centers,
                                                      test_ph.radii),
              "log_blobs": point_detection_scores(log_pts, log_scores, test_ph.centers, test_ph.radii)}
    figures["baseline_same_scanner"] = report_vs_log(
        scored, f"same-scanner scan (seed 99, {test_ph.n_spots} planted spots)", "1.2x", t_log,
        scan="phantom seed 99 on the same volume", detector_rank_threshold=args.rank_threshold)
    cross = cross_volume_path(args.cross_volume)
    if cross is None:
        print("cross-scanner scenario skipped (no second volume: install nilearn or pass --cross-volume)")
    else:
        other = read_image(cross)[0].data
        ph2 = make_phantom(np.asarray(other), args.spots, seed=98, noise=0.03)
        found2 = run_job(detect_spots(det, ph2.volume))
        low2 = found2.spots(args.rank_threshold)
        t0 = time.perf_counter()
        log_pts2, log_scores2 = log_blob_candidates(ph2.volume, dark=True, mask=ph2.mask)
        t_log2 = time.perf_counter() - t0
        scored2 = {"detector_lcnn": point_detection_scores(low2["points"], low2["probability"], ph2.centers,
                                                           ph2.radii),
                   "log_blobs": point_detection_scores(log_pts2, log_scores2, ph2.centers, ph2.radii)}
        n_default = len(found2.spots(0.5)["points"])
        figures["baseline_cross_scanner"] = report_vs_log(
            scored2, f"cross-scanner scan ({cross.name} {other.shape}, {ph2.n_spots} planted spots; detector "
            f"trained on {data.name})", "1.0x", t_log2, scan=f"phantom seed 98 on {cross.name}",
            volume_shape=list(other.shape), detector_rank_threshold=args.rank_threshold,
            detector_spots_at_0_5=n_default)
        print(f"  detector spots at the default threshold 0.5: {n_default} ({ph2.n_spots} planted)")
    emit(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
