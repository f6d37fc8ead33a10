"""Tiles with halos, for running models on images larger than memory allows.

The one block-wise mechanism of the engine: :func:`iter_tiles` cuts a plane
into tiles with halos; :func:`read_window` reads one tile's window (halo
included, reflected at the image border) from a numpy, dask or zarr array, so
a step can run over an image bigger than memory and write each tile's core
into a numpy or zarr output (e.g. ``membranes.net.predict_dense``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Tile:
    """One tile of a 2D plane.

    ``read`` is the (y, x) slice pair to read from the input, halo included;
    ``write`` where the tile's core goes in the output; ``core`` the part of
    the computed tile (in tile coordinates) that belongs to the output.
    """

    read: tuple[slice, slice]
    write: tuple[slice, slice]
    core: tuple[slice, slice]


def _axis(n: int, tile: int, halo: int) -> list[tuple[slice, slice, slice]]:
    out = []
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        r0, r1 = max(start - halo, 0), min(stop + halo, n)
        out.append((slice(r0, r1), slice(start, stop), slice(start - r0, stop - r0)))
    return out


def iter_tiles(shape: tuple[int, int], tile: int, halo: int = 0) -> Iterator[Tile]:
    """Yield the tiles covering a ``shape`` (H, W) plane in row-major order."""
    if tile <= 0 or halo < 0:
        raise ValueError(f"tile must be > 0 and halo >= 0, got tile={tile}, halo={halo}")
    h, w = int(shape[0]), int(shape[1])
    for ry, wy, cy in _axis(h, tile, halo):
        for rx, wx, cx in _axis(w, tile, halo):
            yield Tile(read=(ry, rx), write=(wy, wx), core=(cy, cx))


def count_tiles(shape: tuple[int, int], tile: int) -> int:
    """How many tiles :func:`iter_tiles` yields for ``shape``."""
    return -(-int(shape[0]) // tile) * -(-int(shape[1]) // tile)


# ------------------------------------------------------------ lazy (dask / zarr) sources
def to_numpy(a):
    """``a`` as a numpy array. A dask array is computed in this thread with
    dask's synchronous scheduler: inside a dask worker the default would send
    the lazy file reads back to the cluster, which cannot pickle them. zarr
    arrays and numpy arrays are read/returned as they are."""
    import numpy as np

    compute = getattr(a, "compute", None)
    return np.asarray(compute(scheduler="synchronous") if compute else a)


def _reflect(idx, n: int):
    """numpy ``mode="reflect"`` indices (edge not repeated) of ``idx`` into ``range(n)``."""
    import numpy as np

    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    i = np.abs(idx) % period
    return np.where(i >= n, period - i, i)


def read_window(src, starts, stops):
    """``src[starts:stops]`` (2D) where the range may reach outside the image:
    those pixels are reflected like ``np.pad(image, mode="reflect")``. Only the
    rectangle of ``src`` the window needs is read, so ``src`` may be a numpy,
    dask or zarr array bigger than memory."""
    import numpy as np

    ri = _reflect(np.arange(starts[0], stops[0]), int(src.shape[0]))
    ci = _reflect(np.arange(starts[1], stops[1]), int(src.shape[1]))
    block = to_numpy(src[int(ri.min()):int(ri.max()) + 1, int(ci.min()):int(ci.max()) + 1])
    return block[np.ix_(ri - ri.min(), ci - ci.min())]


def iter_mean_std(src, rows: int = 256):
    """Job: mean and standard deviation of a 2D array, read in ``rows`` x
    ``rows`` blocks (so memory does not grow with the image's width either;
    float64 accumulation, Chan et al.'s pairwise merge), the same for numpy,
    dask and zarr sources."""
    import numpy as np

    from expertloop.engine.jobs import Progress

    h = int(src.shape[0])
    n, mean, m2 = 0, 0.0, 0.0
    for t in iter_tiles(tuple(src.shape), rows):
        b = to_numpy(src[t.read]).astype(np.float64)
        nb = b.size
        if nb:
            mb = float(b.mean())
            m2b = float(((b - mb) ** 2).sum())
            delta = mb - mean
            tot = n + nb
            mean += delta * nb / tot
            m2 += m2b + delta * delta * n * nb / tot
            n = tot
        if t.read[1].stop == int(src.shape[1]):  # a row of blocks done
            yield Progress(t.read[0].stop, h, "image statistics")
    return mean, (m2 / n) ** 0.5 if n else 0.0


def mean_std(src, rows: int = 256) -> tuple[float, float]:
    """:func:`iter_mean_std`, run to the end."""
    from expertloop.engine.jobs import run_job

    return run_job(iter_mean_std(src, rows))
