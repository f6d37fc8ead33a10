"""FLIM benchmark: Dice, image recommendation, fit and descriptor times.

Real data (read from ``--data``, default ``/work/shared/data``):

* nuclei: scikit-image's ``cells3d`` confocal nuclei (60×256×256, labels
  likely machine-made). Every second slice is cut into four 128×128
  quadrants; quadrants 0–2 are the training pool, quadrant 3 of every odd
  slice the test set (spatially disjoint from the pool);
* EM: ISBI 2012 ssTEM, 512×512 (fit-time benchmark).

Markers are SIMULATED from the ground truth (``simulate_markers``: skeleton
scribbles in a few objects, a thin ring of background around them), not
whole masks. Figures:

(a) Dice (test, foreground) of FLIM encoder (5 marked images) + symmetric
    decoder trained by backprop on all pool images with the encoder frozen,
    vs the same network trained end to end by backprop from random init on
    all pool images, same decoder, same steps;
(b) Dice with the 5 images chosen by the recommendation loop (simulated
    user: starts from a random image, always takes the farthest
    recommendation; or alternates farthest and nearest) vs 5 random images
    (mean over draws), for the decoder of
    (a) and for the ground-truth-free pipeline (pixel head fitted on the
    markers only);
(c) FLIM encoder fit time for 5 images of 512² (target ≤ 2 s on 2 cores),
    and the speed ratio against backprop training of the same encoder (+ the
    same 1×1 head, on the same markers) until it reaches the FLIM Dice;
(d) descriptor time for 100 images (256², superpixels included);
(e) baselines in the same run, trained on the SAME markers: Otsu (global
    threshold per test image) and a random forest on a filter bank
    (``expertloop.engine.baselines``, ilastik style), on the nuclei test set
    and on ISBI EM images 5-9 (foreground: cells; markers simulated from the
    truth of images 0-4); ratios FLIM Dice / baseline Dice in the JSON.

    python benchmarks/bench_flim.py [--quick] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, machine  # noqa: E402

SPEC = {"ndim": 2, "layers": [
    {"kernel_size": 3, "filters_per_class": 8, "pool": "max", "pool_size": 3, "pool_stride": 2},
    {"kernel_size": 3, "filters_per_class": 8, "pool": "max", "pool_size": 3, "pool_stride": 2},
]}


def log(msg: str) -> None:
    print(msg, flush=True)


def nuclei_sets(data: Path, quick: bool):
    import tifffile

    vol = tifffile.imread(data / "nuclei" / "cells3d_nuclei.tif").astype(np.float32)
    lab = tifffile.imread(data / "nuclei" / "cells3d_nuclei_labels.tif")
    quads = [(slice(0, 128), slice(0, 128)), (slice(0, 128), slice(128, 256)),
             (slice(128, 256), slice(0, 128)), (slice(128, 256), slice(128, 256))]
    zs = range(0, 60, 4 if quick else 2)
    pool = [(vol[z][q], lab[z][q]) for z in zs for q in quads[:3]]
    test = [(vol[z][quads[3]], lab[z][quads[3]]) for z in range(1, 60, 4 if quick else 2)]
    return pool, test


def annotate_fn(truths, seed=0):
    """The simulated annotator (documented): scribbles from the ground truth."""
    from expertloop.engine.flim import simulate_markers

    def annotate(i):
        gt = truths[i]
        if (gt > 0).any():
            return simulate_markers(gt, n_objects=6, seed=seed + i)
        mk = np.zeros(gt.shape, np.uint8)  # no object: background strokes only
        mk[gt.shape[0] // 3, 10:-10] = 1
        mk[2 * gt.shape[0] // 3, 10:-10] = 1
        return mk
    return annotate


def test_dice(net, test) -> float:
    from expertloop.engine.flim import predict
    from expertloop.engine.metrics import dice

    scores = [dice(predict(net, img)[0] == 2, gt > 0) for img, gt in test]
    return float(np.mean(scores))


def fit_flim(images, marks):
    from expertloop.engine.flim import fit_encoder
    from expertloop.engine.jobs import run_job

    return run_job(fit_encoder(images, marks, SPEC, seed=0))


def flim_unet(enc, pool, steps, seed=0):
    from expertloop.engine.flim import build_network, train_decoder
    from expertloop.engine.jobs import run_job

    net = build_network(enc, [1, 2], "unet", width=16)
    run_job(train_decoder(net, [p[0] for p in pool], [(p[1] > 0) + 1 for p in pool], steps=steps, seed=seed))
    return net


def pixel_head(enc, images, marks):
    from expertloop.engine.flim import fit_pixel_head
    from expertloop.engine.jobs import run_job

    return run_job(fit_pixel_head(enc, images, marks))


def baselines_side_by_side(name, train_imgs, train_marks, test, methods: dict) -> dict:
    """FLIM vs Otsu and the random-forest filter bank trained on the SAME markers.

    ``test``: (image, foreground mask) pairs; ``methods``: name -> image -> mask.
    Two scores: the mean per-image Dice (the benchmark's usual one; an image
    without objects scores 1 only if nothing is predicted) and one Dice over
    all test pixels pooled. Otsu per image and Otsu with one threshold for the
    whole test stack. Prints side by side; returns the figures with the ratios.
    """
    from skimage.filters import threshold_otsu

    from expertloop.engine.baselines import RandomForestPixelClassifier, otsu_segment
    from expertloop.engine.metrics import dice

    t = time.perf_counter()
    rf = RandomForestPixelClassifier(n_estimators=50).fit(train_imgs, train_marks)
    rf_s = time.perf_counter() - t
    stack_t = threshold_otsu(np.concatenate([img.ravel() for img, _ in test]))
    preds = {"otsu_per_image": otsu_segment, "otsu_one_threshold_for_the_stack": lambda im: im > stack_t,
             "random_forest_filter_bank": lambda im: rf.predict(im) == 2, **methods}
    truth_all = np.concatenate([fg.ravel() for _, fg in test])
    out = {"marked_images": len(train_imgs), "test_images": len(test), "random_forest_fit_seconds": round(rf_s, 2)}
    log(f"(e) {name}: {len(test)} test images, markers on {len(train_imgs)} images; Dice mean per image | pooled")
    for k, fn in preds.items():
        masks = [fn(img) for img, _ in test]
        out[k] = {"dice_mean": round(float(np.mean([dice(m, fg) for m, (_, fg) in zip(masks, test)])), 4),
                  "dice_pooled": round(float(dice(np.concatenate([m.ravel() for m in masks]), truth_all)), 4)}
        log(f"    {k:40s} {out[k]['dice_mean']:.3f} | {out[k]['dice_pooled']:.3f}")
    for k in methods:
        for base, short in (("otsu_per_image", "otsu"), ("otsu_one_threshold_for_the_stack", "otsu_stack"),
                            ("random_forest_filter_bank", "rf")):
            for score in ("dice_mean", "dice_pooled"):
                out[f"ratio_{k}_over_{short}_{score}"] = round(out[k][score] / max(out[base][score], 1e-9), 3)
        log(f"    ratios {k}: / Otsu {out[f'ratio_{k}_over_otsu_dice_mean']} | "
            f"{out[f'ratio_{k}_over_otsu_dice_pooled']}, / Otsu stack {out[f'ratio_{k}_over_otsu_stack_dice_mean']}"
            f" | {out[f'ratio_{k}_over_otsu_stack_dice_pooled']}, / RF {out[f'ratio_{k}_over_rf_dice_mean']} | "
            f"{out[f'ratio_{k}_over_rf_dice_pooled']}")
    return out


def first_with_objects(pool, rng):
    cands = [i for i, (_, gt) in enumerate(pool) if (gt > 0).mean() > 0.05]
    return int(rng.choice(cands))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller pool, fewer steps and draws")
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--steps", type=int, default=None, help="decoder training steps")
    ap.add_argument("--draws", type=int, default=None, help="random 5-image draws (>= 5 for the report)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's choice; 1 is much faster on a crowded machine)")
    args = ap.parse_args()
    data = Path(args.data)
    steps = args.steps or (80 if args.quick else 400)
    draws = args.draws or (2 if args.quick else 5)
    starts = 1 if args.quick else 3

    import os

    from expertloop.engine.backend import get_torch
    from expertloop.engine.flim import (
        build_network,
        compute_descriptors,
        random_encoder_like,
        recommendation_loop,
        superpixels,
        train_decoder,
    )
    from expertloop.engine.jobs import run_job

    torch = get_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict = {"machine": machine(), "torch_threads": torch.get_num_threads(), "quick": args.quick,
                     "decoder_steps": steps, "load_average_at_start": round(os.getloadavg()[0], 1)}
    pool, test = nuclei_sets(data, args.quick)
    imgs = [p[0] for p in pool]
    truths = [p[1] for p in pool]
    annotate = annotate_fn(truths)
    log(f"nuclei (cells3d): pool {len(pool)} images 128², test {len(test)} images; decoder steps {steps}")
    fit_encoder_warm = fit_flim([imgs[0]], [annotate(first_with_objects(pool, np.random.default_rng(9)))])  # noqa: F841

    # ---------------------------------------------------------------- (b) selection
    rng = np.random.default_rng(0)
    rec_runs, rnd_runs = [], []
    firsts = [first_with_objects(pool, rng) for _ in range(starts)]
    for strategy, label in (("farthest", "recommended"), ("alternate", "recommended_alternate")):
        for first in firsts:
            t = time.perf_counter()
            chosen = run_job(recommendation_loop(imgs, annotate, n_images=5, first=first, spec=SPEC,
                                                 choose=strategy, k=3, n_segments=40, seed=0))
            loop_s = time.perf_counter() - t
            rec_runs.append((label, chosen, loop_s))
            log(f"recommendation loop ({strategy}) from image {first}: chose {chosen} in {loop_s:.1f} s")
    for dr in range(draws):
        rng_d = np.random.default_rng(100 + dr)
        first = first_with_objects(pool, rng_d)
        rest = [i for i in rng_d.permutation(len(pool)) if i != first][:4]
        rnd_runs.append(("random", [first] + [int(i) for i in rest], 0.0))
    results = {"recommended": [], "recommended_alternate": [], "random": []}
    for kind, chosen, _ in rec_runs + rnd_runs:
        marks = [annotate(i) for i in chosen]
        ims = [imgs[i] for i in chosen]
        enc, rep = fit_flim(ims, marks)
        d_px = test_dice(pixel_head(enc, ims, marks), test)
        d_unet = test_dice(flim_unet(enc, pool, steps), test)
        results[kind].append({"images": chosen, "dice_pixel_head": d_px, "dice_unet": d_unet})
        log(f"  {kind:21s} {chosen}: Dice pixel head (markers only) {d_px:.3f}, "
            f"FLIM + U-Net decoder {d_unet:.3f}")

    def summary(rows, key):
        v = np.array([r[key] for r in rows])
        return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4), "n": len(v)}

    figures["b_selection"] = {
        k: {"dice_pixel_head": summary(v, "dice_pixel_head"), "dice_unet": summary(v, "dice_unet"),
            "runs": v} for k, v in results.items()}
    figures["b_selection"]["loop_seconds_mean"] = round(float(np.mean([r[2] for r in rec_runs])), 2)

    # ---------------------------------------------------------------- (e) baselines, nuclei
    from expertloop.engine.flim import predict

    flim_a = results["random"][0]  # the same 5 marked images for FLIM and the random forest
    e_ims, e_marks = [imgs[i] for i in flim_a["images"]], [annotate(i) for i in flim_a["images"]]
    e_enc, _ = fit_flim(e_ims, e_marks)  # deterministic: the networks scored in (b) for this draw
    e_head, e_unet = pixel_head(e_enc, e_ims, e_marks), flim_unet(e_enc, pool, steps)
    figures["e_baselines_nuclei"] = baselines_side_by_side(
        "nuclei", e_ims, e_marks, [(img, gt > 0) for img, gt in test],
        {"flim_pixel_head": lambda im: predict(e_head, im)[0] == 2,
         "flim_unet_decoder": lambda im: predict(e_unet, im)[0] == 2})

    # ---------------------------------------------------------------- (a) FLIM vs backprop
    t = time.perf_counter()
    base = build_network(random_encoder_like(SPEC, 1, [16, 16], seed=0), [1, 2], "unet", width=16)
    with torch.no_grad():  # same input normalisation as a data z-score (the FLIM encoder gets it from markers)
        allpix = np.concatenate([p[0].ravel() for p in pool])
        base.encoder.layers[0].mean.fill_(float(allpix.mean()))
        base.encoder.layers[0].std.fill_(float(allpix.std()))
    run_job(train_decoder(base, imgs, [(g > 0) + 1 for g in truths], steps=steps, train_encoder=True, seed=0))
    bp_s = time.perf_counter() - t
    d_bp = test_dice(base, test)
    figures["a_dice"] = {
        "flim_5_images_plus_unet_decoder": round(flim_a["dice_unet"], 4),
        "flim_images": flim_a["images"],
        "backprop_all_images_same_network": round(d_bp, 4),
        "backprop_train_seconds": round(bp_s, 1),
        "pool_images": len(pool), "test_images": len(test),
    }
    log(f"(a) FLIM (5 images) + decoder: Dice {flim_a['dice_unet']:.3f}; backprop from scratch on all "
        f"{len(pool)} images, same network and {steps} steps: Dice {d_bp:.3f} ({bp_s:.0f} s)")

    # ---------------------------------------------------------------- (c) fit time 5×512², speed ratio
    import imageio.v3 as iio
    from scipy import ndimage as ndi

    from expertloop.engine.flim import simulate_markers

    em_dir = data / "em_membranes" / "isbi2012"
    em_imgs, em_marks = [], []
    for i in range(5):
        im = iio.imread(em_dir / "image" / f"{i}.png").astype(np.float32)
        gt = iio.imread(em_dir / "label" / f"{i}.png")
        cells = ndi.label(gt > 127)[0]
        em_imgs.append(im)
        em_marks.append(simulate_markers(cells, n_objects=8, background_ring=(1, 2), seed=i))
    fit_times = []
    for _ in range(3):
        t = time.perf_counter()
        enc_em, rep_em = fit_flim(em_imgs, em_marks)
        fit_times.append(time.perf_counter() - t)
    n_mark = int(sum((m > 0).sum() for m in em_marks))
    figures["c_fit_time"] = {"images": "5 x 512x512 (ISBI 2012 EM)", "marked_pixels": n_mark,
                             "seconds_median": round(float(np.median(fit_times)), 3),
                             "seconds_all": [round(x, 3) for x in fit_times], "target_seconds": 2.0,
                             "filters_per_layer": rep_em.filters_per_layer}
    log(f"(c) FLIM fit, 5 EM images 512² ({n_mark} marked pixels, 2 layers): median "
        f"{np.median(fit_times):.2f} s (target <= 2 s)")

    # (e) EM membranes: foreground = cells (label > 127), markers on images 0-4, test on 5-9
    em_test = [(iio.imread(em_dir / "image" / f"{i}.png").astype(np.float32),
                iio.imread(em_dir / "label" / f"{i}.png") > 127) for i in range(5, 10 if not args.quick else 7)]
    em_head = pixel_head(enc_em, em_imgs, em_marks)
    figures["e_baselines_em"] = baselines_side_by_side("EM membranes (ISBI 2012)", em_imgs, em_marks, em_test,
                                                       {"flim_pixel_head": lambda im: predict(em_head, im)[0] == 2})

    # speed ratio on nuclei: FLIM encoder + pixel head vs backprop of the same encoder + head, same markers
    chosen = results["random"][0]["images"]
    ims, marks = [imgs[i] for i in chosen], [annotate(i) for i in chosen]
    t = time.perf_counter()
    enc, _ = fit_flim(ims, marks)
    head = pixel_head(enc, ims, marks)
    flim_s = time.perf_counter() - t
    d_flim = test_dice(head, test)
    bp = build_network(random_encoder_like(SPEC, 1, enc.out_channels, seed=0), [1, 2], "pixel")
    with torch.no_grad():
        allpix = np.concatenate([x.ravel() for x in ims])
        bp.encoder.layers[0].mean.fill_(float(allpix.mean()))
        bp.encoder.layers[0].std.fill_(float(allpix.std()))
    cap = 30.0 if args.quick else 180.0
    state = {"t0": time.perf_counter(), "val_s": 0.0, "reached": None, "within_001": None,
             "best": 0.0, "curve": []}

    def validate(net):
        # training time only: the time spent validating is not backprop's
        tv = time.perf_counter()
        d = test_dice(net, test)
        state["val_s"] += time.perf_counter() - tv
        state["best"] = max(state["best"], d)
        el = time.perf_counter() - state["t0"] - state["val_s"]
        state["curve"].append((round(el, 1), round(d, 4)))
        if d >= d_flim - 0.01 and state["within_001"] is None:
            state["within_001"] = el
        if d >= d_flim and state["reached"] is None:
            state["reached"] = el
        return {"dice": d, "stop": d >= d_flim or el > cap}

    state["t0"] = time.perf_counter()
    run_job(train_decoder(bp, ims, marks, steps=100000, lr=2.5e-3, train_encoder=True, seed=0,
                          validate=validate, validate_every=10))
    bp_time = time.perf_counter() - state["t0"] - state["val_s"]
    figures["c_speed_ratio"] = {
        "backprop_validation_seconds_excluded": round(state["val_s"], 1),
        "flim_fit_plus_head_seconds": round(flim_s, 3), "flim_dice": round(d_flim, 4),
        "backprop_reached_flim_dice": state["reached"] is not None,
        "backprop_seconds": round(bp_time, 1), "backprop_best_dice": round(state["best"], 4),
        "ratio": round(bp_time / flim_s, 1), "ratio_is_lower_bound": state["reached"] is None,
        "backprop_seconds_to_within_0.01": None if state["within_001"] is None else round(state["within_001"], 1),
        "ratio_within_0.01": None if state["within_001"] is None else round(state["within_001"] / flim_s, 1),
        "backprop_curve_seconds_dice": state["curve"][::5],
    }
    log(f"(c) speed: FLIM fit + pixel head {flim_s:.2f} s (Dice {d_flim:.3f}); backprop of the same encoder + "
        f"head on the same markers {'reached it' if state['reached'] else 'did NOT reach it'} after "
        f"{bp_time:.1f} s (best Dice {state['best']:.3f}): ratio "
        f"{'>= ' if state['reached'] is None else ''}{bp_time / flim_s:.0f}x; within 0.01 of it after "
        f"{state['within_001'] if state['within_001'] is None else round(state['within_001'], 1)} s")

    # ---------------------------------------------------------------- (d) descriptors for 100 images
    import tifffile

    vol = tifffile.imread(data / "nuclei" / "cells3d_nuclei.tif").astype(np.float32)
    hundred = list(vol)
    for i in range(10):
        im = iio.imread(em_dir / "image" / f"{i}.png").astype(np.float32)
        hundred += [im[:256, :256], im[:256, 256:], im[256:, :256], im[256:, 256:]]
    hundred = hundred[:100]
    enc_d, _ = fit_flim([imgs[chosen[0]]], [annotate(chosen[0])])
    t = time.perf_counter()
    sps = [superpixels(x, 40) for x in hundred]
    sp_s = time.perf_counter() - t
    t = time.perf_counter()
    D = run_job(compute_descriptors(enc_d, hundred, n_segments=40, superpixel_images=sps))
    desc_s = time.perf_counter() - t
    figures["d_descriptors"] = {"images": "100 x 256x256 (60 cells3d slices + 40 EM crops)",
                                "superpixel_seconds": round(sp_s, 2), "descriptor_seconds": round(desc_s, 2),
                                "total_seconds": round(sp_s + desc_s, 2), "dims": int(D.shape[1])}
    log(f"(d) descriptors of 100 images 256²: superpixels {sp_s:.1f} s + descriptors {desc_s:.1f} s "
        f"({D.shape[1]} values each)")
    figures["load_average_at_end"] = round(os.getloadavg()[0], 1)
    log(f"load average {figures['load_average_at_start']} at start, {figures['load_average_at_end']} at end "
        f"on {os.cpu_count()} cores; torch threads {figures['torch_threads']}")
    emit(figures)


if __name__ == "__main__":
    main()
