"""Superpixels, patches, training loop, metrics: the helpers workflows share."""

import numpy as np
import pytest

from expertloop.engine import metrics
from expertloop.engine.jobs import CancelToken, JobCancelled, run_job
from expertloop.engine.patches import extract_patches, window_grid, windows
from expertloop.engine.superpixels import (
    region_extreme,
    region_ids,
    region_means,
    slic,
    slic_per_slice,
)


# ----------------------------------------------------------- superpixels
def test_slic_2d_3d_and_mask(data_dir):
    import imageio.v3 as iio

    img = iio.imread(data_dir / "em_crop.png")
    lab = slic(img, 100)
    assert lab.shape == img.shape and lab.dtype == np.int32
    assert lab.min() == 1 and 40 < lab.max() <= 150
    mask = np.zeros(img.shape, bool)
    mask[:, :48] = True
    lab_m = slic(img, 50, mask=mask)
    assert (lab_m[:, 48:] == 0).all() and (lab_m[:, :48] > 0).all()
    vol = np.random.default_rng(0).random((6, 24, 24)).cumsum(axis=2)
    assert slic(vol, 20).shape == vol.shape
    with pytest.raises(ValueError, match="2D or 3D"):
        slic(np.zeros(5), 3)
    with pytest.raises(ValueError, match="NaN"):
        slic(np.full((8, 8), np.nan), 3)


def test_slic_per_slice_ids_unique_across_slices():
    vol = np.random.default_rng(1).random((3, 32, 32)).cumsum(axis=1)
    lab = slic_per_slice(vol, 12)
    per_slice = [set(np.unique(lab[z])) for z in range(3)]
    assert not (per_slice[0] & per_slice[1]) and not (per_slice[1] & per_slice[2])
    assert np.array_equal(region_ids(lab), np.arange(1, lab.max() + 1))


def test_region_means_and_extremes_match_a_loop():
    rng = np.random.default_rng(2)
    img = rng.random((20, 30))
    lab = rng.integers(0, 6, size=img.shape)
    lab[lab == 4] = 0  # label 4 absent
    means = region_means(np.stack([img, img**2]), lab)
    low = region_extreme(img, lab, "min")
    high = region_extreme(img, lab, "max")
    for i in (1, 2, 3, 5):
        sel = lab == i
        assert means[i - 1, 0] == pytest.approx(img[sel].mean())
        assert means[i - 1, 1] == pytest.approx((img[sel] ** 2).mean())
        assert img[tuple(low[i - 1])] == img[sel].min()
        assert img[tuple(high[i - 1])] == img[sel].max()
    assert np.isnan(means[3]).all() and (low[3] == -1).all()
    with pytest.raises(ValueError, match="does not match"):
        region_means(img, lab[:5])


# --------------------------------------------------------------- patches
def test_extract_patches_match_slicing_and_pad_at_border():
    img = np.arange(20 * 25, dtype=np.float32).reshape(20, 25)
    centers = np.array([[10, 12], [0, 0], [19, 24]])
    p = extract_patches(img, centers, 5)
    assert p.shape == (3, 5, 5)
    np.testing.assert_array_equal(p[0], img[8:13, 10:15])
    np.testing.assert_array_equal(p[1][2:, 2:], img[:3, :3])  # inside part
    np.testing.assert_array_equal(p[1][0, 2:], img[2, :3])  # reflected row
    rgb = np.random.default_rng(0).random((12, 14, 3))
    q = extract_patches(rgb, [[6, 7]], (4, 6), channel_axis=-1)
    np.testing.assert_array_equal(q[0], np.moveaxis(rgb[4:8, 4:10], -1, 0))
    vol = np.random.default_rng(0).random((5, 9, 9))
    assert extract_patches(vol, [[2, 4, 4]], 3).shape == (1, 3, 3, 3)
    assert extract_patches(img, np.zeros((0, 2), int), 3).shape == (0, 3, 3)
    with pytest.raises(ValueError, match="outside"):
        extract_patches(img, [[20, 0]], 3)
    with pytest.raises(ValueError, match="centers must be"):
        extract_patches(img, [[1, 2, 3]], 3)


def test_windows_are_a_grid_view():
    img = np.arange(10 * 13).reshape(10, 13)
    n_rows, n_cols, origins = window_grid(img.shape, 4)
    assert (n_rows, n_cols) == (2, 3) and origins.tolist()[4] == [4, 4]
    w = windows(img, 4)
    assert w.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(w[1, 2], img[4:8, 8:12])
    assert not w.flags.writeable


# --------------------------------------------------------------- metrics
def test_metrics_on_hand_computed_examples():
    pred = np.array([1, 1, 0, 0, 1])
    truth = np.array([1, 0, 0, 1, 1])
    s = metrics.binary_scores(pred, truth)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(2 / 3)
    assert metrics.dice(pred, truth) == pytest.approx(2 * 2 / 6)
    assert metrics.dice(np.zeros(3), np.zeros(3)) == 1.0
    assert metrics.accuracy(pred, truth) == pytest.approx(0.6)
    cm = metrics.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], 3)
    assert cm.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    # bins: 0.9 (correct), 0.8 (wrong), 0.7 (correct): |1-.9| + |0-.8| + |1-.7| over 3
    ece = metrics.expected_calibration_error(probs, [0, 1, 1], n_bins=10)
    assert ece == pytest.approx((0.1 + 0.8 + 0.3) / 3)
    with pytest.raises(ValueError, match="differs"):
        metrics.dice(np.zeros(3), np.zeros(4))


# -------------------------------------------------------------- training
def _toy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 0] += 3 * y
    return x, y


def test_fit_classifier_learns_and_predicts():
    from expertloop.engine.backend import get_torch
    from expertloop.engine.training import fit_classifier, predict_proba

    torch = get_torch()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, y = _toy()
    hist = run_job(fit_classifier(net, x, y, epochs=15, batch_size=32, lr=0.02,
                                  class_weight="balanced", val=_toy(100, 1)))
    assert len(hist.epochs) == 15
    assert hist.epochs[-1]["loss"] < hist.epochs[0]["loss"]
    assert hist.last["val_acc"] > 0.9
    probs = run_job(predict_proba(net, _toy(50, 2)[0]))
    assert probs.shape == (50, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    sharp = run_job(predict_proba(net, x[:5], temperature=0.5))
    assert (sharp.max(1) >= run_job(predict_proba(net, x[:5])).max(1) - 1e-6).all()


def test_training_is_cancellable_and_rejects_bad_input():
    from expertloop.engine.backend import get_torch
    from expertloop.engine.training import balanced_class_weight, fit_classifier

    torch = get_torch()
    net = torch.nn.Linear(4, 2)
    before = net.weight.detach().clone()
    x, y = _toy()
    token = CancelToken()
    seen = []

    def on_progress(rec):
        seen.append(rec)
        if len(seen) == 3:
            token.cancel()

    with pytest.raises(JobCancelled):
        run_job(fit_classifier(net, x, y, epochs=50, batch_size=8), on_progress=on_progress,
                cancel=token)
    assert len(seen) == 3 and not torch.equal(before, net.weight)
    with pytest.raises(ValueError, match="no training samples"):
        run_job(fit_classifier(net, x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"x must be"):
        run_job(fit_classifier(net, x, y[:3]))
    with pytest.raises(FloatingPointError, match="learning rate"):
        run_job(fit_classifier(net, x * 1e30, y, lr=1e30, epochs=3))
    np.testing.assert_allclose(balanced_class_weight([0, 0, 0, 1], 3), [4 / 6, 2.0, 0.0])


# ------------------------------------------------------------ embeddings
def test_embed_images_shapes_and_bad_input():
    from expertloop.engine.features import embed_images, images_to_batch

    ims = [np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8),
           np.random.default_rng(1).random((50, 20))]
    emb = run_job(embed_images(ims, "resnet18", size=32, pretrained=False, seed=0))
    assert emb.shape == (2, 512) and np.isfinite(emb).all() and emb.std() > 0
    assert images_to_batch(ims, 32).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown embedder"):
        run_job(embed_images(ims, "alexnet"))
    with pytest.raises(ValueError, match="grey or RGB"):
        run_job(embed_images([np.zeros((2, 3, 4, 5))], "resnet18", pretrained=False))

