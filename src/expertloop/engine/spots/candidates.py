"""Candidate regions and patches for spot detection (the paper's HCI step).

Per 2D slice (axis 0 of a ``(Z, Y, X)`` volume), SLIC superpixels
(:func:`expertloop.engine.superpixels.slic`, scikit-image) are computed
inside the tissue mask, with about ``pixels_per_superpixel`` pixels each
(default 25, i.e. ~5x5 px: small enough that one superpixel rarely holds two
spots) and ``compactness`` 0.1 on intensities scaled to [0, 1] (tissue
0.5..99.5 percentiles). Each superpixel gives one candidate: a ``z``x``z``
patch (default 9x9) centred on its darkest pixel (spots are dark), minus its
own mean and times 10 (:func:`centre_patches`).

A patch is positive when its centre lies within ``tau`` (default sqrt(2) px,
3D Euclidean distance) of a click; it then carries that click's latency.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from expertloop.engine.jobs import Job, Progress
from expertloop.engine.patches import extract_patches
from expertloop.engine.superpixels import region_extreme, slic


@dataclass
class Candidates:
    centers: np.ndarray   # (N, 3) int64 (z, y, x) of each patch centre
    patches: np.ndarray   # (N, p, p) float32 normalised patches
    shape: tuple          # (Z, Y, X) of the volume

    def __len__(self) -> int:
        return len(self.centers)


def as_volume(image) -> np.ndarray:
    """Check an image for spot detection; a 2D image becomes one slice (with a warning)."""
    v = np.asarray(image)
    if v.ndim == 2:
        warnings.warn("2D image: treated as a single slice (spots are not joined across slices)",
                      UserWarning, stacklevel=2)
        v = v[None]
    if v.ndim != 3:
        raise ValueError(f"spot detection needs a 2D or 3D grey-level image, got shape {v.shape}")
    if min(v.shape[1:]) < 3:
        raise ValueError(f"image slices {v.shape[1:]} are too small for spot detection")
    if not np.issubdtype(v.dtype, np.number):
        raise ValueError(f"image of type {v.dtype} is not numeric")
    if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
        n = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
        raise ValueError(f"the image contains {n} NaN or infinite values; fill or mask them first")
    return v


def normalise_volume(volume: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """float32 copy scaled so the tissue's 0.5..99.5 percentiles map to 0..1."""
    v = np.asarray(volume, np.float32)
    sample = v[mask] if mask is not None and mask.any() else v
    if sample.size > 2_000_000:
        sample = sample[:: sample.size // 1_000_000]
    lo, hi = np.percentile(sample, (0.5, 99.5))
    if hi <= lo:
        hi = lo + 1.0
    out = v - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


PATCH_GAIN = 10.0


def centre_patches(patches: np.ndarray) -> np.ndarray:
    """Patches minus their own mean, times ``PATCH_GAIN`` (in place when float32).

    A spot is a dip relative to its surroundings: removing each patch's mean
    removes tissue brightness (grey vs white matter, bias field) and the gain
    brings the dips of [0, 1]-scaled tissue to unit-like values.
    """
    p = np.asarray(patches, np.float32)
    p -= p.mean(axis=(-2, -1), keepdims=True)
    p *= np.float32(PATCH_GAIN)
    return p


def extract_candidates(
    image,
    *,
    patch_size: int = 9,
    pixels_per_superpixel: int = 25,
    compactness: float = 0.1,
    mask="auto",
) -> Job[Candidates]:
    """Job: one candidate patch per superpixel of every slice.

    ``mask``: ``"auto"`` (voxels brighter than 8 % of the 99.5th percentile:
    no candidates in air), ``None`` (everything) or a boolean array.
    """
    from expertloop.engine.spots.phantom import tissue_mask

    v = as_volume(image)
    if patch_size < 3 or patch_size % 2 == 0:
        raise ValueError("patch_size must be odd and at least 3")
    if pixels_per_superpixel < 2:
        raise ValueError("pixels_per_superpixel must be at least 2")
    if isinstance(mask, str):
        if mask != "auto":
            raise ValueError("mask must be 'auto', None or a boolean array")
        m = tissue_mask(v)
    elif mask is None:
        m = np.ones(v.shape, bool)
    else:
        m = np.asarray(mask, bool).reshape(v.shape) if np.size(mask) == v.size else None
        if m is None:
            raise ValueError(f"mask shape {np.shape(mask)} does not match the image {v.shape}")
    norm = normalise_volume(v, m)
    nz = v.shape[0]
    big = np.float32(np.finfo(np.float32).max)

    def one_slice(z):
        mz = m[z]
        area = int(mz.sum())
        if area < pixels_per_superpixel:
            return None
        # SLIC without a mask on the tissue's bounding box (scikit-image's
        # masked SLIC is ~7x slower); the darkest pixel is taken among
        # tissue pixels only, and superpixels without tissue are dropped
        ys, xs = np.flatnonzero(mz.any(1)), np.flatnonzero(mz.any(0))
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        crop = norm[z, y0:y1, x0:x1]
        n_seg = max(1, crop.size // pixels_per_superpixel)
        lab = slic(crop, n_seg, compactness)
        dark = np.where(mz[y0:y1, x0:x1], crop, big)
        yx = region_extreme(dark, lab, "min")
        yx = yx[yx[:, 0] >= 0]
        yx = yx[dark[yx[:, 0], yx[:, 1]] < big]
        return np.column_stack([np.full(len(yx), z), yx[:, 0] + y0, yx[:, 1] + x0])

    centers = []
    from concurrent.futures import ThreadPoolExecutor

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        step = max(workers * 2, 1)
        for start in range(0, nz, step):
            for res in pool.map(one_slice, range(start, min(nz, start + step))):
                if res is not None:
                    centers.append(res)
            done = min(nz, start + step)
            yield Progress(done, nz + 1, f"superpixels: slice {done}/{nz}")
    c = np.concatenate(centers) if centers else np.zeros((0, 3), np.int64)
    p = extract_patches(norm, c, (1, patch_size, patch_size))[:, 0].astype(np.float32, copy=False)
    p = centre_patches(p)
    yield Progress(nz + 1, nz + 1, f"{len(c)} candidate patches")
    return Candidates(c.astype(np.int64), p, tuple(v.shape))


def label_candidates(centers, clicks, *, tau: float = float(np.sqrt(2)), latency=None):
    """Labels of candidate patches from clicks.

    Returns ``(y, lat, nearest)``: ``y`` 1 where the patch centre is within
    ``tau`` of a click (3D distance), ``lat`` that click's latency (NaN for
    negatives, or everywhere when ``latency`` is None), ``nearest`` the index
    of the click (-1 for negatives).
    """
    from scipy.spatial import cKDTree

    c = np.asarray(centers, np.float64).reshape(-1, 3)
    k = np.asarray(clicks, np.float64)
    if k.size == 0:
        raise ValueError("there are no clicks: click some spots first")
    k = k.reshape(-1, 3)
    if tau < 0:
        raise ValueError("tau must be non-negative")
    dist, idx = cKDTree(k).query(c, k=1, distance_upper_bound=tau + 1e-9)
    pos = np.isfinite(dist)
    y = pos.astype(np.int64)
    nearest = np.where(pos, idx, -1)
    lat = np.full(len(c), np.nan)
    if latency is not None:
        lv = np.asarray(latency, np.float64).ravel()
        if len(lv) != len(k):
            raise ValueError("one latency per click is needed")
        lat[pos] = lv[idx[pos]]
    return y, lat, nearest
