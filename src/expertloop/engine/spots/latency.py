"""Labelling latency: cleaning (as in the L-CNN paper) and GMM clustering.

* :func:`clean_latencies`: latencies above ``threshold`` (default 45 s: a
  break or a distraction) and, by default, the first click of each session
  (which has no previous click) are replaced by the mean of the remaining
  latencies.
* :func:`cluster_latencies`: a Gaussian mixture over the (cleaned) positive
  latencies, its number of components ``m`` chosen by the Akaike
  information criterion over ``m_range`` (paper: 5..9). With fewer distinct
  latencies than components the range shrinks (down to one cluster) and the
  reason is returned in ``ClusterResult.note``.
* :func:`random_clusters`: the paper's control: the same cluster sizes,
  assigned at random.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def clean_latencies(
    latency_s,
    first_in_session=None,
    *,
    threshold: float = 45.0,
    first: str = "mean",
) -> np.ndarray:
    """Cleaned copy of raw latencies (seconds).

    ``first``: ``"mean"`` replaces the first click of each session by the
    mean (its latency counts from the start of the session, not from a
    click); ``"keep"`` keeps it like any other click. Values above
    ``threshold``, NaN and negative values are replaced by the mean of the
    valid ones. If no valid latency is left (e.g. a single click), every
    value becomes ``min(value, threshold)`` so nothing is NaN.
    """
    lat = np.asarray(latency_s, dtype=np.float64).ravel()
    if threshold <= 0:
        raise ValueError("the latency threshold must be positive")
    if first not in ("mean", "keep"):
        raise ValueError("first must be 'mean' or 'keep'")
    valid = np.isfinite(lat) & (lat >= 0) & (lat <= threshold)
    if first_in_session is not None and first == "mean":
        f = np.asarray(first_in_session, bool).ravel()
        if f.shape != lat.shape:
            raise ValueError("first_in_session must have one value per latency")
        valid &= ~f
    out = lat.copy()
    if valid.any():
        out[~valid] = lat[valid].mean()
    else:
        fill = np.where(np.isfinite(lat) & (lat >= 0), np.minimum(lat, threshold), threshold)
        out[:] = fill
    return out


@dataclass
class ClusterResult:
    labels: np.ndarray            # (k,) cluster index of each latency, 0..m-1
    m: int                        # chosen number of clusters
    aic: dict = field(default_factory=dict)   # m -> AIC
    means: np.ndarray = field(default_factory=lambda: np.zeros(0))
    note: str = ""


def cluster_latencies(latency_s, m_range=(5, 9), *, seed: int | None = 0) -> ClusterResult:
    """GMM clusters of 1D latencies, ``m`` in ``m_range`` (inclusive) by AIC.

    Clusters are numbered by increasing mean latency (0 = fastest).
    """
    from sklearn.mixture import GaussianMixture

    lat = np.asarray(latency_s, dtype=np.float64).ravel()
    if lat.size == 0:
        raise ValueError("no latencies to cluster: there are no clicked spots")
    if not np.all(np.isfinite(lat)):
        raise ValueError("latencies contain NaN or infinite values; clean them first")
    lo, hi = int(m_range[0]), int(m_range[1])
    if lo < 1 or hi < lo:
        raise ValueError(f"bad cluster range {m_range}: need 1 <= min <= max")
    n_distinct = len(np.unique(np.round(lat, 6)))
    note = ""
    if n_distinct < lo:
        note = (f"only {n_distinct} distinct latencies ({lat.size} clicks) for {lo}..{hi} "
                f"clusters: using 1..{n_distinct}")
        lo, hi = 1, max(1, n_distinct)
    else:
        hi = min(hi, n_distinct)
    if n_distinct == 1:
        return ClusterResult(np.zeros(lat.size, np.int64), 1, {1: float("nan")},
                             np.array([lat.mean()]), note or "all latencies are equal: one cluster")
    x = lat[:, None]
    best, aic = None, {}
    for m in range(lo, hi + 1):
        gmm = GaussianMixture(m, random_state=seed, n_init=2, reg_covar=1e-3).fit(x)
        aic[m] = float(gmm.aic(x))
        if best is None or aic[m] < aic[best[0]]:
            best = (m, gmm)
    m, gmm = best
    raw = gmm.predict(x)
    order = np.argsort(gmm.means_.ravel())
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    labels = rank[raw]
    # drop empty components so labels are 0..m'-1
    used = np.unique(labels)
    remap = np.full(labels.max() + 1, -1)
    remap[used] = np.arange(len(used))
    labels = remap[labels].astype(np.int64)
    means = np.array([lat[labels == k].mean() for k in range(len(used))])
    return ClusterResult(labels, len(used), aic, means, note)


def random_clusters(clusters: ClusterResult, *, seed: int | None = 0) -> ClusterResult:
    """The control: the same cluster sizes, assigned to random positives."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(clusters.labels)
    return ClusterResult(labels, clusters.m, dict(clusters.aic), clusters.means.copy(),
                         "random assignment (control)")
