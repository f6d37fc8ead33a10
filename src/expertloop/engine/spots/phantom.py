"""A documented SIMULATION of spot data: phantom spots and a simulated expert.

There is no public MRI set with labelled transplanted-cell spots, so tests,
the demo and the benchmark plant spots into a real MRI volume (e.g. the
Colin27 T1 brain shipped as sample data) and let a *simulated* expert click
them. Nothing here is real expert behaviour; it only mimics what the L-CNN
paper reports.

Spots (:func:`make_phantom`): dark ellipsoidal Gaussian blobs,
``I <- I * (1 - c * exp(-0.5 * sum(((p - centre) / r)^2)))``, with

* radius ``r`` per axis drawn from ``radius`` (ellipsoids: each axis is the
  base radius times a factor in ``[1 - aniso, 1 + aniso]``),
* depth ``c`` drawn from ``contrast``,
* centres inside the tissue mask, at least ``min_distance`` px apart,

plus, per scan, Gaussian noise (``noise``, in units of the scaled
intensity) and a linear bias field (``bias``), so that scans differ.

Difficulty of a spot (0 = obvious, 1 = nearly invisible) combines its depth,
its size and the local texture (standard deviation of the tissue around
it): ``snr = c * local_mean * min(r, 2) / (local_std + noise)``;
``difficulty = 1 / (1 + snr / snr0)``.

Simulated expert (:func:`simulate_expert`): goes through the spots from easy
to hard (difficulty plus a little noise, as the paper observed), misses a
spot with probability ``miss * difficulty**2``, and clicks it on every slice
where it is visible (``|dz| <= r_z``), with a position jitter. Each click's
latency is ``base + span * difficulty**1.5`` seconds times log-normal noise;
with probability ``break_prob`` a break of 60..300 s is added (these are the
long latencies that :func:`~expertloop.engine.spots.latency.clean_latencies`
removes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expertloop.io.spots_clicks import rows_to_table


@dataclass
class Phantom:
    volume: np.ndarray      # float32 (Z, Y, X), tissue scaled to ~[0, 1]
    mask: np.ndarray        # bool tissue mask
    centers: np.ndarray     # (n, 3) float spot centres (z, y, x)
    radii: np.ndarray       # (n, 3) radii per axis (px)
    contrast: np.ndarray    # (n,) depth of the dip (0..1)
    difficulty: np.ndarray  # (n,) 0 = easy .. 1 = hard

    @property
    def n_spots(self) -> int:
        return len(self.centers)


def tissue_mask(volume: np.ndarray, fraction: float = 0.08) -> np.ndarray:
    """Voxels brighter than ``fraction`` of the 99.5th percentile (no air)."""
    v = np.asarray(volume, np.float32)
    hi = float(np.percentile(v, 99.5))
    return v > fraction * hi if hi > 0 else np.ones(v.shape, bool)


def make_phantom(
    volume: np.ndarray,
    n_spots: int = 150,
    *,
    seed: int | None = 0,
    radius=(0.7, 2.0),
    aniso: float = 0.3,
    contrast=(0.15, 0.7),
    noise: float = 0.02,
    bias: float = 0.1,
    min_distance: float = 6.0,
    snr0: float = 3.0,
) -> Phantom:
    """Plant ``n_spots`` dark spots into a copy of a real 3D ``volume`` (a SIMULATION).

    Parameters
    ----------
    volume : array (Z, Y, X)
        A real scan (e.g. the Colin27 MRI sample); spots go inside its tissue.
    n_spots : int
        How many spots, at least ``min_distance`` voxels apart.
    seed : int, optional
        Random seed (None: not reproducible).
    radius, aniso, contrast, noise, bias, min_distance, snr0
        Spot radii (px), anisotropy, contrast range, added noise and bias
        field, spacing, and the signal-to-noise at which a spot's
        difficulty is 0.5 (``difficulty = 1 / (1 + snr / snr0)``).

    Returns
    -------
    Phantom
        ``volume`` (float32, tissue ~[0, 1]), tissue ``mask``, spot
        ``centers`` (z, y, x), ``radii``, ``contrast`` and ``difficulty``
        (0 easy .. 1 hard).
    """
    from scipy import ndimage

    v = np.asarray(volume)
    if int(n_spots) < 1:
        raise ValueError(f"n_spots must be at least 1, got {n_spots}")
    if v.ndim != 3:
        raise ValueError(f"a spot phantom needs a 3D volume, got shape {v.shape}")
    v = v.astype(np.float32)
    if not np.all(np.isfinite(v)):
        raise ValueError("the volume contains NaN or infinite values")
    rng = np.random.default_rng(seed)
    mask = tissue_mask(v)
    hi = float(np.percentile(v[mask], 99.5)) if mask.any() else 1.0
    v = v / max(hi, 1e-6)
    inner = ndimage.binary_erosion(mask, iterations=3)
    cand = np.argwhere(inner)
    if len(cand) == 0:
        raise ValueError("the volume has no tissue to plant spots in")
    # centres: random tissue voxels, greedily kept if far enough apart
    order = rng.permutation(len(cand))[: max(20 * n_spots, 100)]
    centers: list[np.ndarray] = []
    for i in order:
        c = cand[i] + rng.uniform(-0.5, 0.5, 3)
        if all(np.sum((c - o) ** 2) >= min_distance ** 2 for o in centers[-400:]):
            centers.append(c)
            if len(centers) == n_spots:
                break
    ctr = np.array(centers, np.float64).reshape(-1, 3)
    n = len(ctr)
    base = rng.uniform(*radius, n)
    radii = base[:, None] * rng.uniform(1 - aniso, 1 + aniso, (n, 3))
    depth = rng.uniform(*contrast, n)
    # local texture of the tissue before planting
    loc_mean = ndimage.uniform_filter(v, 7)
    loc_sq = ndimage.uniform_filter(v * v, 7)
    loc_std = np.sqrt(np.maximum(loc_sq - loc_mean ** 2, 0))
    ic = np.clip(np.round(ctr).astype(int), 0, np.array(v.shape) - 1)
    lm = loc_mean[tuple(ic.T)]
    ls = loc_std[tuple(ic.T)]
    out = v.copy()
    for c, r, d in zip(ctr, radii, depth):
        half = np.ceil(3 * r).astype(int)
        lo = np.maximum(np.floor(c).astype(int) - half, 0)
        hi_ = np.minimum(np.floor(c).astype(int) + half + 1, v.shape)
        grids = np.ogrid[lo[0]:hi_[0], lo[1]:hi_[1], lo[2]:hi_[2]]
        q = sum(((g - ci) / ri) ** 2 for g, ci, ri in zip(grids, c, r))
        out[lo[0]:hi_[0], lo[1]:hi_[1], lo[2]:hi_[2]] *= (1 - d * np.exp(-0.5 * q)).astype(np.float32)
    if bias:
        zz = np.linspace(-1, 1, v.shape[0])[:, None, None]
        xx = np.linspace(-1, 1, v.shape[2])[None, None, :]
        a, b = rng.uniform(-bias, bias, 2)
        out *= (1 + a * zz + b * xx).astype(np.float32)
    if noise:
        out += rng.normal(0, noise, v.shape).astype(np.float32) * mask
    snr = depth * lm * np.minimum(radii.mean(1), 2.0) / (ls + noise + 1e-3)
    difficulty = 1.0 / (1.0 + snr / snr0)
    return Phantom(out.astype(np.float32), mask, ctr, radii, depth, difficulty)


def truth_points(ph: Phantom) -> np.ndarray:
    """Ground truth ``(k, 3)`` points: each spot's centre on every slice where it is visible."""
    pts = []
    for c, r in zip(ph.centers, ph.radii):
        zs = np.arange(int(np.ceil(c[0] - r[0])), int(np.floor(c[0] + r[0])) + 1)
        if len(zs) == 0:
            zs = np.array([int(round(c[0]))])
        zs = zs[(zs >= 0) & (zs < ph.volume.shape[0])]
        for z in zs:
            pts.append((z, round(c[1]), round(c[2])))
    return np.array(pts, np.float64).reshape(-1, 3)


def simulate_expert(
    ph: Phantom,
    *,
    seed: int | None = 0,
    annotator: str = "simulated-expert",
    base: float = 1.5,
    span: float = 14.0,
    sigma: float = 0.25,
    miss: float = 0.3,
    break_prob: float = 0.03,
    jitter: float = 0.35,
    start_time: float = 1.7e9,
) -> dict[str, np.ndarray]:
    """Click table (``expertloop.io.spots_clicks.CLICK_COLUMNS``) of a SIMULATED expert.

    The expert clicks the spots of ``ph`` from easy to hard, slower on hard
    ones, misses some (``miss``), takes breaks and clicks a little off centre.

    Parameters
    ----------
    ph : Phantom
        From :func:`make_phantom`.
    seed : int, optional
        Random seed.
    annotator : str
        Name written in the table.
    base, span, sigma, miss, break_prob, jitter, start_time
        Latency per click (``(base + span * difficulty ** 1.5)`` seconds
        times a log-normal factor of ``sigma``), the miss rate of the
        hardest spots (``miss * difficulty ** 2``), the probability of a
        1-5 minute break, click jitter (px) and the first time stamp. One
        click per slice a spot spans.

    Returns
    -------
    dict of str to array
        The click table's columns (``z, y, x, latency_s, ...``), one row per click.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(ph.difficulty + rng.normal(0, 0.08, ph.n_spots))
    session = f"sim{seed}"
    rows, t, n = [], start_time, 0
    for i in order:
        d = float(ph.difficulty[i])
        if rng.random() < miss * d * d:
            continue
        c, r = ph.centers[i], ph.radii[i]
        zs = np.arange(int(np.ceil(c[0] - r[0])), int(np.floor(c[0] + r[0])) + 1)
        if len(zs) == 0:
            zs = np.array([int(round(c[0]))])
        for z in zs:
            if not 0 <= z < ph.volume.shape[0]:
                continue
            lat = (base + span * d ** 1.5) * rng.lognormal(0, sigma)
            if rng.random() < break_prob:
                lat += rng.uniform(60, 300)
            t += lat
            n += 1
            y, x = c[1:] + rng.normal(0, jitter, 2)
            y = float(np.clip(np.round(y), 0, ph.volume.shape[1] - 1))
            x = float(np.clip(np.round(x), 0, ph.volume.shape[2] - 1))
            rows.append({
                "click_id": f"{session}-{n}", "z": float(z), "y": y, "x": x, "slice": int(z),
                "latency_s": float(lat), "first_in_session": n == 1, "timestamp": t,
                "annotator": annotator, "session_id": session,
                "contrast_lo": 0.0, "contrast_hi": 1.0, "zoom": 1.0 + 3.0 * d,
            })
    return rows_to_table(rows)
