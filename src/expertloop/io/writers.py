"""Writers: TIFF (ImageJ-compatible, with pixel size) and NIfTI."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.io.readers import napari_to_nifti


def write_tiff(path: str | os.PathLike, data: np.ndarray, meta: Mapping[str, Any] | None = None) -> Path:
    """Write an image or label array as a zlib-compressed ImageJ TIFF.

    ``meta['scale']`` (napari layer scale) becomes the pixel size (Y, X) and
    the Z spacing, so reading the file back gives the same ``scale``.
    ``meta['layer_type'] == "labels"`` marks the file as labels (key
    ``layer=labels`` of its ImageJ / JSON description), so expertloop's reader
    opens it as a Labels layer again.
    """
    import tifffile

    meta = dict(meta or {})
    data = np.asarray(data)
    path = Path(path)
    rgb = bool(meta.get("rgb")) and data.shape[-1] in (3, 4)
    nsp = data.ndim - (1 if rgb else 0)
    scale = list(meta.get("scale") or [1.0] * nsp)[-nsp:]
    if data.dtype == bool:
        data = data.astype(np.uint8)
    axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(nsp, "Q" * (nsp - 2) + "YX") + ("S" if rgb else "")
    metadata: dict[str, Any] = {"axes": axes}
    if meta.get("layer_type") == "labels":
        metadata["layer"] = "labels"
    if nsp >= 3:
        metadata["spacing"] = float(scale[-3])
    kwargs: dict[str, Any] = {
        "compression": "zlib",
        "resolution": (1.0 / float(scale[-1]), 1.0 / float(scale[-2])),
        "metadata": metadata,
    }
    # ImageJ files open everywhere but hold only these types; 32/64-bit
    # labels go to a plain TIFF whose JSON description keeps axes and spacing.
    if not rgb and nsp <= 4 and data.dtype in (np.uint8, np.uint16, np.int16, np.float32):
        kwargs["imagej"] = True
    else:
        kwargs["photometric"] = "rgb" if rgb else "minisblack"
    tifffile.imwrite(str(path), data, **kwargs)
    return path


def write_nifti(path: str | os.PathLike, data: np.ndarray, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a 2D, 3D or 4D array in napari order as NIfTI.

    A 2D array (Y, X) is written as a single-slice volume, so 2D labels drawn
    on a TIFF/PNG can be saved as NIfTI too; it reads back as (1, Y, X).

    If the layer came from :func:`expertloop.io.readers.read_nifti` (its
    metadata holds ``canonical_affine``), the array is mapped back to that
    voxel grid, so a label volume drawn on an MRI overlays it in any NIfTI
    viewer. Otherwise the affine is diagonal with the layer's ``scale``.
    ``meta['layer_type'] == "labels"`` sets the NIfTI intent to ``label``
    (NIFTI_INTENT_LABEL), which expertloop's reader opens as a Labels layer.
    """
    import nibabel as nib

    meta = dict(meta or {})
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[np.newaxis]
        if meta.get("scale") is not None:
            meta["scale"] = [1.0, *list(meta["scale"])[-2:]]
    if data.ndim not in (3, 4):
        raise ValueError(f"NIfTI needs a 2D, 3D or 4D array, got shape {data.shape}")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype == np.int64:
        data = data.astype(np.int32)
    md = meta.get("metadata") or {}
    vol = napari_to_nifti(data)
    if "canonical_affine" in md:
        affine = np.asarray(md["canonical_affine"], float)
    else:
        scale: Sequence[float] = list(meta.get("scale") or [1.0] * data.ndim)[-3:]
        affine = np.diag([float(scale[2]), float(scale[1]), float(scale[0]), 1.0])
    img = nib.Nifti1Image(vol, affine)
    img.header.set_xyzt_units("mm")
    if meta.get("layer_type") == "labels":
        img.header.set_intent("label")
    nib.save(img, str(path))
    return Path(path)
