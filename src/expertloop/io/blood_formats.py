"""Box annotation formats for the blood workflow: Pascal VOC XML, COCO JSON, CSV.

Boxes in memory are ``[x0, y0, x1, y1]`` float pixel edges (0-based, end
exclusive). Pascal VOC stores 1-based inclusive pixel indices
(``xmin = x0 + 1``, ``xmax = x1``); COCO stores ``[x, y, width, height]``.
No napari, no torch.
"""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expertloop.io._safety import resolve_inside


class AnnotationFileError(ValueError):
    """An annotation file is missing, empty or malformed."""


@dataclass
class BoxAnnotation:
    """The boxes of one image (ground truth or predictions)."""

    filename: str
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    labels: list[str] = field(default_factory=list)
    scores: np.ndarray | None = None  # predictions only
    attributes: list[dict] = field(default_factory=list)  # per box (e.g. types, probabilities)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        if len(self.labels) != len(self.boxes):
            raise ValueError(f"{self.filename}: {len(self.boxes)} boxes but {len(self.labels)} labels")


def _check_box(path, what, box) -> None:
    """A box ``[x0, y0, x1, y1]`` of finite numbers with x1 >= x0 and y1 >= y0."""
    if not all(np.isfinite(box)) or box[2] < box[0] or box[3] < box[1]:
        raise AnnotationFileError(f"{path}: box {[float(v) for v in box]} of {what} is not finite "
                                  "or has a negative width or height")


def _read_text(path) -> str:
    p = Path(path)
    if not p.is_file():
        raise AnnotationFileError(f"annotation file {p} not found")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise AnnotationFileError(f"annotation file {p} is empty")
    return text


# ------------------------------------------------------------ Pascal VOC
def read_voc(path: str | os.PathLike) -> BoxAnnotation:
    """Read one Pascal VOC XML file."""
    text = _read_text(path)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise AnnotationFileError(f"{path} is not valid XML: {exc}") from exc
    if root.tag != "annotation":
        raise AnnotationFileError(f"{path} is not a Pascal VOC annotation (root <{root.tag}>)")
    size = root.find("size")
    try:
        w = int(float(size.findtext("width"))) if size is not None else 0
        h = int(float(size.findtext("height"))) if size is not None else 0
    except (TypeError, ValueError):
        w = h = 0
    boxes, labels = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if bb is None or not name:
            raise AnnotationFileError(f"{path}: an <object> lacks <name> or <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise AnnotationFileError(f"{path}: bad <bndbox> for {name!r}: {exc}") from exc
        _check_box(path, name, [xmin - 1, ymin - 1, xmax, ymax])
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(name)
    return BoxAnnotation(root.findtext("filename") or Path(path).with_suffix(".jpg").name, w, h,
                         np.asarray(boxes, np.float64).reshape(-1, 4), labels)


def voc_image_path(image_dir: str | os.PathLike, ann: BoxAnnotation) -> Path:
    """Where the image of ``ann`` is: its ``<filename>`` inside ``image_dir`` only.

    A ``<filename>`` with ``..``, an absolute path or a link leading out of
    the dataset folder raises :class:`AnnotationFileError` (a shared dataset
    must not make the trainer read the user's other files)."""
    return resolve_inside(image_dir, ann.filename, error=AnnotationFileError)


def write_voc(path: str | os.PathLike, ann: BoxAnnotation, depth: int = 3) -> Path:
    """Write one Pascal VOC XML file (coordinates rounded to whole pixels)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = ann.filename
    size = ET.SubElement(root, "size")
    for k, v in (("width", ann.width), ("height", ann.height), ("depth", depth)):
        ET.SubElement(size, k).text = str(int(v))
    for (x0, y0, x1, y1), lab in zip(ann.boxes, ann.labels):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = str(lab)
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bb, k).text = str(int(round(v)))
    ET.indent(root)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(p, encoding="utf-8", xml_declaration=False)
    return p


def read_voc_folder(folder: str | os.PathLike, split: str | None = None) -> list[BoxAnnotation]:
    """All ``Annotations/*.xml`` of a VOC-style folder (or ``*.xml`` in it).

    ``split`` names an ``ImageSets/Main/<split>.txt`` list when present."""
    root = Path(folder)
    ann_dir = root / "Annotations" if (root / "Annotations").is_dir() else root
    files = sorted(ann_dir.glob("*.xml"))
    if split is not None:
        lst = root / "ImageSets" / "Main" / f"{split}.txt"
        if not lst.is_file():
            raise AnnotationFileError(f"split list {lst} not found")
        wanted = {ln.strip() for ln in lst.read_text().splitlines() if ln.strip()}
        files = [f for f in files if f.stem in wanted]
    if not files:
        raise AnnotationFileError(f"no VOC .xml annotations in {ann_dir}")
    return [read_voc(f) for f in files]


# ------------------------------------------------------------ COCO
def write_coco(path: str | os.PathLike, anns: Sequence[BoxAnnotation],
               categories: Sequence[str] | None = None) -> Path:
    """Write images, categories and annotations as COCO JSON.

    Predictions carry ``score``; per-box ``attributes`` (e.g. cell types and
    their probabilities) go into each annotation's ``attributes``.
    """
    if categories is None:
        categories = list(dict.fromkeys(lab for a in anns for lab in a.labels))
    cat_id = {c: i + 1 for i, c in enumerate(categories)}
    images, annotations = [], []
    for i, a in enumerate(anns, 1):
        images.append({"id": i, "file_name": a.filename, "width": int(a.width), "height": int(a.height)})
        for k, ((x0, y0, x1, y1), lab) in enumerate(zip(a.boxes, a.labels)):
            if lab not in cat_id:
                raise ValueError(f"label {lab!r} is not among the categories {list(categories)}")
            rec = {"id": len(annotations) + 1, "image_id": i, "category_id": cat_id[lab],
                   "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                   "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0}
            if a.scores is not None:
                rec["score"] = float(a.scores[k])
            if a.attributes:
                rec["attributes"] = a.attributes[k]
            annotations.append(rec)
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": v, "name": k} for k, v in cat_id.items()]}
    return _replace_atomically(Path(path), json.dumps(doc, indent=1))


def read_coco(path: str | os.PathLike) -> list[BoxAnnotation]:
    """Read a COCO JSON file into one :class:`BoxAnnotation` per image."""
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationFileError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or "images" not in doc or "annotations" not in doc:
        raise AnnotationFileError(f"{path} is not a COCO file (needs 'images' and 'annotations')")
    try:
        cats = {c["id"]: c["name"] for c in doc.get("categories", [])}
        per: dict[int, list] = {im["id"]: [] for im in doc["images"]}
    except (KeyError, TypeError) as exc:
        raise AnnotationFileError(f"{path}: an image or category without id/name ({exc})") from exc
    for k, a in enumerate(doc["annotations"], 1):
        if not isinstance(a, dict):
            raise AnnotationFileError(f"{path}: annotation {k} is not a JSON object")
        if a.get("image_id") not in per:
            raise AnnotationFileError(f"{path}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}")
        if a.get("category_id") not in cats:
            raise AnnotationFileError(f"{path}: annotation {a.get('id')} has unknown category {a.get('category_id')}")
        bb = a.get("bbox")
        try:
            if not isinstance(bb, list) or len(bb) != 4 or any(isinstance(v, (str, bool)) for v in bb):
                raise ValueError(f"bbox {bb!r}")
            x, y, w, h = (float(v) for v in bb)
        except (TypeError, ValueError) as exc:
            raise AnnotationFileError(f"{path}: annotation {a.get('id')} needs a bbox [x, y, w, h]") from exc
        _check_box(path, f"annotation {a.get('id')}", [x, y, x + w, y + h])
        per[a["image_id"]].append(a)
    out = []
    for im in doc["images"]:
        recs = per[im["id"]]
        boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in recs]
        has_score = bool(recs) and all("score" in a for a in recs)
        try:
            width, height = int(im.get("width", 0)), int(im.get("height", 0))
        except (TypeError, ValueError) as exc:
            raise AnnotationFileError(f"{path}: image {im['id']} has a bad width/height") from exc
        out.append(BoxAnnotation(
            im.get("file_name", str(im["id"])), width, height,
            np.asarray(boxes, np.float64).reshape(-1, 4), [cats[a["category_id"]] for a in recs],
            np.asarray([a["score"] for a in recs]) if has_score else None,
            [a.get("attributes", {}) for a in recs] if any("attributes" in a for a in recs) else [],
        ))
    return out


# ------------------------------------------------------------ CSV
def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> Path:
    """Write rows (dicts with the same keys) as CSV; floats with 6 significant digits."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r)) if rows else ["image"]
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})
    return p


# ------------------------------------------------------------ predictions
def results_to_rows(results, score_threshold: float = 0.5, type_threshold: float = 0.5,
                    abnormal_threshold: float | None = None) -> list[dict]:
    """One CSV row per visible region of each ``BloodResult`` (image, box, score,
    class, predicted types, probability per type, abnormal score)."""
    rows = []
    for res in results:
        tab = res.table(score_threshold, type_threshold, abnormal_threshold)
        for i in range(len(tab["region"])):
            row = {"image": res.name}
            for k, v in tab.items():
                x = v[i]
                row[k] = x.item() if isinstance(x, np.generic) else x
            rows.append(row)
    return rows


def results_to_annotations(results, score_threshold: float = 0.5, type_threshold: float = 0.5,
                           abnormal_threshold: float | None = None) -> list[BoxAnnotation]:
    """``BloodResult`` s -> :class:`BoxAnnotation` s (for :func:`write_coco`), with the
    types, per-type probabilities (trained heads only) and abnormal score of each box as attributes."""
    out = []
    for res in results:
        m = res.visible(score_threshold)
        types = res.predicted_types(type_threshold)
        flags = res.abnormal_flags(type_threshold, abnormal_threshold)
        skip = set(res.untrained_types)
        attrs = [{"types": types[i],
                  "type_probabilities": {t: float(p) for t, p in zip(res.type_names, res.type_probs[i])
                                         if t not in skip},
                  "abnormal_score": float(res.abnormal[i]),
                  "abnormal": bool(flags[i])} for i in np.nonzero(m)[0]]
        h, w = (res.image_shape + (0, 0))[:2]
        out.append(BoxAnnotation(res.name, w, h, res.boxes[m], [lab for lab, k in zip(res.labels, m) if k],
                                 res.scores[m], attrs))
    return out


# ------------------------------------------------------------ merging per-image files
def _replace_atomically(target: Path, text: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".part-{os.getpid()}-{target.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def merge_csv(paths: Sequence[str | os.PathLike], target: str | os.PathLike) -> Path:
    """Concatenate CSV files (columns: the union, in first-seen order) into ``target``, atomically."""
    import io

    rows, keys = [], {}
    for p in paths:
        with open(p, newline="", encoding="utf-8") as f:
            r = csv.DictReader(f)
            keys.update(dict.fromkeys(r.fieldnames or []))
            rows += list(r)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(keys) or ["image"], restval="")
    w.writeheader()
    w.writerows(rows)
    return _replace_atomically(Path(target), buf.getvalue())


def merge_coco(paths: Sequence[str | os.PathLike], target: str | os.PathLike) -> Path:
    """Merge COCO files into one (image and annotation ids renumbered,
    categories matched by name) written atomically to ``target``."""
    cats: dict[str, int] = {}
    images, annotations = [], []
    for p in paths:
        try:
            doc = json.loads(_read_text(p))
        except json.JSONDecodeError as exc:
            raise AnnotationFileError(f"{p} is not valid JSON: {exc}") from exc
        cat_name = {c["id"]: c["name"] for c in doc.get("categories", [])}
        for name in cat_name.values():
            cats.setdefault(name, len(cats) + 1)
        image_id = {}
        for im in doc.get("images", []):
            image_id[im["id"]] = len(images) + 1
            images.append({**im, "id": len(images) + 1})
        for a in doc.get("annotations", []):
            annotations.append({**a, "id": len(annotations) + 1, "image_id": image_id[a["image_id"]],
                                "category_id": cats[cat_name[a["category_id"]]]})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": v, "name": k} for k, v in cats.items()]}
    return _replace_atomically(Path(target), json.dumps(doc, indent=1))
