"""Ground-truth-free image recommendation for FLIM (descriptor, distances, projection).

Descriptor of an image (paper eq. 1): for each feature map ``F`` and
superpixel ``S_i``, ``c_i`` = mean of ``F`` over ``S_i``; the vector
``c = [c_1..c_N]`` is sorted in non-increasing order (a characteristic
curve that does not depend on where the object lies); the curves of all
feature maps (and of successive filter sets) are concatenated.

SLIC does not return exactly the same number of superpixels for every image,
so to compare images :func:`descriptor_matrix` resamples every curve to
``n_points`` values by linear interpolation over the normalised rank.

Recommendation (:func:`recommend`): the distance of an image to the marked
set is its smallest L2 distance to a marked image; the ``k`` nearest
(exploitation) and ``k`` farthest (exploration) unmarked images are proposed.
:func:`project` gives the 2D t-SNE (or PCA) map the user picks from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from expertloop.engine.flim.encoder import as_channels_first, encode, upsample
from expertloop.engine.flim.params import FlimRecommend
from expertloop.engine.jobs import Job, Progress


def superpixels(image: np.ndarray, n_segments: int = FlimRecommend.n_segments, *, ndim: int = 2, compactness: float = 0.1) -> np.ndarray:
    """SLIC superpixels (2D) or supervoxels (3D) of an image (channels first allowed)."""
    from expertloop.engine.superpixels import slic

    a = as_channels_first(image, ndim)
    if a.shape[0] == 1:
        return slic(a[0], n_segments, compactness)
    return slic(a, n_segments, compactness, channel_axis=0)


def descriptor(maps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Sorted superpixel means: ``(C, n)`` for ``C`` maps and ``n`` superpixels.

    ``maps`` ``(C, *spatial)`` at the superpixels' resolution (use
    :func:`~expertloop.engine.flim.encoder.upsample` first). Row ``j`` is the
    non-increasing curve of map ``j``; ``.ravel()`` concatenates them.
    """
    from expertloop.engine.superpixels import region_means

    m = np.asarray(maps)
    lab = np.asarray(labels)
    if m.ndim == lab.ndim:
        m = m[None]
    if m.shape[1:] != lab.shape:
        raise ValueError(f"feature maps {m.shape[1:]} and superpixels {lab.shape} differ in shape")
    means = region_means(m, lab)  # (n, C), NaN for absent ids
    means = means[~np.isnan(means).any(axis=1)]
    if not len(means):
        raise ValueError("no superpixel: the superpixel image is empty")
    return -np.sort(-means.T, axis=1)


def resample_curve(curve: np.ndarray, n_points: int) -> np.ndarray:
    c = np.asarray(curve, np.float64)
    if len(c) == n_points:
        return c
    if len(c) == 1:
        return np.full(n_points, c[0])
    return np.interp(np.linspace(0, 1, n_points), np.linspace(0, 1, len(c)), c)


def descriptor_matrix(descriptors: Sequence[np.ndarray], n_points: int | None = None) -> np.ndarray:
    """Stack per-image descriptors ``(C, n_i)`` into ``(N, C * n_points)``."""
    if not len(descriptors):
        raise ValueError("no descriptors")
    chans = {d.shape[0] for d in descriptors}
    if len(chans) != 1:
        raise ValueError(f"descriptors have different numbers of feature maps {sorted(chans)}")
    n = n_points or int(np.median([d.shape[1] for d in descriptors]))
    return np.stack([np.concatenate([resample_curve(row, n) for row in d]) for d in descriptors])


def compute_descriptors(
    encoder,
    images: Sequence[np.ndarray],
    *,
    n_segments: int = FlimRecommend.n_segments,
    n_points: int | None = None,
    layers: Sequence[int] = (-1,),
    superpixel_images: Sequence[np.ndarray] | None = None,
) -> Job:
    """Job: the ``(N, D)`` descriptor matrix of ``images`` under ``encoder``.

    ``layers``: which layers' maps form the descriptor (concatenated).
    Superpixels are computed once per image unless given.
    """
    nd = encoder.spec.ndim
    n_pts = n_points or n_segments
    rows = []
    for i, img in enumerate(images):
        a = as_channels_first(img, nd)
        sp = superpixel_images[i] if superpixel_images is not None else superpixels(a, n_segments, ndim=nd)
        outs = encode(encoder, a, all_layers=True)
        parts = [descriptor(upsample(outs[li], a.shape[1:]).cpu().numpy(), sp) for li in layers]
        d = np.concatenate(parts, axis=0)
        rows.append(np.concatenate([resample_curve(r, n_pts) for r in d]))
        yield Progress(i + 1, len(images), f"descriptor of image {i + 1}/{len(images)}")
    return np.stack(rows)


@dataclass
class Recommendation:
    """Distances of every image to the marked set and the proposals."""

    distance: np.ndarray  # (N,), 0 for marked images
    marked: list[int]
    nearest: list[int] = field(default_factory=list)
    farthest: list[int] = field(default_factory=list)


def recommend(descriptors: np.ndarray, marked: Sequence[int], k: int = FlimRecommend.k) -> Recommendation:
    """The ``k`` nearest and ``k`` farthest unmarked images from the marked set (L2)."""
    X = np.asarray(descriptors, np.float64)
    if X.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got shape {X.shape}")
    n = len(X)
    marked = sorted({int(i) for i in marked})
    if not marked:
        raise ValueError("mark at least one image before asking for recommendations")
    bad = [i for i in marked if not 0 <= i < n]
    if bad:
        raise ValueError(f"marked image index(es) {bad} out of range for {n} images")
    if k < 1:
        raise ValueError("k must be at least 1")
    d = np.sqrt(((X[:, None, :] - X[None, marked, :]) ** 2).sum(-1)).min(axis=1)
    others = np.array([i for i in range(n) if i not in set(marked)], int)
    if not len(others):
        return Recommendation(d, marked)
    order = others[np.argsort(d[others], kind="stable")]
    kk = min(k, len(order))
    return Recommendation(d, marked, [int(i) for i in order[:kk]], [int(i) for i in order[::-1][:kk]])


def project(descriptors: np.ndarray, method: str = "tsne", *, perplexity: float = 10.0,
            seed: int | None = 0) -> tuple[np.ndarray, str]:
    """2D map of the descriptors: ``(points (N, 2), method used)``.

    t-SNE needs more images than its perplexity: the perplexity is lowered to
    ``(N - 1) / 3`` when needed; with fewer than 4 images PCA is used (and
    reported as such).
    """
    X = np.asarray(descriptors, np.float64)
    n = len(X)
    if n == 0:
        raise ValueError("no images to project")
    if method not in ("tsne", "pca"):
        raise ValueError(f"unknown projection {method!r}; use 'tsne' or 'pca'")
    X = (X - X.mean(0)) / (X.std(0) + 1e-12)
    if n < 4 or method == "pca":
        if n == 1:
            return np.zeros((1, 2)), "pca"
        from sklearn.decomposition import PCA

        p = PCA(n_components=min(2, n, X.shape[1]), random_state=seed).fit_transform(X)
        if p.shape[1] < 2:
            p = np.concatenate([p, np.zeros((n, 2 - p.shape[1]))], axis=1)
        return p, "pca"
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perp = float(min(perplexity, max(1.0, (n - 1) / 3)))
    # one thread: t-SNE's OpenMP threads slow down badly on a busy machine
    with threadpool_limits(limits=1):
        p = TSNE(n_components=2, perplexity=perp, random_state=seed, init="pca").fit_transform(X)
    return p, "tsne"


def heatmap(encoder, image: np.ndarray, *, layer: int = -1) -> np.ndarray:
    """Feature attention of one image: mean of a layer's maps, at image size, scaled to [0, 1]."""
    a = as_channels_first(image, encoder.spec.ndim)
    maps = encode(encoder, a, all_layers=True)[layer]
    h = upsample(maps, a.shape[1:]).cpu().numpy().mean(0)
    lo, hi = float(h.min()), float(h.max())
    return ((h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)).astype(np.float32)


def recommendation_loop(
    images: Sequence[np.ndarray],
    annotate,
    *,
    n_images: int = 5,
    first: int = 0,
    spec=None,
    choose: str = "farthest",
    k: int = FlimRecommend.k,
    n_segments: int = FlimRecommend.n_segments,
    seed: int | None = 0,
) -> Job:
    """Job: the paper's selection loop with a (simulated) user.

    Start from image ``first``; ``annotate(i)`` returns the markers of image
    ``i`` (a person, or a simulated annotator); after each marked image the
    encoder is refitted and descriptors recomputed; the next image is the
    first of the ``choose`` list: ``"farthest"``, ``"nearest"``, or
    ``"alternate"`` (farthest, nearest, farthest, ...: exploration and
    exploitation in turn).
    Returns the list of chosen indices.
    """
    from expertloop.engine.flim.encoder import fit_encoder, parse_spec
    from expertloop.engine.jobs import rescale

    if choose not in ("farthest", "nearest", "alternate"):
        raise ValueError("choose must be 'farthest', 'nearest' or 'alternate'")
    n_images = min(n_images, len(images))
    spec = parse_spec(spec)
    nd = spec.ndim
    # progress: superpixels, then one equal share per round; every sub-job is
    # nested with ``yield from``, so Cancel stops it inside a round
    rounds = max(n_images - 1, 1)
    total = 100 * (rounds + 1)
    sps = []
    for i, img in enumerate(images):
        sps.append(superpixels(img, n_segments, ndim=nd))
        yield Progress(round(100 * (i + 1) / len(images)), total, f"superpixels {i + 1}/{len(images)}")
    chosen, marks = [int(first)], {int(first): annotate(int(first))}
    while len(chosen) < n_images:
        base = 100 * len(chosen)
        enc, _ = yield from rescale(fit_encoder([images[i] for i in chosen], [marks[i] for i in chosen],
                                                spec, seed=seed), base, base + 50, total)
        desc = yield from rescale(compute_descriptors(enc, images, n_segments=n_segments, superpixel_images=sps),
                                  base + 50, base + 100, total)
        rec = recommend(desc, chosen, k)
        far = choose == "farthest" or (choose == "alternate" and len(chosen) % 2 == 1)
        nxt = (rec.farthest if far else rec.nearest)[0]
        chosen.append(nxt)
        marks[nxt] = annotate(nxt)
        yield Progress(base + 100, total, f"chose image {nxt} ({len(chosen)}/{n_images})")
    return chosen


@dataclass
class RecommendResult:
    """What :func:`recommend_images` returns (everything the dock shows)."""

    encoder: object
    descriptors: np.ndarray  # (N, D)
    recommendation: Recommendation
    points: np.ndarray  # (N, 2)
    projection: str


def recommend_images(
    images: Sequence[np.ndarray],
    markers: Sequence[np.ndarray | None],
    spec=None,
    *,
    k: int = FlimRecommend.k,
    n_segments: int = FlimRecommend.n_segments,
    projection: str = FlimRecommend.projection,
    perplexity: float = 10.0,
    seed: int | None = 0,
) -> Job:
    """Job: one round of the recommendation loop.

    ``markers[i]`` is the markers array of image ``i`` or ``None`` / all
    zeros for an unmarked image. Fits the encoder on the marked images,
    computes every image's descriptor, recommends the ``k`` nearest and
    farthest unmarked images and projects all descriptors to 2D.

    Parameters
    ----------
    images : sequence of arrays
    markers : sequence of arrays or None
        Per image; None or all zeros for an unmarked image.
    spec : optional
        The encoder architecture (see :func:`parse_spec`; e.g. ``FlimRecommend().spec()``).
    k, n_segments, projection
        See :class:`FlimRecommend` (their defaults).
    perplexity : float
        t-SNE perplexity.
    seed : int, optional

    Returns
    -------
    Job
        Returns the result: ``.recommendation`` (marked, nearest, farthest,
        distance), ``.points`` (2D) and ``.projection``.
    """
    from expertloop.engine.flim.encoder import fit_encoder, parse_spec
    from expertloop.engine.jobs import rescale

    spec = parse_spec(spec)
    if len(images) != len(markers):
        raise ValueError(f"{len(images)} images but {len(markers)} marker arrays")
    marked = [i for i, m in enumerate(markers) if m is not None and np.any(np.asarray(m) > 0)]
    if not marked:
        raise ValueError("no marked image: draw markers of at least two classes on one image first")
    n = len(images)
    enc, _ = yield from rescale(
        fit_encoder([images[i] for i in marked], [markers[i] for i in marked], spec, seed=seed), 0, 20, 100)
    desc = yield from rescale(compute_descriptors(enc, images, n_segments=n_segments), 20, 70, 100)
    rec = recommend(desc, marked, k)
    yield Progress(92, 100, f"projecting {n} images ({projection})")
    pts, how = project(desc, projection, perplexity=perplexity, seed=seed)
    yield Progress(100, 100, "recommendation ready")
    return RecommendResult(enc, desc, rec, pts, how)
