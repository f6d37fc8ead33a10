"""Markers (scribbles) for FLIM: extraction from a labels array, simulation.

A marker image has the spatial shape of its image; 0 = unmarked, ``1..K`` =
marker classes (as a napari Labels layer painted with labels 1..K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Markers:
    """Marked pixels of one image: ``coords`` ``(n, d)`` and ``classes`` ``(n,)`` (1..K)."""

    coords: np.ndarray
    classes: np.ndarray
    shape: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.classes)


def extract_markers(labels: np.ndarray, image_shape: Sequence[int] | None = None) -> Markers:
    """Marked pixels of a labels array (0 = unmarked, 1..K = classes), 2D or 3D.

    ``image_shape`` (spatial) is checked against the labels' shape.
    """
    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise ValueError(f"markers must be a 2D or 3D labels array, got shape {lab.shape}")
    if image_shape is not None and tuple(lab.shape) != tuple(image_shape):
        raise ValueError(
            f"markers of shape {lab.shape} do not match the image of shape {tuple(image_shape)}: "
            "draw the markers on a Labels layer of the image's shape"
        )
    if not np.issubdtype(lab.dtype, np.integer):
        if lab.size and not np.all(np.equal(np.mod(lab, 1), 0)):
            raise ValueError("markers must be integer class ids")
        lab = lab.astype(np.int64)
    if lab.size and lab.min() < 0:
        raise ValueError("marker classes must be >= 0 (0 = unmarked)")
    coords = np.argwhere(lab > 0)
    return Markers(coords.astype(np.int64), lab[tuple(coords.T)].astype(np.int64), tuple(lab.shape))


def marker_classes(markers: Sequence[Markers]) -> np.ndarray:
    """Sorted classes present over several images' markers."""
    present = [np.unique(m.classes) for m in markers if len(m)]
    return np.unique(np.concatenate(present)) if present else np.zeros(0, np.int64)


def simulate_markers(
    truth: np.ndarray,
    *,
    n_objects: int = 8,
    background_ring: tuple[float, float] = (3.0, 4.0),
    max_background: int | None = 600,
    seed: int | None = 0,
) -> np.ndarray:
    """A SIMULATED annotator: thin scribbles derived from a ground-truth mask.

    Class 2 (object): the skeleton of ``n_objects`` randomly chosen objects
    (eroded by one pixel, so the strokes stay inside). Class 1 (background): a
    thin ring at ``background_ring`` pixels from those objects, thinned to at
    most ``max_background`` pixels in short runs. Not whole masks: a few
    percent of the pixels, like the strokes a person draws.

    Parameters
    ----------
    truth : array
        Instance or binary mask (0 = background), 2D or 3D.
    n_objects : int
        How many objects get a scribble.
    background_ring : (float, float)
        Distance range (px) of the background ring from those objects.
    max_background : int, optional
        At most this many background pixels (None: the whole ring).
    seed : int, optional
        Random seed.

    Returns
    -------
    array
        Markers of ``truth``'s shape: 0 unmarked, 1 background, 2 object.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import skeletonize

    gt = np.asarray(truth)
    if gt.ndim not in (2, 3):
        raise ValueError(f"truth must be 2D or 3D, got shape {gt.shape}")
    rng = np.random.default_rng(seed)
    fg = gt > 0
    if not fg.any():
        raise ValueError("the ground truth has no object to scribble on")
    inst = gt if (gt.max() > 1 and np.issubdtype(gt.dtype, np.integer)) else ndi.label(fg)[0]
    ids = np.unique(inst[inst > 0])
    chosen = rng.choice(ids, size=min(n_objects, len(ids)), replace=False)
    sel = np.isin(inst, chosen)
    inner = ndi.binary_erosion(sel, iterations=1)
    inner = np.where(inner.any(), inner, sel)
    skel = skeletonize(inner)
    out = np.zeros(gt.shape, np.uint8)
    out[skel] = 2
    dist = ndi.distance_transform_edt(~fg)
    near_sel = ndi.distance_transform_edt(~sel) <= background_ring[1] + 0.5
    ring = (dist >= background_ring[0]) & (dist < background_ring[1]) & near_sel
    if not ring.any():
        ring = dist >= background_ring[0]
    if max_background is not None and ring.sum() > max_background:
        # keep runs: order ring pixels along the raster, keep contiguous blocks
        pts = np.flatnonzero(ring.ravel())
        n_runs = max(1, max_background // 30)
        starts = rng.choice(len(pts), size=n_runs, replace=False)
        keep = np.unique(np.concatenate([np.arange(s, min(s + 30, len(pts))) for s in starts]))
        ring = np.zeros(ring.size, bool)
        ring[pts[keep]] = True
        ring = ring.reshape(gt.shape)
    out[ring & (out == 0)] = 1
    return out
