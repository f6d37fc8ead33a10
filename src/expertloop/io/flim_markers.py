"""The LIDS FLIM marker text format (read and write).

Existing FLIM tools (LIDS, University of Campinas) store the markers of an
image as text::

    N W H                # number of marked pixels, image width, image height
    x y label_id label   # one line per marked pixel

``x`` is the column, ``y`` the row, ``label`` the marker class counted from
0 (0 = background in LIDS' examples) and ``label_id`` the id of the scribble
the pixel belongs to. For volumes the header is ``N W H D`` and each line
``x y z label_id label``.

In expertloop (and napari Labels layers) 0 means *unmarked*, so class
``label`` of the file is class ``label + 1`` of the markers array. On
writing, ``label_id`` numbers the connected scribbles of each class from 1.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class MarkerFileError(ValueError):
    """A marker file is missing or malformed."""


def write_lids_markers(path: str | os.PathLike, markers: np.ndarray) -> Path:
    """Write a markers array (0 unmarked, 1..K classes; 2D or 3D) as LIDS text."""
    from scipy import ndimage as ndi

    lab = np.asarray(markers)
    if lab.ndim not in (2, 3):
        raise ValueError(f"markers must be 2D or 3D, got shape {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError("marker classes must be >= 0")
    ids = np.zeros(lab.shape, np.int64)
    next_id = 1
    for c in np.unique(lab[lab > 0]):
        comp, n = ndi.label(lab == c, structure=np.ones((3,) * lab.ndim))
        ids[comp > 0] = comp[comp > 0] + next_id - 1
        next_id += n
    coords = np.argwhere(lab > 0)  # (n, d) in (z,) y, x order
    rows = coords[:, ::-1]  # x y (z)
    if lab.ndim == 2:
        header = f"{len(coords)} {lab.shape[1]} {lab.shape[0]}"
    else:
        header = f"{len(coords)} {lab.shape[2]} {lab.shape[1]} {lab.shape[0]}"
    cls = lab[tuple(coords.T)].astype(np.int64) - 1
    lid = ids[tuple(coords.T)]
    table = np.column_stack([rows, lid, cls])
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(header + "\n")
        np.savetxt(f, table, fmt="%d")
    os.replace(tmp, p)
    return p


def read_lids_markers(path: str | os.PathLike, *, return_ids: bool = False):
    """Read LIDS markers into a markers array (class ``label + 1``; 0 = unmarked).

    With ``return_ids`` also returns the array of scribble ids.
    """
    p = Path(path)
    if not p.exists():
        raise MarkerFileError(f"marker file {p} not found")
    lines = [ln.split() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    if not lines:
        raise MarkerFileError(f"{p}: empty marker file (expected a first line 'N W H')")
    try:
        head = [int(v) for v in lines[0]]
    except ValueError:
        raise MarkerFileError(f"{p}: first line {' '.join(lines[0])!r} is not 'N W H' (or 'N W H D')") from None
    if len(head) not in (3, 4) or min(head) < 0 or min(head[1:]) < 1:
        raise MarkerFileError(f"{p}: first line must be 'N W H' or 'N W H D', got {' '.join(lines[0])!r}")
    n, dims = head[0], head[1:]
    nd = len(dims)
    shape = tuple(reversed(dims))  # (H, W) or (D, H, W)
    from expertloop.io._safety import DeclaredSizeError, check_declared_size

    try:  # the header alone decides the allocation: a crafted one must not take all memory
        check_declared_size(((2,) if return_ids else (1,)) + shape, np.int32, p, compression="text")
    except DeclaredSizeError as exc:
        raise MarkerFileError(str(exc)) from None
    body = lines[1:]
    if len(body) != n:
        raise MarkerFileError(f"{p}: header announces {n} marked pixels but the file has {len(body)}")
    want = nd + 2
    try:
        table = np.array([[int(float(v)) for v in row] for row in body], np.int64).reshape(-1, want)
    except (ValueError, OverflowError):
        raise MarkerFileError(
            f"{p}: each line must hold {want} integers ({'x y' if nd == 2 else 'x y z'} label_id label)"
        ) from None
    if any(len(row) != want for row in body):
        raise MarkerFileError(f"{p}: each line must hold {want} integers")
    xyz, lid, cls = table[:, :nd], table[:, nd], table[:, nd + 1]
    coords = xyz[:, ::-1]
    if len(coords) and ((coords < 0).any() or (coords >= np.asarray(shape)).any()):
        raise MarkerFileError(f"{p}: a marked pixel lies outside the {'x'.join(map(str, dims))} image")
    if len(cls) and cls.min() < 0:
        raise MarkerFileError(f"{p}: labels must be >= 0")
    top = np.iinfo(np.int32).max - 1
    if len(cls) and (cls.max() > top or lid.min() < 0 or lid.max() > top):
        raise MarkerFileError(f"{p}: a label or scribble id is above {top} (or a scribble id is "
                              "negative); it would not fit the marker image")
    out = np.zeros(shape, np.int32)
    ids = np.zeros(shape, np.int32)
    out[tuple(coords.T)] = cls + 1
    ids[tuple(coords.T)] = lid
    return (out, ids) if return_ids else out
