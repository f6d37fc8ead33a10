"""Import and export: CSV for image labels, COCO JSON for boxes/polygons, TIFF for masks.

Coordinates: the store keeps napari's order (row, column) = (y, x); COCO uses
(x, y). Conversions happen here only.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.io._safety import resolve_inside
from expertloop.store.core import Store, StoreValidationError

CSV_COLUMNS = ("uri", "label", "annotator", "source", "time_spent")


# ------------------------------------------------------------------ CSV
def export_csv(store: Store, actor: str, collection: str, path: str | os.PathLike) -> int:
    """Write the collection's image labels as CSV (one row per annotation)."""
    recs = [r for r in store.annotations(actor, collection) if r.label is not None]
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in recs:
            w.writerow([r.uri, r.label, r.annotator, r.source,
                        "" if r.time_spent is None else repr(r.time_spent)])
    return len(recs)


def import_csv(store: Store, actor: str, collection: str, path: str | os.PathLike, *,
               add_images: bool = False) -> int:
    """Read labels from CSV (columns ``uri,label`` and optionally ``annotator``,
    ``source``, ``time_spent``). All rows are written in one transaction.

    Rows for another annotator need an admin ``actor``. ``add_images`` first
    indexes URIs that are not in the collection yet (admins only).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no CSV file at {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
        reader = csv.DictReader(f)
        missing = {"uri", "label"} - set(reader.fieldnames or ())
        if missing:
            raise StoreValidationError(
                f"{path.name}: missing column(s) {sorted(missing)}; need at least uri,label")
        rows = list(reader)
    if add_images:
        store.add_images(actor, collection, [r["uri"] for r in rows])
    items = []
    for i, r in enumerate(rows, start=2):
        if not r["uri"] or not r["label"]:
            raise StoreValidationError(f"{path.name}, line {i}: empty uri or label")
        ts = (r.get("time_spent") or "").strip()
        try:
            seconds = float(ts) if ts else None
        except ValueError:
            raise StoreValidationError(f"{path.name}, line {i}: time_spent {ts!r} is not a number") from None
        items.append(dict(image=r["uri"], label=r["label"],
                          annotator=(r.get("annotator") or "").strip() or None,
                          source=(r.get("source") or "").strip() or "manual",
                          time_spent=seconds))
    return store.annotate_many(actor, collection, items)


# ------------------------------------------------------------------ COCO
def _polygon_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def export_coco(store: Store, actor: str, collection: str, path: str | os.PathLike) -> dict:
    """Write the collection's contour annotations (polygons, boxes) as COCO JSON.

    ``images[].file_name`` is the image URI; width/height come from the image
    metadata (``width``/``height``) when known, else 0. Each annotation's
    ``attributes`` hold the annotator, the source and the napari shape type.
    """
    info = store.collection(actor, collection)
    if info.task_type != "contour":
        raise StoreValidationError(
            f"COCO export is for contour tasks; {collection!r} is a {info.task_type} task")
    cats = {name: i + 1 for i, name in enumerate(info.labels)}
    images = store.images(actor, collection)
    coco: dict = {
        "info": {"description": f"expertloop collection {info.name}",
                 "template": info.template},
        "images": [{"id": im.id, "file_name": im.uri,
                    "width": int(im.meta.get("width", 0)),
                    "height": int(im.meta.get("height", 0))} for im in images],
        "categories": [{"id": i, "name": n} for n, i in cats.items()],
        "annotations": [],
    }
    next_id = 1
    for rec in store.annotations(actor, collection):
        for sh in rec.value.get("shapes", ()):
            yx = np.asarray(sh["points"], dtype=np.float64)
            xy = yx[:, ::-1]
            x0, y0 = xy.min(axis=0)
            x1, y1 = xy.max(axis=0)
            label = sh.get("label")
            if label is not None and label not in cats:
                raise StoreValidationError(f"label {label!r} is not a category")
            coco["annotations"].append({
                "id": next_id, "image_id": rec.image_id,
                "category_id": cats.get(label, 0) if label is not None else 0,
                "segmentation": [xy.ravel().round(3).tolist()],
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "area": _polygon_area(xy), "iscrowd": 0,
                "attributes": {"annotator": rec.annotator, "source": rec.source,
                               "shape_type": sh["type"]}})
            next_id += 1
    Path(path).write_text(json.dumps(coco, indent=1), encoding="utf-8")
    return coco


ON_EXISTING = ("refuse", "replace", "merge")


def _finite(values, n_min: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise StoreValidationError(f"{what}: not a list of numbers") from exc
    if arr.size < n_min or not np.isfinite(arr).all():
        raise StoreValidationError(f"{what}: needs at least {n_min} finite numbers, got "
                                   f"{np.asarray(values).ravel().tolist()[:8]}")
    return arr


def _coco_shape(a: Any, images: dict, cats: dict, where: str) -> tuple[str, dict]:
    """(URI, shape) of one COCO annotation, every field checked."""
    if not isinstance(a, dict):
        raise StoreValidationError(f"{where} is not a JSON object")
    if "image_id" not in a:
        raise StoreValidationError(f"{where} has no image_id")
    uri = images.get(a["image_id"]) if isinstance(a["image_id"], (int, str)) else None
    if uri is None:
        raise StoreValidationError(f"{where} refers to unknown image {a['image_id']!r}")
    cat = a.get("category_id")
    if cat in (None, 0) and 0 not in cats:
        label = None  # exported without a label
    elif isinstance(cat, (int, str)) and cat in cats:
        label = cats[cat]
    else:
        raise StoreValidationError(f"{where} has unknown category_id {cat!r}; categories are "
                                   f"{sorted(cats)}")
    attrs = a.get("attributes") or {}
    if not isinstance(attrs, dict):
        raise StoreValidationError(f"{where}: attributes is not a JSON object")
    kind = attrs.get("shape_type")
    seg = a.get("segmentation") or []
    if isinstance(seg, list) and seg and isinstance(seg[0], list) and seg[0]:
        xy = _finite(seg[0], 4, f"{where} segmentation")
        if xy.size % 2:
            raise StoreValidationError(f"{where} segmentation: an odd number of coordinates")
        xy = xy.reshape(-1, 2)
        kind = kind or "polygon"
    elif a.get("bbox"):
        x, y, w, h = _finite(a["bbox"], 4, f"{where} bbox")[:4]
        if w <= 0 or h <= 0:
            raise StoreValidationError(f"{where} bbox has width {w:g} and height {h:g}; "
                                       "both must be positive")
        xy = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float64)
        kind = "rectangle"
    else:
        raise StoreValidationError(f"{where} has neither polygon nor box")
    return uri, {"type": kind, "points": xy[:, ::-1].tolist(), "label": label,
                 "source": attrs.get("source"), "annotator": attrs.get("annotator")}


def import_coco(store: Store, actor: str, collection: str, path: str | os.PathLike, *,
                add_images: bool = False, on_existing: str = "refuse") -> int:
    """Read polygons/boxes from COCO JSON into a contour collection.

    Images are matched by ``file_name`` (the URI). Annotations without an
    ``attributes.annotator`` are credited to ``actor``. Every annotation is
    checked first (known image and category, finite coordinates, boxes of
    positive size): one bad annotation writes nothing.

    An (image, annotator) pair that already has shapes is, by
    ``on_existing``: ``"refuse"`` (default: nothing is written and the
    pairs are named), ``"replace"`` (the file's shapes replace the saved
    ones) or ``"merge"`` (the file's shapes are added to the saved ones,
    identical shapes once). Returns the number of (image, annotator)
    annotations written.
    """
    if on_existing not in ON_EXISTING:
        raise ValueError(f"on_existing must be one of {ON_EXISTING}, not {on_existing!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no COCO file at {path}")
    try:
        coco = json.loads(path.read_text(encoding="utf-8"))
        images = {im["id"]: im["file_name"] for im in coco["images"]}
        cats = {c["id"]: c["name"] for c in coco["categories"]}
        anns = coco["annotations"]
        if not isinstance(anns, list):
            raise TypeError("'annotations' is not a list")
    except KeyError as exc:
        raise StoreValidationError(f"{path.name} is not COCO JSON: an entry has no {exc} key") from exc
    except (ValueError, TypeError) as exc:
        raise StoreValidationError(f"{path.name} is not COCO JSON: {exc}") from exc
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for i, a in enumerate(anns):
        where = f"{path.name}: annotation {a.get('id', i + 1) if isinstance(a, dict) else i + 1}"
        uri, shape = _coco_shape(a, images, cats, where)
        grouped[(uri, shape.pop("annotator") or actor)].append(shape)
    if add_images:
        store.add_images(actor, collection, list(images.values()))
    saved = {(r.uri, r.annotator): list(r.value.get("shapes", ()))
             for r in store.annotations(actor, collection) if r.value.get("shapes")}
    clash = [k for k in grouped if k in saved]
    if clash and on_existing == "refuse":
        few = ", ".join(f"{u} by {w} ({len(saved[(u, w)])} shapes)" for u, w in clash[:3])
        raise StoreValidationError(
            f"{len(clash)} image(s) already have shapes from the same annotator ({few}"
            f"{', ...' if len(clash) > 3 else ''}); importing would replace them. Choose "
            "on_existing='replace' or 'merge' (command line: --on-existing replace|merge)")
    items = []
    for (uri, who), shapes in grouped.items():
        src = shapes[0]["source"] or "manual"
        shapes = [{k: v for k, v in sh.items() if k != "source"} for sh in shapes]
        if on_existing == "merge" and (uri, who) in saved:
            old = saved[(uri, who)]
            shapes = old + [sh for sh in shapes if sh not in old]
        items.append(dict(image=uri, annotator=who, source=src, value={"shapes": shapes}))
    return store.annotate_many(actor, collection, items)


# ------------------------------------------------------------------ TIFF masks
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_part(text: str) -> str:
    """A file-name part with no separators, dots-only names or other surprises."""
    part = _SAFE.sub("_", text).strip("._") or "_"
    return part[:80]


def _inside(folder: Path, name: str | os.PathLike) -> Path:
    """``folder / name`` resolved; refused unless it stays inside ``folder``."""
    return resolve_inside(folder, name, error=StoreValidationError)


def export_masks(store: Store, actor: str, collection: str,
                 folder: str | os.PathLike) -> list[Path]:
    """Write each mask annotation as a TIFF label image, plus ``masks.csv`` (the index).

    File names are ``{image stem}__i{image id}__{annotator}.tif`` with every
    user-controlled part sanitised, so two images with the same file name in
    different folders never collide and no name can leave ``folder``.
    """
    from expertloop.io import write_tiff

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with open(_inside(folder, "masks.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["uri", "annotator", "file", "label_names", "source"])
        for rec in store.annotations(actor, collection):
            if not rec.mask_ref:
                continue
            mask = store.load_mask(rec)
            name = (f"{_safe_part(Path(rec.uri).stem)}__i{rec.image_id}__"
                    f"{_safe_part(rec.annotator)}.tif")
            target = _inside(folder, name)
            write_tiff(target, mask)
            written.append(target)
            w.writerow([rec.uri, rec.annotator, name,
                        json.dumps(rec.value.get("label_names", {})), rec.source])
    return written


def import_masks(store: Store, actor: str, collection: str,
                 folder: str | os.PathLike) -> int:
    """Read TIFF label images listed in ``folder/masks.csv`` back into the store.

    Masks of other annotators than ``actor`` are skipped unless the actor is
    the same user (masks are always saved as the actor's own annotation).
    Every ``file`` must lie inside ``folder`` (no absolute paths, no ``..``);
    all rows are checked and read before the first mask is saved.
    """
    import tifffile

    folder = Path(folder)
    index = folder / "masks.csv"
    if not index.exists():
        raise FileNotFoundError(f"no masks.csv in {folder}")
    todo = []
    with open(index, newline="", encoding="utf-8-sig") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            if row.get("annotator") != actor:
                continue
            try:
                path = _inside(folder, row.get("file") or "")
            except StoreValidationError as exc:
                raise StoreValidationError(f"masks.csv, line {i}: {exc}") from exc
            if not path.is_file():
                raise StoreValidationError(f"masks.csv, line {i}: no file {row['file']!r}")
            if not (row.get("uri") or "").strip():
                raise StoreValidationError(f"masks.csv, line {i}: no uri")
            try:
                names = {int(k): v for k, v in
                         json.loads(row.get("label_names") or "{}").items()}
            except (ValueError, AttributeError) as exc:
                raise StoreValidationError(
                    f"masks.csv, line {i}: label_names is not a JSON object") from exc
            todo.append((row["uri"], path, names, row.get("source") or "manual"))
    masks = [tifffile.imread(path) for _, path, _, _ in todo]
    for (uri, _, names, source), mask in zip(todo, masks):
        store.save_mask(actor, collection, uri, mask, label_names=names, source=source)
    return len(todo)
