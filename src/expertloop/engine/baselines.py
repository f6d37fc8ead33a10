"""Baselines a user would reach for instead of a workflow.

Benchmarks measure each workflow against these, in the same run:

* :func:`otsu_segment` -- global Otsu threshold;
* :class:`RandomForestPixelClassifier` -- the ilastik / Convpaint approach: a
  random forest on a per-pixel filter bank (:func:`filter_bank`: Gaussian,
  gradient magnitude, Laplacian of Gaussian, difference of Gaussians,
  structure-tensor and Hessian eigenvalues at several scales), trained on the
  labelled pixels only;
* :func:`log_blob_candidates` -- a multi-scale, scale-normalised Laplacian-of-
  Gaussian blob detector (dark or bright blobs, 2D or 3D) returning scored
  candidate centres, so it can be scored exactly like a learned detector.

Compute only: numpy, scipy, scikit-image, scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

DEFAULT_SIGMAS = (1.0, 2.0, 4.0)


def otsu_segment(image, *, dark: bool = False, mask=None) -> np.ndarray:
    """Foreground by a global Otsu threshold (``dark``: the foreground is darker).

    ``mask`` restricts the pixels the threshold is computed from.
    """
    from skimage.filters import threshold_otsu

    image = np.asarray(image, dtype=np.float32)
    values = image[np.asarray(mask, bool)] if mask is not None else image.ravel()
    if values.size == 0 or float(values.min()) == float(values.max()):
        raise ValueError("Otsu needs an image with more than one intensity")
    t = threshold_otsu(values)
    return image <= t if dark else image > t


def _robust(img: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``img`` minus the median of ``ref``, divided by its inter-quartile range."""
    q1, med, q3 = np.percentile(ref, [25, 50, 75])
    return (img - np.float32(med)) / np.float32(max(float(q3 - q1), 1e-6))


def _eigvals_sorted(elements, ndim: int) -> list[np.ndarray]:
    from skimage.feature import hessian_matrix_eigvals

    return list(hessian_matrix_eigvals(elements)[:ndim])


def filter_bank(image, sigmas: Sequence[float] = DEFAULT_SIGMAS) -> np.ndarray:
    """Per-pixel features of a 2D or 3D grey image, shape ``image.shape + (F,)``.

    Raw intensity, then per sigma: Gaussian, gradient magnitude, LoG, difference
    of Gaussians (sigma vs 1.6 sigma), structure-tensor eigenvalues and Hessian
    eigenvalues. The image is robust-normalised first (median / IQR) so the
    features are comparable between images.
    """
    from skimage.feature import hessian_matrix, structure_tensor

    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (2, 3):
        raise ValueError(f"filter_bank expects a 2D or 3D grey image, got shape {img.shape}")
    if not sigmas:
        raise ValueError("filter_bank needs at least one sigma")
    img = _robust(img, img)
    feats = [img]
    for s in sigmas:
        s = float(s)
        g = ndi.gaussian_filter(img, s)
        feats.append(g)
        feats.append(ndi.gaussian_gradient_magnitude(img, s))
        feats.append(s * s * ndi.gaussian_laplace(img, s))
        feats.append(g - ndi.gaussian_filter(img, 1.6 * s))
        st = structure_tensor(img, sigma=s, order="rc")
        feats.extend(_eigvals_sorted(st, img.ndim))
        hm = hessian_matrix(img, sigma=s, order="rc", use_gaussian_derivatives=False)
        feats.extend(_eigvals_sorted(hm, img.ndim))
    return np.stack(feats, axis=-1).astype(np.float32)


class RandomForestPixelClassifier:
    """Random forest on :func:`filter_bank` features (ilastik / Convpaint style).

    ``fit`` takes images and label images of the same shape where 0 means
    unlabelled and 1..K are classes; only labelled pixels are used.
    """

    def __init__(self, sigmas: Sequence[float] = DEFAULT_SIGMAS, *, n_estimators: int = 100,
                 max_depth: int | None = 16, max_samples_per_class: int = 20000,
                 seed: int = 0, n_jobs: int = 1):
        self.sigmas = tuple(float(s) for s in sigmas)
        self.n_estimators = int(n_estimators)
        self.max_depth = max_depth
        self.max_samples_per_class = int(max_samples_per_class)
        self.seed = int(seed)
        self.n_jobs = n_jobs
        self.forest = None
        self.classes_: np.ndarray | None = None

    def fit(self, images, labels) -> RandomForestPixelClassifier:
        from sklearn.ensemble import RandomForestClassifier

        if isinstance(images, np.ndarray) and isinstance(labels, np.ndarray) and images.shape == labels.shape:
            images, labels = [images], [labels]
        xs, ys = [], []
        for img, lab in zip(images, labels, strict=True):
            lab = np.asarray(lab)
            if lab.shape != np.shape(img):
                raise ValueError(f"labels shape {lab.shape} != image shape {np.shape(img)}")
            sel = lab > 0
            if not sel.any():
                continue
            xs.append(filter_bank(img, self.sigmas)[sel])
            ys.append(lab[sel].astype(np.int64))
        if not xs:
            raise ValueError("no labelled pixels to train on")
        x, y = np.concatenate(xs), np.concatenate(ys)
        if np.unique(y).size < 2:
            raise ValueError("need labelled pixels of at least two classes")
        rng = np.random.default_rng(self.seed)
        keep = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            if idx.size > self.max_samples_per_class:
                idx = rng.choice(idx, self.max_samples_per_class, replace=False)
            keep.append(idx)
        keep = np.concatenate(keep)
        self.forest = RandomForestClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                             random_state=self.seed, n_jobs=self.n_jobs)
        self.forest.fit(x[keep], y[keep])
        self.classes_ = self.forest.classes_
        return self

    def predict_proba(self, image) -> np.ndarray:
        """Class probabilities, shape ``image.shape + (K,)`` in ``classes_`` order."""
        if self.forest is None:
            raise RuntimeError("fit the classifier first")
        f = filter_bank(image, self.sigmas)
        p = self.forest.predict_proba(f.reshape(-1, f.shape[-1]))
        return p.reshape(f.shape[:-1] + (p.shape[-1],)).astype(np.float32)

    def predict(self, image) -> np.ndarray:
        """Label image (values from ``classes_``)."""
        p = self.predict_proba(image)
        return self.classes_[np.argmax(p, axis=-1)]


def log_blob_candidates(volume, sigmas: Sequence[float] = (1.0, 1.5, 2.0, 3.0), *, dark: bool = True,
                        mask=None, min_distance: int = 2, max_candidates: int | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale LoG blob candidates of a 2D/3D image: ``(centres (N, ndim), scores (N,))``.

    The response is the scale-normalised LoG ``sigma**2 * LoG`` (sign-flipped for
    bright blobs) maximised over scales; candidates are its local maxima (within
    ``mask`` if given), sorted by decreasing score. Scores are comparable across
    images because the volume is robust-normalised (median / IQR) first.
    """
    from skimage.feature import peak_local_max

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim not in (2, 3):
        raise ValueError(f"expected a 2D or 3D image, got shape {vol.shape}")
    vol = _robust(vol, vol[np.asarray(mask, bool)] if mask is not None else vol)
    sign = 1.0 if dark else -1.0
    response = np.max([sign * float(s) ** 2 * ndi.gaussian_laplace(vol, float(s)) for s in sigmas], axis=0)
    labels = None if mask is None else np.asarray(mask, bool).astype(np.int32)
    peaks = peak_local_max(response, min_distance=int(min_distance), threshold_abs=0.0,
                           labels=labels, exclude_border=False,
                           num_peaks=np.inf if max_candidates is None else int(max_candidates))
    scores = response[tuple(peaks.T)] if len(peaks) else np.zeros(0, np.float32)
    order = np.argsort(-scores, kind="stable")
    return peaks[order].astype(np.int64), scores[order].astype(np.float32)
