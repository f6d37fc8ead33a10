"""The baselines benchmarks compare the workflows with (Otsu, random-forest pixel classifier, LoG blobs)."""

import numpy as np
import pytest

from expertloop.engine.baselines import (
    RandomForestPixelClassifier,
    filter_bank,
    log_blob_candidates,
    otsu_segment,
)
from expertloop.engine.metrics import dice


def _disks(shape=(64, 64), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.zeros(shape, bool)
    for cy, cx in [(16, 16), (16, 46), (46, 30)]:
        truth |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 64
    img = truth * 1.0 + rng.normal(0, 0.25, shape)
    return img.astype(np.float32), truth


def test_otsu_segments_bright_and_dark_foreground():
    img, truth = _disks()
    assert dice(otsu_segment(img), truth) > 0.85
    assert dice(otsu_segment(-img, dark=True), truth) > 0.85
    with pytest.raises(ValueError):
        otsu_segment(np.ones((8, 8)))


def test_filter_bank_shapes_2d_3d():
    f2 = filter_bank(np.random.default_rng(0).random((20, 24)), sigmas=(1.0, 2.0))
    # raw + per sigma: gauss, grad, LoG, DoG, 2 structure-tensor, 2 Hessian eigenvalues
    assert f2.shape == (20, 24, 1 + 2 * 8)
    f3 = filter_bank(np.random.default_rng(0).random((8, 10, 12)), sigmas=(1.0,))
    assert f3.shape == (8, 10, 12, 1 + 10)
    assert np.isfinite(f3).all()


def test_random_forest_learns_from_scribbles():
    img, truth = _disks(seed=1)
    labels = np.zeros(img.shape, np.int64)
    labels[14:19, 14:19] = 2          # scribble inside one object
    labels[0:3, :] = 1                # background scribble
    rf = RandomForestPixelClassifier(sigmas=(1.0, 2.0), n_estimators=20).fit(img, labels)
    test_img, test_truth = _disks(seed=2)   # other noise, unseen objects too
    pred = rf.predict(test_img) == 2
    assert dice(pred, test_truth) > 0.85
    p = rf.predict_proba(test_img)
    assert p.shape == img.shape + (2,)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        RandomForestPixelClassifier().fit(img, np.ones_like(labels))


def test_log_blobs_find_dark_spots_in_3d_first():
    rng = np.random.default_rng(0)
    vol = 1.0 + rng.normal(0, 0.05, (24, 32, 32)).astype(np.float32)
    zz, yy, xx = np.mgrid[:24, :32, :32]
    planted = [(6, 8, 8), (12, 20, 24), (18, 10, 26)]
    for c in planted:
        vol -= 0.8 * np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * 1.5**2))
    centres, scores = log_blob_candidates(vol, dark=True)
    assert np.all(np.diff(scores) <= 0)
    top = {tuple(c) for c in centres[:3]}
    assert all(any(np.abs(np.subtract(p, t)).max() <= 1 for t in top) for p in planted)
    # bright mode does not rank the dark spots first
    bc, _ = log_blob_candidates(vol, dark=False, max_candidates=3)
    assert not any(np.abs(np.subtract(planted[0], t)).max() <= 1 for t in bc)
