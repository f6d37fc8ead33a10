"""Image collections and label files for semi-automatic labelling (numpy only).

A :class:`ImageSet` is the set of images to label: equal-sized 2D grey or
RGB arrays, each with a name (the file name for a folder). It comes from

* a folder of images (:func:`load_folder`): unreadable files are skipped and
  listed in ``collection.skipped``, never fatal; images of another size are
  resized to the common size (``on_mismatch="resize"``) or rejected with a
  message (``"reject"``);
* a folder-per-class layout (:func:`load_class_folders`): ``ROOT/<class>/*.png``
  gives initial labels, loose files in ``ROOT`` are unlabelled;
* a stack ``(N, H, W)`` or ``(N, H, W, 3)`` (:func:`from_stack`).

Labels are integer class indices, ``-1`` for "unlabelled". Label CSV files
have a header ``name,label`` (class name or index); :func:`read_labels_csv`
and :func:`write_labels_csv` read and write them.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from expertloop.engine.jobs import Job, Progress, run_job

UNLABELLED = -1


@dataclass
class ImageSet:
    """Equal-sized images with names; ``skipped`` lists ``(file, reason)``."""

    images: np.ndarray  # (N, H, W) or (N, H, W, C)
    names: list[str]
    paths: list[str | None] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.images) != len(self.names):
            raise ValueError(f"{len(self.images)} images but {len(self.names)} names")
        if not self.paths:
            self.paths = [None] * len(self.names)
        if len(set(self.names)) != len(self.names):
            dup = [n for n, c in Counter(self.names).items() if c > 1][:5]
            raise ValueError(f"image names must be unique; repeated: {dup}")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def index_of(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    out = resize(img.astype(np.float32), shape + img.shape[2:], order=1,
                 preserve_range=True, anti_aliasing=True)
    return out.astype(img.dtype) if np.issubdtype(img.dtype, np.floating) else np.round(out).astype(img.dtype)


def _harmonise(arrays: list[np.ndarray], names: list[str], size, on_mismatch: str):
    """Bring 2D/RGB arrays to one shape; returns (stack, resized names)."""
    if on_mismatch not in ("resize", "reject"):
        raise ValueError("on_mismatch must be 'resize' or 'reject'")
    rgb = any(a.ndim == 3 for a in arrays)
    fixed = []
    for a in arrays:
        if a.ndim == 3 and a.shape[-1] == 4:
            a = a[..., :3]
        if rgb and a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        fixed.append(a)
    if size is None:
        target = Counter(a.shape[:2] for a in fixed).most_common(1)[0][0]
    else:
        target = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    odd = [n for a, n in zip(fixed, names) if a.shape[:2] != target]
    if odd and on_mismatch == "reject" and size is None:
        raise ValueError(
            f"{len(odd)} image(s) are not {target[0]}x{target[1]} like the others "
            f"(e.g. {', '.join(odd[:5])}); choose a common size to resize them to"
        )
    dtype = np.result_type(*[a.dtype for a in fixed])
    stack = np.stack([a if a.shape[:2] == target else _resize(a, target) for a in fixed]).astype(dtype, copy=False)
    return stack, odd


def from_stack(stack, names: Sequence[str] | None = None) -> ImageSet:
    """A collection from an ``(N, H, W)`` or ``(N, H, W, 3)`` array."""
    arr = np.asarray(stack)
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (3, 4)) or len(arr) == 0:
        raise ValueError(f"a stack must be (N, H, W) or (N, H, W, 3) with N > 0, got {arr.shape}")
    if arr.ndim == 4 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    names = list(names) if names is not None else [f"{i:05d}" for i in range(len(arr))]
    return ImageSet(arr, names)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_files(files: Sequence[Path], rel: Path) -> Job:
    """Job: read ``files`` one by one (a progress record per file, so Cancel stops between files)."""
    from expertloop.io.readers import ImageReadError, read_image

    arrays, names, paths, skipped, notes = [], [], [], [], []
    for k, f in enumerate(files):
        yield Progress(k, len(files), f"reading image {k + 1}/{len(files)}")
        name = str(f.relative_to(rel)) if rel else f.name
        try:
            with warnings.catch_warnings(record=True) as caught:  # one summary, not one per file
                warnings.simplefilter("always")
                data = np.asarray(read_image(f)[0].data)
            notes += [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
            if data.ndim == 3 and data.shape[-1] not in (3, 4):
                raise ImageReadError(f"{f.name}: shape {data.shape} is not a 2D grey or RGB image")
            if data.ndim not in (2, 3):
                raise ImageReadError(f"{f.name}: shape {data.shape} is not a 2D image")
        except (ImageReadError, OSError) as exc:
            skipped.append((name, str(exc)))
            continue
        arrays.append(data)
        names.append(name)
        paths.append(str(f))
    if notes:
        warnings.warn(f"{len(notes)} note(s) while reading the images, e.g. {notes[0]}", stacklevel=2)
    return arrays, names, paths, skipped


def load_folder(folder, *, size=None, on_mismatch: str = "resize") -> ImageSet:
    """:func:`load_folder_job`, run to its end."""
    return run_job(load_folder_job(folder, size=size, on_mismatch=on_mismatch))


def load_folder_job(folder, *, size=None, on_mismatch: str = "resize") -> Job[ImageSet]:
    """Job: every readable image in ``folder`` (not recursive), in name order.

    Unreadable files are skipped and listed in ``skipped``. ``size`` (int or
    (h, w)) resizes all images to it; otherwise the most common size is kept
    and the others are resized (listed in ``resized``) or, with
    ``on_mismatch="reject"``, refused with a message.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    arrays, names, paths, skipped = yield from _read_files(_image_files(folder), folder)
    if not arrays:
        raise ValueError(f"{folder}: no readable images (.png, .jpg, .tif)"
                         + (f"; {len(skipped)} unreadable" if skipped else ""))
    stack, resized = _harmonise(arrays, names, size, on_mismatch)
    return ImageSet(stack, names, paths, skipped, resized)


PROJECT_FOLDER = "semiauto_project"  # default project folder, inside the image folder


def _class_dirs(root: Path, exclude: Sequence[str] = (PROJECT_FOLDER,)) -> list[Path]:
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name not in exclude)


def load_images(root, *, class_names: Sequence[str] | None = None, size=None,
                on_mismatch: str = "resize"):
    """:func:`load_images_job`, run to its end."""
    return run_job(load_images_job(root, class_names=class_names, size=size, on_mismatch=on_mismatch))


def load_images_job(root, *, class_names: Sequence[str] | None = None, size=None,
                    on_mismatch: str = "resize") -> Job:
    """Job: a folder of images, with or without class sub-folders.

    Returns ``(collection, labels, class_names)``: with sub-folders, as
    :func:`load_class_folders`; without, all images unlabelled and
    ``class_names`` as given. The default project folder is never a class.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    if _class_dirs(root):
        return (yield from load_class_folders_job(root, size=size, on_mismatch=on_mismatch,
                                                  class_names=class_names))
    col = yield from load_folder_job(root, size=size, on_mismatch=on_mismatch)
    return col, np.full(len(col), UNLABELLED, np.int64), list(class_names) if class_names else None


def load_class_folders(root, *, size=None, on_mismatch: str = "resize",
                       class_names: Sequence[str] | None = None):
    """:func:`load_class_folders_job`, run to its end."""
    return run_job(load_class_folders_job(root, size=size, on_mismatch=on_mismatch, class_names=class_names))


def load_class_folders_job(root, *, size=None, on_mismatch: str = "resize",
                           class_names: Sequence[str] | None = None) -> Job:
    """Job: a folder-per-class layout: returns ``(collection, labels, class_names)``.

    ``root/<class>/*`` are labelled with that class; images directly in
    ``root`` are unlabelled (``-1``). ``class_names`` fixes the class order
    (and may include classes with no folder yet); default: the sub-folder
    names, sorted.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    subdirs = _class_dirs(root)
    names_k = list(class_names) if class_names else [d.name for d in subdirs]
    unknown = [d.name for d in subdirs if d.name not in names_k]
    if unknown:
        raise ValueError(f"{root}: folders {unknown} are not among the classes {names_k}")
    files, labels = [], []
    for d in subdirs:
        for f in _image_files(d):
            files.append(f)
            labels.append(names_k.index(d.name))
    for f in _image_files(root):
        files.append(f)
        labels.append(UNLABELLED)
    arrays, names, paths, skipped = yield from _read_files(files, root)
    keep = {n for n in names}
    lab = np.array([lb for f, lb in zip(files, labels) if str(f.relative_to(root)) in keep], np.int64)
    if not arrays:
        raise ValueError(f"{root}: no readable images")
    stack, resized = _harmonise(arrays, names, size, on_mismatch)
    return ImageSet(stack, names, paths, skipped, resized), lab, names_k


def parse_class_names(text: str) -> list[str]:
    """``"RBC, WBC, Platelets"`` -> ``['RBC', 'WBC', 'Platelets']`` (unique, non-empty)."""
    names = [t.strip() for t in str(text).replace(";", ",").split(",") if t.strip()]
    if len(names) < 2:
        raise ValueError("give at least two class names, separated by commas")
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique: {names}")
    return names


def read_labels_csv(path, collection: ImageSet, class_names: Sequence[str]) -> np.ndarray:
    """Labels ``(N,)`` (``-1`` where absent) from a CSV with columns ``name,label``.

    ``label`` is a class name or a class index. Unknown image names or
    classes raise ``ValueError`` with the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such label file")
    index = collection.index_of()
    # also accept bare file names for images given with a sub-folder
    base = {os.path.basename(n): i for n, i in index.items()}
    labels = np.full(len(collection), UNLABELLED, np.int64)
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: a BOM (Excel) is not a column name
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path.name}: needs a header with columns 'name' and 'label'")
        for line, row in enumerate(reader, 2):
            name, lab = (row["name"] or "").strip(), (row["label"] or "").strip()
            if not lab:
                continue
            i = index.get(name, base.get(name))
            if i is None:
                raise ValueError(f"{path.name}, line {line}: no image named {name!r}")
            if lab in class_names:
                k = list(class_names).index(lab)
            elif lab.lstrip("-").isdigit() and 0 <= int(lab) < len(class_names):
                k = int(lab)
            else:
                raise ValueError(f"{path.name}, line {line}: {lab!r} is not one of {list(class_names)}")
            labels[i] = k
    return labels


def write_labels_csv(path, names: Sequence[str], labels, class_names: Sequence[str],
                     source: Sequence[str] | None = None, confidence=None) -> Path:
    """Write ``name,label,class_index,source,confidence`` (unlabelled rows have empty labels)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "label", "class_index", "source", "confidence"])
        for i, n in enumerate(names):
            k = int(labels[i])
            conf = "" if confidence is None or np.isnan(confidence[i]) else f"{float(confidence[i]):.4f}"
            w.writerow([n, class_names[k] if k >= 0 else "", k if k >= 0 else "",
                        source[i] if source is not None else "", conf])
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------ VOC crops
def voc_objects(xml_path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """``[(class name, (ymin, xmin, ymax, xmax)), ...]`` from a Pascal VOC file."""
    import xml.etree.ElementTree as ET

    root = ET.parse(xml_path).getroot()
    out = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if not name or bb is None:
            continue
        box = [int(float(bb.findtext(k))) for k in ("ymin", "xmin", "ymax", "xmax")]
        out.append((name, tuple(box)))
    return out


def crop_boxes(image: np.ndarray, objects, size: int = 48, min_side: int = 4):
    """Square crops (resized to ``size``) around VOC boxes; returns (crops, class names)."""
    crops, names = [], []
    h, w = image.shape[:2]
    for name, (y0, x0, y1, x1) in objects:
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(h, y1), min(w, x1)
        if y1 - y0 < min_side or x1 - x0 < min_side:
            continue
        cy, cx, half = (y0 + y1) // 2, (x0 + x1) // 2, max(y1 - y0, x1 - x0) // 2
        ys, xs = slice(max(0, cy - half), min(h, cy + half)), slice(max(0, cx - half), min(w, cx + half))
        crops.append(_resize(image[ys, xs], (size, size)))
        names.append(name)
    return crops, names
