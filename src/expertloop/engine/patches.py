"""Patches and windows cut from images, vectorised (no Python loop per patch).

::

    p = extract_patches(image, centers, 9)          # (N, 9, 9) around (y, x) centres
    p = extract_patches(rgb, centers, 32, channel_axis=-1)  # (N, 3, 32, 32)
    n_rows, n_cols, origins = window_grid(image.shape, 64)  # non-overlapping windows
    w = windows(image, 64)                          # (n_rows, n_cols, 64, 64) view

Patches near the border are padded (``pad_mode``, default ``"reflect"``; any
``numpy.pad`` mode). An even ``size`` puts the centre pixel at index
``size // 2``.
"""

from __future__ import annotations

import numpy as np


def _sizes(size, ndim: int) -> tuple[int, ...]:
    sizes = (int(size),) * ndim if np.isscalar(size) else tuple(int(s) for s in size)
    if len(sizes) != ndim or min(sizes) < 1:
        raise ValueError(f"patch size {size!r} does not fit {ndim}-D centres")
    return sizes


def extract_patches(
    image: np.ndarray,
    centers: np.ndarray,
    size,
    *,
    channel_axis: int | None = None,
    pad_mode: str = "reflect",
) -> np.ndarray:
    """Cut one patch around each centre.

    ``centers`` is ``(N, d)`` integer coordinates in the image's spatial axes
    (``d`` = spatial ndim). Returns ``(N, *size)``, or ``(N, C, *size)`` when
    the image has a ``channel_axis``. The patch is a copy.
    """
    img = np.asarray(image)
    if channel_axis is not None:
        img = np.moveaxis(img, channel_axis, 0)
    spatial = img.shape[1:] if channel_axis is not None else img.shape
    c = np.asarray(centers)
    if c.size == 0:
        c = c.reshape(0, len(spatial))
    if c.ndim != 2 or c.shape[1] != len(spatial):
        raise ValueError(
            f"centers must be (N, {len(spatial)}) for an image with spatial shape {spatial}, got {c.shape}"
        )
    c = c.astype(np.int64)
    if len(c) and ((c < 0).any() or (c >= np.asarray(spatial)).any()):
        raise ValueError("a patch centre lies outside the image")
    sizes = _sizes(size, len(spatial))
    before = [s // 2 for s in sizes]
    after = [s - 1 - b for s, b in zip(sizes, before)]
    pads = list(zip(before, after))
    if channel_axis is not None:
        pads = [(0, 0)] + pads
    mode = pad_mode
    if mode == "reflect" and any(n <= max(b, a) for n, (b, a) in zip(spatial, zip(before, after))):
        mode = "symmetric"  # reflect needs the image to be larger than the pad
    padded = np.pad(img, pads, mode=mode)
    # in padded coordinates a patch starts at the centre itself (centre - before + before)
    idx = [c[:, i][:, None] + np.arange(s)[None, :] for i, s in enumerate(sizes)]
    n = len(c)
    index = []
    for i, s in enumerate(sizes):
        shape = [n] + [1] * len(sizes)
        shape[i + 1] = s
        index.append(idx[i].reshape(shape))
    if channel_axis is None:
        return padded[tuple(index)]
    out = padded[(slice(None),) + tuple(index)]  # (C, N, *size)
    return np.moveaxis(out, 0, 1)


def window_grid(shape, size: int) -> tuple[int, int, np.ndarray]:
    """Non-overlapping ``size``×``size`` windows tiling the last two axes.

    Returns ``(n_rows, n_cols, origins)`` with ``origins`` ``(n_rows*n_cols, 2)``
    top-left ``(y, x)`` in row-major order. Partial windows at the bottom and
    right border are dropped.
    """
    if size < 1:
        raise ValueError("window size must be at least 1")
    h, w = int(shape[-2]), int(shape[-1])
    n_rows, n_cols = h // size, w // size
    yy, xx = np.meshgrid(np.arange(n_rows) * size, np.arange(n_cols) * size, indexing="ij")
    return n_rows, n_cols, np.stack([yy.ravel(), xx.ravel()], axis=1)


def windows(image: np.ndarray, size: int) -> np.ndarray:
    """A read-only ``(n_rows, n_cols, size, size)`` view of a 2D image's windows."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"windows() takes a 2D image, got shape {img.shape}")
    n_rows, n_cols, _ = window_grid(img.shape, size)
    cropped = img[: n_rows * size, : n_cols * size]
    view = cropped.reshape(n_rows, size, n_cols, size).swapaxes(1, 2)
    view.flags.writeable = False
    return view
