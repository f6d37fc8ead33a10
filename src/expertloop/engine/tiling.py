"""Tiles with halos, for running models on images larger than memory allows."""

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
