"""Regions of cells: masks -> boxes, merging per-cell boxes, synthetic smears.

Boxes are ``(N, 4)`` float arrays ``[x0, y0, x1, y1]`` in pixel-edge
coordinates (0-based, ``x1``/``y1`` exclusive): a box around pixel columns
3..5 is ``x0=3, x1=6``. This is the convention of torchvision's detectors and
of COCO (``[x, y, w, h]`` = ``[x0, y0, x1 - x0, y1 - y0]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

#: the paper's six sickle-cell-disease cell types
PAPER_TYPES = (
    "Oval/Disc", "Elongated/Sickle", "Reticulocyte", "Granular", "Echinocyte", "Stomatocyte",
)
#: the paper's "abnormal" types (all but Oval/Disc)
PAPER_ABNORMAL = PAPER_TYPES[1:]


def as_boxes(boxes) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4), np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) [x0, y0, x1, y1], got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError("boxes contain NaN or infinite coordinates")
    if np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]):
        raise ValueError("boxes must satisfy x1 >= x0 and y1 >= y0")
    return b


def box_area(boxes) -> np.ndarray:
    b = as_boxes(boxes)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_iou(a, b) -> np.ndarray:
    """Pairwise IoU, ``(len(a), len(b))``."""
    a, b = as_boxes(a), as_boxes(b)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def clip_boxes(boxes, shape, *, what: str = "boxes") -> tuple[np.ndarray, np.ndarray]:
    """Clip boxes to an image of ``shape`` (H, W, ...).

    Returns ``(clipped, keep)`` where ``keep`` marks boxes with a positive
    area left; boxes that stuck out or fell outside are reported in one
    warning (never silently changed).
    """
    b = as_boxes(boxes)
    h, w = int(shape[0]), int(shape[1])
    c = b.copy()
    c[:, [0, 2]] = np.clip(c[:, [0, 2]], 0, w)
    c[:, [1, 3]] = np.clip(c[:, [1, 3]], 0, h)
    keep = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1])
    changed = np.any(c != b, axis=1)
    if changed.any():
        warnings.warn(
            f"{int(changed.sum())} of {len(b)} {what} extend outside the {w}x{h} image: "
            f"clipped to it ({int((~keep).sum())} lying fully outside were dropped)",
            UserWarning, stacklevel=2,
        )
    return c[keep], keep


@dataclass
class Regions:
    """Boxes of (single- or multi-cell) regions and what each contains."""

    boxes: np.ndarray  # (N, 4)
    members: list[list[int]] = field(default_factory=list)  # instance ids / box indices per region
    types: list[frozenset] = field(default_factory=list)  # set of types per region

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def n_cells(self) -> np.ndarray:
        return np.array([len(m) for m in self.members], int)


def mask_to_boxes(mask, *, connectivity: int = 2, min_area: int = 1,
                  cell_types: dict | Sequence | None = None) -> Regions:
    """One box per connected foreground region of ``mask`` (the paper's BFS).

    ``mask`` is a 2D binary mask or an instance label image (0 = background).
    Touching or overlapping cells form ONE connected region and so one
    (multi-cell) box. ``connectivity`` is 1 (4-neighbours) or 2 (8-neighbours).
    For an instance image, ``members`` lists the instance ids inside each
    region and, when ``cell_types`` maps instance id -> type (a dict, or a
    sequence indexed by ``id - 1``), ``types`` holds the set of their types.
    Regions smaller than ``min_area`` pixels are dropped.
    """
    from scipy import ndimage as ndi

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2D, got shape {m.shape}")
    if m.dtype.kind not in "biu":
        raise ValueError(f"mask must be boolean or integer labels, got dtype {m.dtype}")
    if connectivity not in (1, 2):
        raise ValueError("connectivity must be 1 or 2")
    fg = m > 0
    comp, n = ndi.label(fg, structure=ndi.generate_binary_structure(2, connectivity))
    boxes, members, types = [], [], []
    if n:
        areas = np.bincount(comp.ravel(), minlength=n + 1)
        for i, sl in enumerate(ndi.find_objects(comp), 1):
            if sl is None or areas[i] < min_area:
                continue
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            inside = comp[sl] == i
            ids = sorted(int(v) for v in np.unique(m[sl][inside]) if v > 0)
            if m.dtype == bool:
                ids = [1]
            members.append(ids)
            if cell_types is not None:
                types.append(frozenset(_type_of(cell_types, j) for j in ids))
    return Regions(as_boxes(boxes), members, types)


def _type_of(cell_types, instance_id: int):
    if isinstance(cell_types, dict):
        if instance_id not in cell_types:
            raise ValueError(f"instance {instance_id} has no type in cell_types")
        return cell_types[instance_id]
    if not 1 <= instance_id <= len(cell_types):
        raise ValueError(f"instance {instance_id} has no type (cell_types has {len(cell_types)})")
    return cell_types[instance_id - 1]


def merge_boxes(boxes, labels: Sequence | None = None, *, min_overlap: float = 0.0,
                gap: float = 0.0) -> Regions:
    """Merge overlapping per-cell boxes into multi-cell regions.

    For data with per-cell boxes only (no masks): two boxes are linked when
    their intersection (after growing each by ``gap`` pixels) is larger than
    ``min_overlap`` x the area of the smaller box (``min_overlap=0``: any
    overlap links them); linked groups (transitively) become one region whose
    box is the union. ``members`` lists the input indices of each region and
    ``types`` the set of their ``labels``.
    """
    b = as_boxes(boxes)
    if labels is not None and len(labels) != len(b):
        raise ValueError(f"{len(labels)} labels for {len(b)} boxes")
    if not 0 <= min_overlap < 1:
        raise ValueError("min_overlap must be in [0, 1)")
    n = len(b)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    g = b + np.array([-gap, -gap, gap, gap])
    if n:
        ix0 = np.maximum(g[:, None, 0], g[None, :, 0])
        iy0 = np.maximum(g[:, None, 1], g[None, :, 1])
        ix1 = np.minimum(g[:, None, 2], g[None, :, 2])
        iy1 = np.minimum(g[:, None, 3], g[None, :, 3])
        iw, ih = ix1 - ix0, iy1 - iy0
        inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
        area = box_area(g)
        small = np.minimum(area[:, None], area[None, :])
        linked = (iw > 0) & (ih > 0) & (inter > min_overlap * small)
        for i, j in zip(*np.nonzero(np.triu(linked, 1))):
            ri, rj = find(int(i)), find(int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    out_boxes, members, types = [], [], []
    for idx in groups.values():
        sub = b[idx]
        out_boxes.append([sub[:, 0].min(), sub[:, 1].min(), sub[:, 2].max(), sub[:, 3].max()])
        members.append(idx)
        if labels is not None:
            types.append(frozenset(labels[i] for i in idx))
    return Regions(as_boxes(out_boxes), members, types)


# ------------------------------------------------------------ synthetic smears
def _cell_shape(kind: str, r: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(mask, texture) of one cell of type ``kind`` centred in a square patch.

    ``texture`` in [0, 1] darkens the cell colour (1 = darkest).
    """
    s = int(np.ceil(r * 2.2)) | 1
    yy, xx = np.mgrid[:s, :s] - s // 2
    ang = rng.uniform(0, np.pi)
    u = xx * np.cos(ang) + yy * np.sin(ang)
    v = -xx * np.sin(ang) + yy * np.cos(ang)
    rad = np.hypot(u, v)
    theta = np.arctan2(v, u)
    tex = np.full((s, s), 0.55)
    if kind == "Elongated/Sickle":  # thin crescent
        outer = (u / r) ** 2 + (v / (0.38 * r)) ** 2 <= 1
        inner = (u / (0.9 * r)) ** 2 + ((v - 0.35 * r) / (0.35 * r)) ** 2 <= 1
        mask = outer & ~inner
        tex[:] = 0.75
    elif kind == "Echinocyte":  # spiky outline
        mask = rad <= 0.75 * r * (1 + 0.18 * np.cos(11 * theta))
        tex = 0.6 + 0.15 * np.cos(11 * theta)
    else:
        ratio = 1.25 if kind == "Oval/Disc" else 1.05
        mask = (u / (0.8 * r * ratio)) ** 2 + (v / (0.8 * r)) ** 2 <= 1
        if kind == "Oval/Disc":  # pale centre
            tex = 0.6 - 0.35 * np.exp(-(rad / (0.35 * r)) ** 2)
        elif kind == "Stomatocyte":  # slit-like pale centre
            tex = 0.6 - 0.45 * np.exp(-(u / (0.45 * r)) ** 2 - (v / (0.08 * r)) ** 2)
        elif kind == "Reticulocyte":  # dark reticulum dots
            tex = 0.5 + 0.0 * rad
            for _ in range(8):
                cy, cx = rng.normal(0, 0.3 * r, 2)
                tex += 0.45 * np.exp(-((u - cx) ** 2 + (v - cy) ** 2) / (0.06 * r) ** 2 / 2)
        elif kind == "Granular":  # fine granules, dark rim
            tex = 0.55 + 0.25 * rng.random((s, s)) + 0.2 * (rad > 0.6 * r)
        else:  # unknown type name: a plain disc with a type-dependent shade
            tex = 0.3 + 0.5 * (hash(kind) % 97) / 97.0 + 0.0 * rad
    return mask, np.clip(tex, 0, 1)


def synthetic_smear(shape=(256, 256), n_cells: int = 12, *, types: Sequence[str] = PAPER_TYPES,
                    touching: float = 0.4, radius: float = 14.0, seed: int | None = 0):
    """A documented synthetic blood smear with touching and overlapping cells.

    Returns ``(image, instances, cell_types)``: an RGB ``uint8`` image, an
    instance label image (0 = background, cell ``i`` = ``i``) and the type of
    each cell (``cell_types[i - 1]``). Each type has its own look (see
    :func:`_cell_shape`): Oval/Disc an ellipse with a pale centre,
    Elongated/Sickle a thin crescent, Reticulocyte dark dots, Granular a
    grainy texture with a dark rim, Echinocyte a spiky outline, Stomatocyte a
    slit-like pale centre. With probability ``touching`` a cell is placed
    against (and partly over) an earlier one, making multi-cell regions.
    For tests and demos only: it is not a model of real smears.
    """
    rng = np.random.default_rng(seed)
    h, w = shape
    if not types:
        raise ValueError("types must not be empty")
    img = np.zeros((h, w, 3), np.float32) + np.array([232, 222, 226], np.float32)
    inst = np.zeros((h, w), np.int32)
    centres, kinds = [], []
    for _ in range(n_cells):
        kind = types[int(rng.integers(len(types)))]
        r = radius * rng.uniform(0.85, 1.15)
        mask, tex = _cell_shape(kind, r, rng)
        s = mask.shape[0]
        placed = None
        for _ in range(50):
            if centres and rng.random() < touching:
                cy, cx = centres[int(rng.integers(len(centres)))]
                a = rng.uniform(0, 2 * np.pi)
                d = r * rng.uniform(1.2, 1.6)
                y, x = int(cy + d * np.sin(a)), int(cx + d * np.cos(a))
            else:
                y, x = int(rng.integers(s // 2, h - s // 2)), int(rng.integers(s // 2, w - s // 2))
                if any(np.hypot(y - cy, x - cx) < 2.4 * radius for cy, cx in centres):
                    continue
            if s // 2 <= y < h - s // 2 and s // 2 <= x < w - s // 2:
                placed = (y, x)
                break
        if placed is None:
            continue
        y, x = placed
        y0, x0 = y - s // 2, x - s // 2
        sl = (slice(y0, y0 + s), slice(x0, x0 + s))
        colour = np.array([205, 120, 130], np.float32) * (1.25 - 0.6 * tex[..., None])
        img[sl][mask] = colour[mask]
        inst[sl][mask] = len(kinds) + 1
        centres.append((y, x))
        kinds.append(kind)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), inst, kinds
