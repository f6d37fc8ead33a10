"""npe2 contributions: reader, writers and sample data.

These are referenced by id from ``napari.yaml``. Nothing here imports torch;
napari is imported only inside functions, to show notifications.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.io.readers import ImageReadError, file_kind, read_image
from expertloop.io.writers import write_nifti, write_tiff

#: what napari treats as "read, but nothing to add" (no error dialog)
_NOTHING = [(None,)]


def _notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(message)


def _notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def napari_get_reader(path: str | list[str]) -> Callable | None:
    """Return a reader for the image files expertloop reads, ``None`` otherwise.

    napari only sends NIfTI and TIFF files and ``*.zarr`` folders (OME-Zarr)
    here (the manifest's patterns);
    PNG/JPEG are accepted when this is called directly from Python, but
    napari opens them with its own reader.

    Decides from the file name only and never raises: a file that turns out
    to be corrupt is reported by the reader itself, as a notification.
    """
    try:
        if isinstance(path, (list, tuple)):
            if not path or not all(file_kind(p) for p in path):
                return None
        elif file_kind(path) is None or (os.path.isdir(path) and file_kind(path) != "ome-zarr"):
            return None
    except Exception:  # never raise at the get-reader stage
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    """Read one file (or several) into napari layer data.

    A file that cannot be read gives a clear error notification and adds
    nothing (napari shows no traceback dialog).
    """
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[tuple] = []
    for p in paths:
        try:
            items = read_image(p, lazy=True)
        except ImageReadError as exc:
            _notify_error(f"napari-expertloop could not open {Path(p).name}: {exc}")
            continue
        for item in items:
            if "channel_axis" in item.meta:
                axes = item.meta.get("metadata", {}).get("axes", "?")
                _notify_info(
                    f"{Path(p).name}: {item.data.ndim}-D image (axes {axes}); "
                    "channels opened as separate layers"
                )
            layers.append(item.as_layer_data())
    return layers or _NOTHING


def _layer_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k) for k in ("scale", "rgb", "metadata") if k in meta}


def write_image_tiff(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_tiff(path, data, _layer_meta(meta)))]


def write_image_nifti(path: str, data: Any, meta: dict) -> list[str]:
    return [str(write_nifti(path, data, _layer_meta(meta)))]


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """A Labels layer as TIFF, marked as labels (it opens as Labels again)."""
    return [str(write_tiff(path, data, {**_layer_meta(meta), "layer_type": "labels"}))]


def write_labels_nifti(path: str, data: Any, meta: dict) -> list[str]:
    """A Labels layer as NIfTI with the ``label`` intent (it opens as Labels again)."""
    return [str(write_nifti(path, data, {**_layer_meta(meta), "layer_type": "labels"}))]


# ------------------------------------------------------------ sample data
def sample_path(name: str) -> Path:
    """Path of a sample file shipped in ``expertloop/data``."""
    p = resources.files("expertloop") / "data" / name
    return Path(str(p))


def _sample(name: str) -> list[tuple]:
    return [item.as_layer_data() for item in read_image(sample_path(name))]


def sample_mri() -> list[tuple]:
    """Colin27 T1 brain MRI, skull-stripped, 1 mm (mricron-data, BSD-3)."""
    return _sample("colin27_t1_brain.nii.gz")


def sample_nuclei() -> list[tuple]:
    """Fluorescence nuclei, Data Science Bowl 2018 (via stardist, BSD-3)."""
    return _sample("dsb2018_nuclei.tif")


# One sample per workflow: the data each widget starts from, as layers
# named after the widget control they go into (docs/data.md).
def sample_spots() -> list[tuple]:
    """Spots: the Colin27 MRI with SIMULATED dark spots planted in it
    (``engine.spots.make_phantom``, seed 0), and the planted centres as a
    hidden Points layer (``difficulty`` feature) to check clicks against."""
    from expertloop.engine.spots.phantom import make_phantom

    (item,) = read_image(sample_path("colin27_t1_brain.nii.gz"))
    ph = make_phantom(item.data, seed=0)
    place = {k: item.meta[k] for k in ("scale", "translate") if k in item.meta}
    image = {**item.meta, "name": "colin27 simulated spots",
             "metadata": {**item.meta.get("metadata", {}), "simulated": "make_phantom(seed=0)"}}
    truth = {**place, "name": "planted spots (truth)", "visible": False, "size": 4,
             "face_color": "red", "features": {"difficulty": ph.difficulty}}
    return [(ph.volume, image, "image"), (ph.centers, truth, "points")]


def sample_membranes() -> list[tuple]:
    """Membranes: ISBI 2012 ssTEM crops (4 x 256 x 256) with membrane labels
    (1 membrane, 2 not membrane): image 0 as source, 1-2 as target, 3 as
    validation."""
    (em,) = read_image(sample_path("isbi2012_em_4x256.tif"))
    (lab,) = read_image(sample_path("isbi2012_em_4x256_membranes.tif"))
    img, truth = np.asarray(em.data), np.asarray(lab.data)
    return [
        (img[0], {"name": "EM source"}, "image"),
        (truth[0], {"name": "EM source truth"}, "labels"),
        (img[1:3], {"name": "EM target"}, "image"),
        (img[3], {"name": "EM validation", "visible": False}, "image"),
        (truth[3], {"name": "EM validation truth", "visible": False}, "labels"),
    ]


def sample_flim() -> list[tuple]:
    """FLIM: the nuclei image with SIMULATED scribble markers (LIDS file;
    2 = nucleus, 1 = background) for the marker encoder."""
    from expertloop.io.flim_markers import read_lids_markers

    image = _sample("dsb2018_nuclei.tif")
    markers = read_lids_markers(sample_path("dsb2018_nuclei_markers.txt"))
    return [*image, (markers, {"name": "nuclei markers"}, "labels")]


def sample_blood() -> list[tuple]:
    """Blood: one BCCD blood smear (640 x 480 RGB) with its expert boxes
    (RBC / WBC / Platelets) as a Shapes layer with a ``type`` feature."""
    from expertloop.io.napari_annotations import read_boxes_layers

    return _sample("BloodImage_00005.jpg") + read_boxes_layers(str(sample_path("BloodImage_00005.xml")))


#: class names of the semi-automatic labelling sample, in class-index order
SEMIAUTO_SAMPLE_CLASSES = ("RBC", "WBC", "Platelets")


def sample_semiauto() -> list[tuple]:
    """Semi-automatic labelling: 42 BCCD cell crops (32 x 32 RGB, 14 RBC,
    14 WBC, 14 Platelets, shuffled) as one stack layer. Its metadata holds
    the class names and the path of the shipped initial labels CSV (4 cells
    per class labelled) that go into the widget's *classes* and *initial
    labels CSV* controls."""
    (item,) = read_image(sample_path("bccd_cells_42x32.tif"))
    meta = {**item.meta, "name": "BCCD cell crops",
            "metadata": {**item.meta.get("metadata", {}), "class_names": list(SEMIAUTO_SAMPLE_CLASSES),
                         "initial_labels": str(sample_path("bccd_cells_42x32_initial_labels.csv"))}}
    return [(item.data, meta, "image")]
