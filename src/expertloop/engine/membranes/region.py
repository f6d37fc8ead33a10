"""Which region should the expert correct next? (the paper's equation 1)

Three pieces, each usable alone:

* :func:`window_uncertainty`: ``f(w) = mean_p |0.5 - P(membrane | p)|`` for
  every non-overlapping ``w × w`` window (low = uncertain);
  :func:`uncertainty_map` is the per-pixel ``0.5 - |0.5 - P|`` for display
  (high = uncertain);
* :func:`abundance`: hierarchical clustering (average linkage) of all
  non-overlapping windows of the target images by normalised
  cross-correlation; the abundance ``S_w`` of a window is the fraction of all
  windows that fall in its cluster;
* :func:`grow_region`: greedy contiguous growth minimising
  ``λ · mean_{w∈R} f(w) + (1 − λ) · (1 − Σ_{w∈R} S_w)`` over regions made of
  whole, 4-connected windows; :func:`propose_region` runs it over several
  images, :func:`random_region` draws a random contiguous region of a given
  size (the control).

Windows are indexed by grid cell ``(row, col)``; cell ``(r, c)`` covers
pixels ``[r*w, (r+1)*w) × [c*w, (c+1)*w)``. Partial windows at the bottom and
right borders are not part of the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertloop.engine.patches import windows

NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1))


# ----------------------------------------------------------------- uncertainty
def uncertainty_map(prob: Any) -> np.ndarray:
    """Per-pixel uncertainty ``0.5 - |0.5 - P|`` in [0, 0.5] (0.5 = undecided)."""
    p = np.asarray(prob, np.float32)
    return (0.5 - np.abs(0.5 - p)).astype(np.float32)


def window_uncertainty(prob: Any, window: int) -> np.ndarray:
    """``f(w)`` of the paper for each grid window: ``(n_rows, n_cols)`` in [0, 0.5]."""
    p = np.asarray(prob, np.float32)
    if p.ndim != 2:
        raise ValueError(f"probability map must be 2D, got shape {p.shape}")
    if min(p.shape) < window:
        raise ValueError(f"probability map {p.shape} is smaller than the {window}x{window} window")
    return np.abs(0.5 - windows(p, window)).mean(axis=(2, 3))


# ----------------------------------------------------------------- abundance
@dataclass
class Abundance:
    """Result of :func:`abundance`.

    ``scores[i]`` is the ``(n_rows, n_cols)`` map of ``S_w`` for image ``i``;
    ``clusters[i]`` the cluster id of each window (0-based);
    ``fractions[k]`` the fraction of all windows in cluster ``k`` (sums to 1).
    """

    scores: list[np.ndarray]
    clusters: list[np.ndarray]
    fractions: np.ndarray
    window: int

    @property
    def n_clusters(self) -> int:
        return len(self.fractions)


def _window_vectors(image: np.ndarray, window: int, downsample: int) -> np.ndarray:
    img = np.asarray(image, np.float32)
    if img.ndim != 2:
        raise ValueError(f"abundance takes 2D images, got shape {img.shape}")
    if min(img.shape) < window:
        raise ValueError(f"image {img.shape} is smaller than the {window}x{window} window")
    win = windows(img, window)  # (R, C, w, w)
    r, c = win.shape[:2]
    f = max(1, int(downsample))
    s = window // f
    if s < 1:
        raise ValueError(f"downsample {downsample} is larger than the window {window}")
    # block means: NCC on smoothed windows is robust to pixel noise
    v = win[:, :, : s * f, : s * f].reshape(r, c, s, f, s, f).mean(axis=(3, 5))
    v = v.reshape(r * c, s * s)
    v = v - v.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)


def ncc_matrix(vectors: np.ndarray) -> np.ndarray:
    """Pairwise normalised cross-correlation of zero-mean, unit-norm rows."""
    v = np.asarray(vectors, np.float32)
    return np.clip(v @ v.T, -1.0, 1.0)


def abundance(
    images: Sequence[Any],
    window: int,
    *,
    n_clusters: int | None = None,
    threshold: float | None = None,
    downsample: int = 4,
) -> Abundance:
    """Abundance ``S_w`` of every grid window of ``images``.

    Windows (block-mean downsampled by ``downsample``) are compared by
    normalised cross-correlation (NCC); distance ``1 - NCC``; average-linkage
    hierarchical clustering is cut either at distance ``threshold`` or into
    ``n_clusters`` clusters (default ``round(sqrt(N / 2))`` for N windows).
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if not len(images):
        raise ValueError("abundance needs at least one image")
    vecs, shapes = [], []
    for im in images:
        v = _window_vectors(im, window, downsample)
        h, w = np.asarray(im).shape[-2:]
        shapes.append((h // window, w // window))
        vecs.append(v)
    allv = np.concatenate(vecs)
    n = len(allv)
    if n == 1:
        ids = np.zeros(1, np.int64)
    else:
        dist = 1.0 - ncc_matrix(allv)
        np.fill_diagonal(dist, 0.0)
        dist = np.maximum((dist + dist.T) / 2, 0.0)
        z = linkage(squareform(dist, checks=False).astype(np.float64), method="average")
        if threshold is not None:
            ids = fcluster(z, t=float(threshold), criterion="distance")
        else:
            k = int(n_clusters) if n_clusters else max(1, int(round(np.sqrt(n / 2))))
            if k < 1:
                raise ValueError("n_clusters must be at least 1")
            ids = fcluster(z, t=min(k, n), criterion="maxclust")
        _, ids = np.unique(ids, return_inverse=True)
    counts = np.bincount(ids)
    fractions = counts / n
    scores, clusters, start = [], [], 0
    for r, c in shapes:
        part = ids[start:start + r * c].reshape(r, c)
        clusters.append(part)
        scores.append(fractions[part].astype(np.float64))
        start += r * c
    return Abundance(scores=scores, clusters=clusters, fractions=fractions, window=int(window))


def bounded_abundance(scores: Sequence[Any], max_windows: int | None) -> list[np.ndarray]:
    """Abundance maps rescaled so that no region of ``max_windows`` windows sums above 1.

    Equation 1 of the paper rewards abundance through ``1 - sum(S_w)``, which
    it treats as a term in (0, 1): with thousands of windows and many
    clusters (the paper's 40 images of 1024²) a region's ``sum(S_w)`` stays
    far below 1, so abundance only breaks ties between similarly uncertain
    regions. With a small pool (a few images, a few clusters, one of them
    holding a quarter of the windows) six windows of the largest cluster sum
    to more than 1 and the abundance term outweighs the uncertainty term:
    the search then returns common, *certain* windows (mean ``f`` ≈ 0.4 of
    0.5 on the VNC stack) whose labels teach the network nothing. Dividing
    every ``S_w`` by the sum of the ``max_windows`` largest ones keeps the
    term in [0, 1] whatever the pool size; a pool where that sum is already
    below 1 is left unchanged.
    """
    maps = [np.asarray(s, np.float64) for s in scores]
    if not maps:
        raise ValueError("need at least one abundance map")
    flat = np.sort(np.concatenate([m.ravel() for m in maps]))[::-1]
    k = len(flat) if max_windows is None else min(int(max_windows), len(flat))
    top = float(flat[:k].sum())
    scale = top if top > 1.0 else 1.0
    return [m / scale for m in maps]


# ----------------------------------------------------------------- region search
@dataclass
class Region:
    """A contiguous set of grid windows in one image."""

    image: int
    cells: list[tuple[int, int]]
    window: int
    objective: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_windows(self) -> int:
        return len(self.cells)

    @property
    def area(self) -> int:
        return len(self.cells) * self.window ** 2

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        """Boolean pixel mask of the region in an image of ``shape``."""
        return region_mask(self.cells, shape, self.window)

    def outline(self) -> list[np.ndarray]:
        return region_outline(self.cells, self.window)

    def to_dict(self) -> dict[str, Any]:
        return {"image": int(self.image), "cells": [[int(r), int(c)] for r, c in self.cells],
                "window": int(self.window), "objective": float(self.objective), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        return cls(image=int(d["image"]), cells=[(int(r), int(c)) for r, c in d["cells"]],
                   window=int(d["window"]), objective=float(d.get("objective", float("nan"))),
                   info=dict(d.get("info", {})))


def region_objective(f: np.ndarray, s: np.ndarray, cells: Sequence[tuple[int, int]], lam: float) -> float:
    """Equation 1 of the paper for the windows ``cells``."""
    if not len(cells):
        raise ValueError("a region needs at least one window")
    rr, cc = np.asarray(cells).T
    f, s = np.asarray(f, np.float64), np.asarray(s, np.float64)
    return float(lam * np.mean(f[rr, cc]) + (1 - lam) * (1 - np.sum(s[rr, cc])))


def is_contiguous(cells: Sequence[tuple[int, int]]) -> bool:
    """True when the windows form one 4-connected region."""
    cells = {tuple(map(int, c)) for c in cells}
    if not cells:
        return False
    start = next(iter(cells))
    seen, todo = {start}, [start]
    while todo:
        r, c = todo.pop()
        for dr, dc in NEIGHBOURS:
            nb = (r + dr, c + dc)
            if nb in cells and nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return len(seen) == len(cells)


def _check_maps(f, s, allowed):
    f = np.asarray(f, np.float64)
    s = np.asarray(s, np.float64)
    if f.ndim != 2 or f.shape != s.shape:
        raise ValueError(f"uncertainty {f.shape} and abundance {s.shape} must be 2D maps of the same shape")
    ok = np.ones(f.shape, bool) if allowed is None else np.asarray(allowed, bool)
    if ok.shape != f.shape:
        raise ValueError(f"allowed mask {ok.shape} differs from the window grid {f.shape}")
    return f, s, ok


def grow_region(
    f: Any,
    s: Any,
    *,
    lam: float,
    max_windows: int | None,
    allowed: Any = None,
    n_seeds: int | None,
) -> tuple[list[tuple[int, int]], float]:
    """Greedy minimisation of the region objective on one window grid.

    Starts from the ``n_seeds`` windows with the best single-window objective
    (``None`` = every allowed window), repeatedly adds the 4-neighbour that
    lowers the objective most, and stops when no neighbour lowers it or the
    region has ``max_windows`` windows. Returns ``(cells, objective)`` of the
    best region found. ``allowed`` (bool grid) excludes windows (e.g. ones
    already labelled).
    """
    if not 0 <= lam <= 1:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    if max_windows is not None and max_windows < 1:
        raise ValueError("max_windows must be at least 1")
    f, s, ok = _check_maps(f, s, allowed)
    if not ok.any():
        raise ValueError("no window is available for a region (all are excluded)")
    single = lam * f + (1 - lam) * (1 - s)
    order = np.argsort(np.where(ok, single, np.inf), axis=None, kind="stable")[: int(ok.sum())]
    if n_seeds is not None:
        order = order[: max(1, int(n_seeds))]
    rows, cols = f.shape
    best_cells, best_obj = None, np.inf
    limit = max_windows or ok.sum()
    for seed in order:
        r0, c0 = divmod(int(seed), cols)
        cells = [(r0, c0)]
        inside = np.zeros(f.shape, bool)
        inside[r0, c0] = True
        sum_f, sum_s = f[r0, c0], s[r0, c0]
        obj = single[r0, c0]
        while len(cells) < limit:
            frontier = set()
            for r, c in cells:
                for dr, dc in NEIGHBOURS:
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < rows and 0 <= cc < cols and ok[rr, cc] and not inside[rr, cc]:
                        frontier.add((rr, cc))
            if not frontier:
                break
            cand = sorted(frontier)
            fr, fc = np.asarray(cand).T
            n = len(cells) + 1
            objs = lam * (sum_f + f[fr, fc]) / n + (1 - lam) * (1 - (sum_s + s[fr, fc]))
            j = int(np.argmin(objs))
            if objs[j] >= obj:
                break
            rr, cc = cand[j]
            cells.append((rr, cc))
            inside[rr, cc] = True
            sum_f += f[rr, cc]
            sum_s += s[rr, cc]
            obj = float(objs[j])
        if obj < best_obj:
            best_cells, best_obj = cells, float(obj)
    return best_cells, float(best_obj)


def propose_region(
    f_maps: Sequence[Any],
    s_maps: Sequence[Any],
    window: int,
    *,
    lam: float,
    max_windows: int | None,
    allowed: Sequence[Any] | None = None,
    n_seeds: int | None,
) -> Region:
    """The best greedy region over several images (one map per image)."""
    if len(f_maps) != len(s_maps) or not len(f_maps):
        raise ValueError("need one uncertainty and one abundance map per image")
    best = None
    for i, (f, s) in enumerate(zip(f_maps, s_maps)):
        ok = None if allowed is None else allowed[i]
        if ok is not None and not np.asarray(ok).any():
            continue
        cells, obj = grow_region(f, s, lam=lam, max_windows=max_windows, allowed=ok, n_seeds=n_seeds)
        if best is None or obj < best.objective:
            rr, cc = np.asarray(cells).T
            best = Region(image=i, cells=cells, window=int(window), objective=obj,
                          info={"mean_f": float(np.mean(np.asarray(f)[rr, cc])),
                                "sum_s": float(np.sum(np.asarray(s)[rr, cc])), "lambda": lam,
                                "strategy": "uncertainty+abundance"})
    if best is None:
        raise ValueError("no window is available for a region in any image (all are labelled)")
    return best


def random_region(
    grid_shapes: Sequence[tuple[int, int]],
    n_windows: int,
    window: int,
    rng: np.random.Generator,
    *,
    allowed: Sequence[Any] | None = None,
) -> Region:
    """A random contiguous region of ``n_windows`` windows (fewer if the
    seed's connected free area is smaller) in a random image: the control."""
    if n_windows < 1:
        raise ValueError("n_windows must be at least 1")
    oks = [np.ones(sh, bool) if allowed is None else np.asarray(allowed[i], bool)
           for i, sh in enumerate(grid_shapes)]
    free = [i for i, ok in enumerate(oks) if ok.any()]
    if not free:
        raise ValueError("no window is available for a region in any image")
    i = int(rng.choice(free))
    ok = oks[i]
    cand = np.argwhere(ok)
    r0, c0 = cand[rng.integers(len(cand))]
    cells = [(int(r0), int(c0))]
    inside = {cells[0]}
    while len(cells) < n_windows:
        frontier = sorted({(r + dr, c + dc) for r, c in cells for dr, dc in NEIGHBOURS
                           if 0 <= r + dr < ok.shape[0] and 0 <= c + dc < ok.shape[1]
                           and ok[r + dr, c + dc] and (r + dr, c + dc) not in inside})
        if not frontier:
            break
        nb = frontier[rng.integers(len(frontier))]
        cells.append(nb)
        inside.add(nb)
    return Region(image=i, cells=cells, window=int(window), info={"strategy": "random"})


# ----------------------------------------------------------------- geometry
def region_mask(cells: Sequence[tuple[int, int]], shape: tuple[int, int], window: int) -> np.ndarray:
    m = np.zeros(tuple(shape), bool)
    for r, c in cells:
        m[r * window:(r + 1) * window, c * window:(c + 1) * window] = True
    return m


def region_outline(cells: Sequence[tuple[int, int]], window: int) -> list[np.ndarray]:
    """Closed polygons ``(K, 2)`` in (y, x) pixel coordinates tracing the
    region's boundary along window edges (one for the outside, one per hole)."""
    inside = {tuple(map(int, c)) for c in cells}
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in inside:
        # clockwise in (row, col) corner coordinates; keep an edge only where the neighbour is outside
        sides = (((r, c), (r, c + 1), (r - 1, c)), ((r, c + 1), (r + 1, c + 1), (r, c + 1)),
                 ((r + 1, c + 1), (r + 1, c), (r + 1, c)), ((r + 1, c), (r, c), (r, c - 1)))
        for a, b, nb in sides:
            if nb not in inside:
                edges.setdefault(a, []).append(b)
    polys = []
    while edges:
        start = next(iter(edges))
        loop, cur = [start], start
        while True:
            nxt = edges[cur].pop()
            if not edges[cur]:
                del edges[cur]
            if nxt == start:
                break
            loop.append(nxt)
            cur = nxt
        pts = np.asarray(loop, float)
        # drop corners where the direction does not change
        prev, nxt_ = np.roll(pts, 1, 0), np.roll(pts, -1, 0)
        a, b = pts - prev, nxt_ - pts
        turn = np.abs(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]) > 0
        polys.append(pts[turn] * window)
    return polys
