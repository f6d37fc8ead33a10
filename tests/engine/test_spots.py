"""Engine tests of the spots workflow (latency, candidates, GMM, transfer, training)."""

from __future__ import annotations

import numpy as np
import pytest

from expertloop.engine.jobs import run_job
from expertloop.engine.spots import (
    SpotConfig,
    SpotDetector,
    build_spotnet,
    clean_latencies,
    cluster_latencies,
    detect_spots,
    extract_candidates,
    join_spots,
    label_candidates,
    make_phantom,
    prepare_scan,
    random_clusters,
    simulate_expert,
    train_spot_detector,
    transfer_conv_layers,
    truth_points,
)
from expertloop.engine.spots.evaluate import (
    evaluate_scenarios,
    leave_one_out_scenarios,
    paper_scenarios,
)
from expertloop.io import read_image

FAST = SpotConfig(source_epochs=3, target_epochs=2, max_negatives=800, channels=(4, 8, 8), m_range=(2, 4))


@pytest.fixture(scope="module")
def crop():
    from pathlib import Path

    return read_image(Path(__file__).parents[1] / "data" / "colin27_crop.nii.gz")[0].data


@pytest.fixture(scope="module")
def phantom(crop):
    return make_phantom(crop, 15, seed=1, min_distance=5)


# ------------------------------------------------------------------ latency
def test_clean_latencies_replaces_breaks_and_first_click_by_mean():
    raw = np.array([100.0, 2.0, 4.0, 300.0, 6.0, np.nan])
    first = np.array([True, False, False, False, False, False])
    out = clean_latencies(raw, first, threshold=45)
    assert np.allclose(out, [4, 2, 4, 4, 6, 4])
    kept = clean_latencies(raw, first, threshold=45, first="keep")  # 100 > 45 anyway
    assert np.allclose(kept, [4, 2, 4, 4, 6, 4])
    kept = clean_latencies([10.0, 2.0, 4.0], [True, False, False], first="keep")
    assert np.allclose(kept, [10, 2, 4])
    assert np.allclose(clean_latencies([1.0, 50.0], threshold=60), [1, 50])
    # a single (first) click: nothing valid, but no NaN either
    assert np.allclose(clean_latencies([70.0], [True]), [45.0])
    with pytest.raises(ValueError, match="threshold"):
        clean_latencies([1.0], threshold=0)


def test_gmm_chooses_number_of_clusters_by_aic():
    rng = np.random.default_rng(0)
    lat = np.concatenate([rng.normal(m, 0.3, 80) for m in (2, 8, 16)])
    res = cluster_latencies(lat, (1, 6), seed=0)
    assert res.m == 3, res.aic
    assert min(res.aic, key=res.aic.get) == 3
    # clusters are ordered by mean latency and recover the groups
    assert np.all(np.diff(res.means) > 0)
    assert (res.labels[:80] == 0).mean() > 0.95 and (res.labels[-80:] == 2).mean() > 0.95
    # the paper's range 5..9 is respected when there is enough data
    res59 = cluster_latencies(lat, (5, 9), seed=0)
    assert 5 <= res59.m <= 9 and set(res59.aic) == set(range(5, 10))


def test_gmm_degrades_gracefully_with_few_positives():
    res = cluster_latencies([3.0, 9.0, 3.0], (5, 9))
    assert res.m <= 2 and "only 2 distinct" in res.note
    one = cluster_latencies([4.0], (5, 9))
    assert one.m == 1 and list(one.labels) == [0]
    with pytest.raises(ValueError, match="no clicked spots"):
        cluster_latencies([], (5, 9))
    with pytest.raises(ValueError, match="NaN"):
        cluster_latencies([1.0, np.nan])


def test_random_clusters_keep_sizes_but_shuffle():
    rng = np.random.default_rng(0)
    res = cluster_latencies(np.concatenate([rng.normal(2, 0.2, 50), rng.normal(9, 0.2, 50)]), (2, 2))
    rnd = random_clusters(res, seed=3)
    assert np.array_equal(np.bincount(rnd.labels), np.bincount(res.labels))
    assert not np.array_equal(rnd.labels, res.labels)


# --------------------------------------------------------- candidates, tau
def test_patch_labelling_with_tau():
    centers = np.array([[5, 10, 10], [5, 11, 11], [5, 12, 12], [6, 10, 10], [9, 30, 30]])
    clicks = np.array([[5, 10, 10], [9, 31, 31]])
    y, lat, near = label_candidates(centers, clicks, latency=[2.0, 7.0])
    # distances to the nearest click: 0, sqrt2, sqrt8, 1, sqrt2
    assert y.tolist() == [1, 1, 0, 1, 1]
    assert np.allclose(lat[[0, 1, 3, 4]], [2, 2, 2, 7]) and np.isnan(lat[2])
    assert near.tolist() == [0, 0, -1, 0, 1]
    y1, _, _ = label_candidates(centers, clicks, tau=1.0)
    assert y1.tolist() == [1, 0, 0, 1, 0]
    with pytest.raises(ValueError, match="no clicks"):
        label_candidates(centers, np.zeros((0, 3)))


def test_candidates_are_darkest_pixels_of_superpixels(phantom):
    cand = run_job(extract_candidates(phantom.volume, pixels_per_superpixel=25))
    assert cand.patches.shape == (len(cand), 9, 9) and cand.patches.dtype == np.float32
    assert cand.shape == phantom.volume.shape
    # each patch is centred on the darkest pixel of a superpixel: darker than its surroundings
    centre = cand.patches[:, 4, 4]
    assert np.mean(centre < cand.patches.reshape(len(cand), -1).mean(1)) > 0.7
    # candidates only in tissue, and the planted spots are found
    assert phantom.mask[tuple(cand.centers.T)].all()
    y, _, _ = label_candidates(cand.centers, truth_points(phantom))
    assert y.sum() >= 0.6 * phantom.n_spots


def test_candidates_bad_inputs():
    vol = np.random.default_rng(0).random((4, 20, 20)).astype(np.float32)
    vol[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        run_job(extract_candidates(vol))
    with pytest.raises(ValueError, match="2D or 3D"):
        run_job(extract_candidates(np.zeros((2, 2, 8, 8))))
    with pytest.warns(UserWarning, match="single slice"):
        yy, xx = np.mgrid[:30, :30]
        cand = run_job(extract_candidates(np.sin(yy / 3.0) * np.cos(xx / 4.0) + 2, mask=None))
    assert len(cand) > 5 and (cand.centers[:, 0] == 0).all()


# ---------------------------------------------------------------- transfer
@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_transfer_copies_exactly_the_chosen_conv_layers(n):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    src = build_spotnet(6)
    tgt = build_spotnet(2)
    before = {k: v.clone() for k, v in tgt.state_dict().items()}
    names = transfer_conv_layers(src, tgt, n)
    assert names == ["conv1", "conv2", "conv3"][:n]
    for layer in ("conv1", "conv2", "conv3"):
        for p in ("weight", "bias"):
            key = f"{layer}.{p}"
            if layer in names:
                assert torch.equal(tgt.state_dict()[key], src.state_dict()[key])
            else:
                assert torch.equal(tgt.state_dict()[key], before[key])
    assert torch.equal(tgt.fc.weight, before["fc.weight"])  # FC never transferred
    assert tgt.fc.out_features == 2 and src.fc.out_features == 6


# -------------------------------------------------- simulation and training
def test_simulated_expert_latency_grows_with_difficulty(phantom):
    big = make_phantom(np.tile(phantom.volume, (3, 1, 1)) * 255, 60, seed=2, min_distance=4)
    clicks = simulate_expert(big, seed=0, break_prob=0.0)
    assert len(clicks["z"]) > 30
    pts = np.stack([clicks[c] for c in ("z", "y", "x")], 1)
    d = np.linalg.norm(pts[:, None] - big.centers[None], axis=2)
    diff = big.difficulty[d.argmin(1)]
    assert np.corrcoef(diff, clicks["latency_s"])[0, 1] > 0.6
    assert clicks["first_in_session"].sum() == 1 and clicks["first_in_session"][0]


def test_train_detect_save_load_roundtrip(phantom, tmp_path):
    clicks = simulate_expert(phantom, seed=0)
    ts = run_job(prepare_scan(phantom.volume, clicks, FAST))
    assert ts.n_positive > 5
    det = run_job(train_spot_detector(ts, SpotConfig(**{**FAST.__dict__, "target_epochs": 6, "lr": 3e-3})))
    assert det.info["method"] == "lcnn" and det.info["transfer_layers"] == 3
    assert det.info["transferred"] == ["conv1", "conv2", "conv3"] and 2 <= det.info["n_clusters"] <= 4
    found = run_job(detect_spots(det, phantom.volume))
    assert found.probability.shape == (len(found.candidates),)
    assert ((found.probability >= 0) & (found.probability <= 1)).all()
    # it learnt something: clicked spots score higher than the rest (training volume)
    y, _, _ = label_candidates(found.candidates.centers, truth_points(phantom))
    assert found.probability[y == 1].mean() > 3 * found.probability[y == 0].mean()
    # calibrated to the scan's spot fraction (balanced training would put the mean near 0.5):
    # the expected number of spot patches is of the order of the true one, not thousands
    assert det.info["prior_log_odds"] == pytest.approx(np.log(ts.n_positive / (len(ts.y) - ts.n_positive)))
    assert 0.2 * ts.n_positive < found.probability.sum() < 5 * ts.n_positive
    path = det.save(tmp_path / "spots_model")
    assert path.exists() and path.with_suffix(".json").exists()
    back = SpotDetector.load(tmp_path / "spots_model")
    again = run_job(detect_spots(back, phantom.volume, candidates=found.candidates))
    assert np.allclose(again.probability, found.probability, atol=1e-6)
    assert back.config.channels == FAST.channels and back.info["n_clusters"] == det.info["n_clusters"]


def test_calibrate_moves_balanced_probabilities_to_the_prior():
    from expertloop.engine.spots.lcnn import calibrate

    p = np.array([0.5, 0.9, 0.1, 1.0, 0.0], np.float32)
    q = calibrate(p, np.log(1 / 9))  # one spot for nine non-spots
    assert q[0] == pytest.approx(0.1, abs=1e-6)  # undecided -> the prior
    assert q[1] == pytest.approx(0.5, abs=1e-6)  # odds 9:1 times 1:9
    assert np.all(np.diff(np.argsort(q)) == np.diff(np.argsort(p)))  # ranking unchanged
    assert 0 < q[4] < q[2] < q[0] < q[1] < q[3] < 1
    assert np.array_equal(calibrate(p, None), p)  # detectors saved before calibration
    assert calibrate(np.zeros(0), 0.0).shape == (0,)


def test_controls_and_bad_training_inputs(phantom):
    clicks = simulate_expert(phantom, seed=0)
    ts = run_job(prepare_scan(phantom.volume, clicks, FAST))
    cnn = run_job(train_spot_detector(ts, SpotConfig(**{**FAST.__dict__, "method": "cnn"})))
    assert cnn.info["transferred"] == [] and "n_clusters" not in cnn.info
    t1 = run_job(train_spot_detector(ts, SpotConfig(**{**FAST.__dict__, "transfer_layers": 1})))
    assert t1.info["transferred"] == ["conv1"]
    with pytest.raises(ValueError, match="unknown method"):
        run_job(train_spot_detector(ts, SpotConfig(method="svm")))
    empty = {k: v[:0] for k, v in clicks.items()}
    with pytest.raises(ValueError, match="no clicks"):
        run_job(prepare_scan(phantom.volume, empty, FAST))
    outside = {k: v[:2].copy() for k, v in clicks.items()}
    outside["y"][0] = 999
    with pytest.raises(ValueError, match="outside the image"):
        run_job(prepare_scan(phantom.volume, outside, FAST))
    # a single click: trains (one latency cluster, nothing to transfer) and says so
    single = {k: v[:1] for k, v in clicks.items()}
    ts1 = run_job(prepare_scan(phantom.volume, single, FAST))
    assert ts1.n_positive >= 1
    det1 = run_job(train_spot_detector(ts1, FAST))
    assert det1.info["n_clusters"] == 1 and "nothing to transfer" in det1.info["cluster_note"]


def test_join_spots_in_neighbouring_slices():
    centers = np.array([[4, 10, 10], [5, 10, 11], [6, 11, 11], [5, 30, 30], [9, 10, 10], [5, 10, 20]])
    prob = np.array([0.9, 0.8, 0.7, 0.95, 0.9, 0.2])
    s = join_spots(centers, prob, threshold=0.5, join_radius=2.0)
    assert len(s["points"]) == 3  # the 3-slice spot, the single one, the far slice 9
    first = np.argmax(s["n_slices"])
    assert s["n_slices"][first] == 3 and s["n_patches"][first] == 3
    assert s["probability"][first] == pytest.approx(0.9)
    assert np.allclose(s["points"][first], np.average(centers[:3], axis=0, weights=prob[:3]))
    assert np.all(np.diff(s["probability"]) <= 0)  # sorted by probability
    assert len(join_spots(centers, prob, threshold=0.99, join_radius=2.0)["points"]) == 0


def test_evaluation_scenarios_table_and_roc(phantom, tmp_path):
    assert paper_scenarios(3) == [((0,), 1), ((0,), 2), ((1,), 0), ((1,), 2), ((2,), 0), ((2,), 1)]
    assert leave_one_out_scenarios(3)[0] == ((1, 2), 0)
    sets, truth = [], []
    for seed in (0, 1):
        ph = make_phantom(phantom.volume * 255, 15, seed=seed, min_distance=5)
        sets.append(run_job(prepare_scan(ph.volume, simulate_expert(ph, seed=seed), FAST, name=f"s{seed}")))
        truth.append(truth_points(ph))
    ev = run_job(evaluate_scenarios(sets, truth, paper_scenarios(2)[:1], ("lcnn", "cnn"), FAST))
    assert len(ev.rows) == 2 and {r["variant"] for r in ev.rows} == {"lcnn", "cnn"}
    assert all(0.0 <= r["auc"] <= 1 for r in ev.rows), ev.table()
    for fpr, tpr in ev.curves.values():
        assert fpr[0] == 0 and tpr[0] == 0 and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert ev.mean_auc()["lcnn"] == pytest.approx(np.mean(ev.auc("lcnn")))
    assert "T1->2" in ev.table() and "mean" in ev.table()
    ev.plot_roc(tmp_path / "roc.png")
    assert (tmp_path / "roc.png").stat().st_size > 1000


def test_point_detection_scores_rank_and_match_each_spot_once():
    from expertloop.engine.spots.evaluate import match_points, point_detection_scores

    centers = np.array([[10.0, 10, 10], [30, 30, 30]])
    radii = np.full((2, 3), 2.0)
    # ranked: a hit, a duplicate of the same spot, a miss far away, the second spot
    pts = np.array([[10, 11, 10], [11, 10, 10], [50, 50, 50], [30, 30, 32]])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    assert match_points(pts, scores, centers, radii).tolist() == [True, False, False, True]
    s = point_detection_scores(pts, scores, centers, radii)
    assert s["n_spots"] == 2 and s["n_detections"] == 4
    # precision 1 at recall .5, then 2/4 at recall 1 -> AP = .5 * 1 + .5 * .5
    assert abs(s["ap"] - 0.75) < 1e-9
    # best F1: first detection only (2*1*.5/1.5 = .667) vs all four (2*.5*1/1.5 = .667) -> first reached
    assert abs(s["best_f1"] - 2 / 3) < 1e-9 and s["best_f1_threshold"] == 0.9
    perfect = point_detection_scores(centers, [1.0, 0.5], centers, radii)
    assert perfect["ap"] == 1.0 and perfect["best_f1"] == 1.0
    assert point_detection_scores(np.zeros((0, 3)), [], centers, radii)["ap"] == 0.0
