"""Superpixels and per-region statistics, shared by the workflows.

Superpixels come from SLIC (scikit-image). The same call gives supervoxels
for a 3D array, or 2D superpixels slice by slice for a volume whose slices
are annotated one at a time (MRI spots)::

    labels = slic(image, n_segments=400)            # 2D superpixels / 3D supervoxels
    labels = slic_per_slice(volume, n_segments=300) # (Z, Y, X), ids unique over slices
    means = region_means(feature_maps, labels)      # (n_labels, C)
    darkest = region_extreme(image, labels, "min")  # (n_labels, ndim) coordinates

Label ids run from 1 to ``n``; 0 marks pixels outside ``mask``. Row ``i`` of
:func:`region_means` and :func:`region_extreme` belongs to label ``i + 1``
(use :func:`region_ids` to see which ids are present).

SLIC parameters (scikit-image ``skimage.segmentation.slic``): ``n_segments``
is the approximate number of regions; ``compactness`` trades colour
similarity against spatial proximity (higher: more square regions; with
intensities scaled to [0, 1] values of 0.01 to 1 suit most microscopy and
MRI); ``sigma`` smooths before segmenting. Intensities are scaled to [0, 1]
between the 0.5th and 99.5th percentiles first, so the same compactness works
on 8-bit, 16-bit and float images.
"""

from __future__ import annotations

import numpy as np


def _scaled(image: np.ndarray, channel_axis: int | None) -> np.ndarray:
    a = np.asarray(image, dtype=np.float32)
    if a.size == 0:
        raise ValueError("cannot compute superpixels of an empty image")
    if not np.all(np.isfinite(a)):
        raise ValueError("image contains NaN or infinite values")
    lo, hi = np.percentile(a, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def slic(
    image: np.ndarray,
    n_segments: int = 400,
    compactness: float = 0.1,
    *,
    channel_axis: int | None = None,
    mask: np.ndarray | None = None,
    sigma: float = 0.0,
) -> np.ndarray:
    """SLIC superpixels of a 2D image or supervoxels of a 3D volume.

    Returns int32 labels with the image's spatial shape, ids ``1..n``
    (0 outside ``mask``). A colour image needs ``channel_axis`` (e.g. -1).
    """
    from skimage.segmentation import slic as _slic

    a = np.asarray(image)
    spatial = a.ndim - (channel_axis is not None)
    if spatial not in (2, 3):
        raise ValueError(
            f"superpixels need a 2D or 3D image (plus an optional channel axis), got shape {a.shape}"
        )
    if n_segments < 1:
        raise ValueError("n_segments must be at least 1")
    if mask is not None:
        mask = np.asarray(mask, bool)
        if not mask.any():
            return np.zeros(mask.shape, np.int32)
    labels = _slic(
        _scaled(a, channel_axis),
        n_segments=int(n_segments),
        compactness=float(compactness),
        sigma=sigma,
        channel_axis=channel_axis,
        start_label=1,
        mask=mask,
        enforce_connectivity=True,
    )
    return labels.astype(np.int32, copy=False)


def slic_per_slice(
    volume: np.ndarray,
    n_segments: int = 400,
    compactness: float = 0.1,
    *,
    mask: np.ndarray | None = None,
    sigma: float = 0.0,
) -> np.ndarray:
    """2D SLIC on every slice of a ``(Z, Y, X)`` volume; ids unique over slices.

    Intensities are scaled once for the whole volume, so regions in different
    slices are comparable.
    """
    v = np.asarray(volume)
    if v.ndim != 3:
        raise ValueError(f"slic_per_slice needs a (Z, Y, X) volume, got shape {v.shape}")
    scaled = _scaled(v, None)
    out = np.zeros(v.shape, np.int32)
    offset = 0
    for z in range(v.shape[0]):
        m = None if mask is None else np.asarray(mask[z], bool)
        if m is not None and not m.any():
            continue
        lab = slic(scaled[z], n_segments, compactness, mask=m, sigma=sigma)
        nz = lab > 0
        out[z][nz] = lab[nz] + offset
        offset = int(out[z].max()) if nz.any() else offset
    return out


def region_ids(labels: np.ndarray) -> np.ndarray:
    """Sorted label ids greater than 0 present in ``labels``."""
    ids = np.unique(np.asarray(labels))
    return ids[ids > 0]


def _check(labels: np.ndarray, spatial_shape: tuple[int, ...]) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != tuple(spatial_shape):
        raise ValueError(f"labels shape {lab.shape} does not match image shape {spatial_shape}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative")
    return lab.ravel().astype(np.int64, copy=False)


def region_means(maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean of each map over each region: ``(n, C)`` for ``n = labels.max()``.

    ``maps`` is ``(C, *spatial)`` or ``(*spatial)`` (one map). Rows of absent
    ids are NaN. Vectorised with ``bincount``: one pass per channel.
    """
    m = np.asarray(maps, dtype=np.float64)
    lab = np.asarray(labels)
    if m.shape == lab.shape:
        m = m[None]
    flat = _check(lab, m.shape[1:])
    n = int(flat.max()) if flat.size else 0
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    out = np.empty((n, m.shape[0]), np.float64)
    for c in range(m.shape[0]):
        sums = np.bincount(flat, weights=m[c].ravel(), minlength=n + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, c] = sums / counts
    return out


def region_extreme(image: np.ndarray, labels: np.ndarray, mode: str = "min") -> np.ndarray:
    """Coordinates of the darkest (``"min"``) or brightest pixel of each region.

    Returns ``(n, ndim)`` int64 for ``n = labels.max()``; rows of absent ids
    are -1. Ties go to the first pixel in C order. Vectorised (one sort).
    """
    if mode not in ("min", "max"):
        raise ValueError("mode must be 'min' or 'max'")
    img = np.asarray(image)
    flat_lab = _check(labels, img.shape)
    vals = img.ravel().astype(np.float64)
    if mode == "max":
        vals = -vals
    n = int(flat_lab.max()) if flat_lab.size else 0
    order = np.lexsort((np.arange(vals.size), vals, flat_lab))  # by label, value, index
    sorted_lab = flat_lab[order]
    first = np.flatnonzero(np.r_[True, sorted_lab[1:] != sorted_lab[:-1]])
    out = np.full((n, img.ndim), -1, np.int64)
    ids = sorted_lab[first]
    keep = ids > 0
    coords = np.stack(np.unravel_index(order[first[keep]], img.shape), axis=1)
    out[ids[keep] - 1] = coords
    return out
