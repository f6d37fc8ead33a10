"""Labelled datasets for simulations (CLI and benchmark) and the D0/V split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from expertloop.engine.semiauto.data import (
    UNLABELLED,
    ImageSet,
    crop_boxes,
    from_stack,
    load_class_folders,
    voc_objects,
)


def digits_dataset() -> tuple[ImageSet, np.ndarray, list[str]]:
    """scikit-learn's bundled handwritten digits (1797 real 8×8 scans, 10 classes).

    Returns
    -------
    (ImageSet, array, list of str)
        The images (uint8), their true classes ``(N,)`` and the class names
        ``"0"`` ... ``"9"``.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images / 16 * 255).astype(np.uint8)
    return from_stack(images), d.target.astype(np.int64), [str(i) for i in range(10)]


def voc_crops_dataset(root, size: int = 32, classes=None, max_images: int | None = None):
    """Square crops around every Pascal VOC box of ``root/Annotations`` + ``root/JPEGImages``."""
    from expertloop.io.readers import read_image

    root = Path(root)
    xmls = sorted((root / "Annotations").glob("*.xml"))
    if not xmls:
        raise FileNotFoundError(f"{root}: no Annotations/*.xml (Pascal VOC layout expected)")
    if max_images:
        xmls = xmls[:max_images]
    crops, names, cls = [], [], []
    for xml in xmls:
        jpg = root / "JPEGImages" / (xml.stem + ".jpg")
        if not jpg.exists():
            continue
        img = np.asarray(read_image(jpg)[0].data)
        cs, ns = crop_boxes(img, voc_objects(xml), size=size)
        for j, (c, n) in enumerate(zip(cs, ns)):
            crops.append(c[..., :3])
            names.append(f"{xml.stem}_{j:02d}")
            cls.append(n)
    class_names = list(classes) if classes else sorted(set(cls))
    keep = [i for i, c in enumerate(cls) if c in class_names]
    col = from_stack(np.stack([crops[i] for i in keep]), [names[i] for i in keep])
    truth = np.array([class_names.index(cls[i]) for i in keep], np.int64)
    return col, truth, class_names


def class_folders_dataset(root, size=None):
    """A folder-per-class layout used as ground truth (every image must be in a class folder)."""
    col, labels, names = load_class_folders(root, size=size)
    if (labels == UNLABELLED).any():
        raise ValueError(f"{root}: for a simulation every image must be in a class folder")
    return col, labels, names


def simulation_split(truth, n_initial: int = 10, n_val: int = 30, seed: int = 0):
    """Per class: ``n_val`` images for V, ``n_initial`` for D0 (fewer if the class is small).

    Parameters
    ----------
    truth : array of int
        The true class of every image.
    n_initial, n_val : int
        Initial labelled images (D0) and validation images (V) per class.
    seed : int
        Random seed.

    Returns
    -------
    (array, array)
        ``initial_labels`` (``-1`` where unlabelled, V included) and
        ``val_indices``; everything else is unlabelled.
    """
    truth = np.asarray(truth, np.int64)
    rng = np.random.default_rng(seed)
    labels = np.full(len(truth), UNLABELLED, np.int64)
    val = []
    for k in np.unique(truth):
        idx = rng.permutation(np.flatnonzero(truth == k))
        nv = min(n_val, max(1, len(idx) // 3))
        ni = min(n_initial, max(1, (len(idx) - nv) // 3))
        val.extend(idx[:nv])
        labels[idx[nv:nv + ni]] = k
    return labels, np.sort(np.asarray(val, np.int64))
