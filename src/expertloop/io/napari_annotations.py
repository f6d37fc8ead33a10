"""npe2 readers and writers for the annotation files the workflows write.

* spot click tables (``*.clicks.csv`` from *Export CSV*, ``*.spots.jsonl``
  click logs) <-> Points layers whose ``features`` are the click columns
  (``latency_s``, ``annotator``, ...);
* COCO JSON (``*coco.json``) and Pascal VOC XML (``*.xml``) boxes ->
  Shapes rectangles with a ``type`` feature (the class name); Shapes ->
  COCO JSON;
* LIDS FLIM marker text files (``*.txt``) -> Labels (class ``label + 1``).

Each ``get_*_reader`` looks at the file's content and returns ``None`` for a
file that is not ours (a CSV without ``z, y, x``, a JSON that is not COCO, an
XML that is not VOC, a text file without the ``N W H`` header), so other
files with these extensions are left alone. Never imports torch; napari only
inside functions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.io.blood_formats import (
    AnnotationFileError,
    BoxAnnotation,
    read_coco,
    read_voc,
    write_coco,
)
from expertloop.io.flim_markers import MarkerFileError, read_lids_markers
from expertloop.io.spots_clicks import (
    FEATURE_COLUMNS,
    export_csv,
    import_csv,
    read_clicks,
    rows_to_table,
    table_points,
)


def _single(path) -> str | None:
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def _head(path: str, n: int = 4096) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(n)
    except OSError:
        return ""


def _fail(path: str, exc: Exception) -> list[tuple]:
    from napari.utils.notifications import show_error

    show_error(f"napari-expertloop could not open {Path(path).name}: {exc}")
    return [(None,)]


# ------------------------------------------------------------ spot clicks
def get_clicks_reader(path) -> Callable | None:
    """A reader for a click table CSV (header with ``z, y, x``) or a click log."""
    p = _single(path)
    if p is None:
        return None
    head = _head(p)
    if p.endswith(".jsonl"):
        first = head.splitlines()[0] if head.strip() else ""
        try:
            ok = json.loads(first).get("event") in ("session", "click", "delete")
        except (ValueError, AttributeError):
            ok = False
    else:
        cols = [c.strip() for c in head.splitlines()[0].split(",")] if head.strip() else []
        ok = {"z", "y", "x"} <= set(cols)
    return read_clicks_layer if ok else None


def read_clicks_layer(path) -> list[tuple]:
    """Click table -> one Points layer; features are the click columns.

    The points are 3D ``(z, y, x)``, or 2D ``(y, x)`` when every ``z`` is 0
    (clicks on a 2D image)."""
    p = _single(path)
    problems: list = []
    try:
        table = read_clicks(p, problems=problems) if p.endswith(".jsonl") else import_csv(p)
    except (OSError, ValueError) as exc:
        return _fail(p, exc)
    if problems:  # napari shows a warning as a notification
        lines = ", ".join(str(line) for line, _ in problems[:10])
        warnings.warn(f"{Path(p).name}: {len(problems)} unreadable record(s) skipped (line "
                      f"{lines}{', ...' if len(problems) > 10 else ''}): {problems[0][1]}", stacklevel=2)
    ndim = 2 if not np.any(table["z"]) else 3
    features = {c: table[c] for c in FEATURE_COLUMNS}
    name = Path(p).name.split(".")[0]
    return [(table_points(table, ndim), {"name": f"{name} clicks", "features": features, "size": 5}, "points")]


def write_points_clicks(path: str, data: Any, meta: dict) -> list[str]:
    """Points layer -> click table CSV (``CLICK_COLUMNS``); 2D points get ``z = 0``.

    Columns the layer's features lack are left empty (NaN)."""
    pts = np.asarray(data, np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"a click table needs 2D or 3D points, got shape {pts.shape}")
    if pts.shape[1] == 2:
        pts = np.column_stack([np.zeros(len(pts)), pts])
    feats = meta.get("features")
    cols = {} if feats is None else {c: list(feats[c]) for c in FEATURE_COLUMNS if c in feats}
    rows = []
    for i, (z, y, x) in enumerate(pts):
        row = {c: v[i] for c, v in cols.items()}
        row.update(z=z, y=y, x=x)
        if row.get("click_id") in (None, ""):
            row["click_id"] = f"point-{i + 1}"
        if row.get("slice") is None or (isinstance(row["slice"], float) and np.isnan(row["slice"])):
            row["slice"] = int(round(z))
        rows.append(row)
    return [str(export_csv(rows_to_table(rows), path))]


# ------------------------------------------------------------ COCO / VOC boxes
def _is_coco(path: str) -> bool:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "images" in doc and "annotations" in doc


def get_boxes_reader(path) -> Callable | None:
    """A reader for COCO JSON (``images`` + ``annotations``) or Pascal VOC XML."""
    p = _single(path)
    if p is None:
        return None
    if p.lower().endswith(".json"):
        return read_boxes_layers if _is_coco(p) else None
    return read_boxes_layers if "<annotation" in _head(p) else None


def _rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """``[x0, y0, x1, y1]`` boxes -> napari rectangles (4 ``(row, col)`` corners)."""
    return [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], np.float64) for x0, y0, x1, y1 in boxes]


def read_boxes_layers(path) -> list[tuple]:
    """COCO / VOC -> one Shapes layer (rectangles) per image, with features
    ``type`` (class name) and, for predictions, ``score``."""
    p = _single(path)
    try:
        anns = read_coco(p) if p.lower().endswith(".json") else [read_voc(p)]
    except AnnotationFileError as exc:
        return _fail(p, exc)
    layers = []
    for a in anns:
        feats: dict[str, Any] = {"type": np.array(a.labels, object)}
        if a.scores is not None:
            feats["score"] = np.asarray(a.scores, np.float64)
        meta = {"name": f"{Path(a.filename).stem} boxes", "shape_type": "rectangle", "features": feats,
                "edge_width": 2, "edge_color": "yellow", "face_color": "transparent"}
        layers.append((_rectangles(a.boxes), meta, "shapes"))
    return layers or [(None,)]


def write_shapes_coco(path: str, data: Any, meta: dict) -> list[str]:
    """Shapes layer -> COCO JSON: each shape's bounding box (of its last two
    axes), class from the ``type`` feature (``object`` when absent), ``score``
    kept when the layer has one. The image is named after the layer; its
    size is the boxes' extent (a Shapes layer does not know its image)."""
    shapes = [np.asarray(s, np.float64)[:, -2:] for s in data]
    boxes = np.array([[s[:, 1].min(), s[:, 0].min(), s[:, 1].max(), s[:, 0].max()] for s in shapes],
                     np.float64).reshape(-1, 4)
    feats = meta.get("features")
    labels = [str(t) for t in feats["type"]] if feats is not None and "type" in feats else ["object"] * len(boxes)
    scores = np.asarray(feats["score"], np.float64) if feats is not None and "score" in feats else None
    w, h = (int(np.ceil(boxes[:, 2].max())), int(np.ceil(boxes[:, 3].max()))) if len(boxes) else (0, 0)
    ann = BoxAnnotation(str(meta.get("name") or Path(path).stem), w, h, boxes, labels, scores)
    return [str(write_coco(path, [ann]))]


# ------------------------------------------------------------ LIDS markers
def get_markers_reader(path) -> Callable | None:
    """A reader for a LIDS marker text file (first line ``N W H`` or ``N W H D``)."""
    p = _single(path)
    if p is None:
        return None
    lines = _head(p, 256).splitlines()
    try:
        head = [int(v) for v in lines[0].split()] if lines else []
    except ValueError:
        return None
    return read_markers_layer if len(head) in (3, 4) and min(head[1:]) >= 1 else None


def read_markers_layer(path) -> list[tuple]:
    """LIDS markers -> one Labels layer (0 unmarked, class ``label + 1``)."""
    p = _single(path)
    try:
        markers = read_lids_markers(p)
    except MarkerFileError as exc:
        return _fail(p, exc)
    return [(markers, {"name": f"{Path(p).stem} markers"}, "labels")]
