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
    """
    import tifffile

    meta = dict(meta or {})
    data = np.asarray(data)
    path = Path(path)
    rgb = bool(meta.get("rgb")) and data.shape[-1] in (3, 4)
    nsp = data.ndim - (1 if rgb else 0)
    scale = list(meta.get("scale") or [1.0] * nsp)[-nsp:]
    kwargs: dict[str, Any] = {"compression": "zlib"}
    ij_ok = data.dtype in (np.uint8, np.uint16, np.float32, np.int16) or data.dtype == bool
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype in (np.int32, np.int64, np.uint32, np.uint64):
        # labels: ImageJ cannot store them; keep exact values in plain TIFF
        ij_ok = False
    if nsp >= 2:
        kwargs["resolution"] = (1.0 / float(scale[-1]), 1.0 / float(scale[-2]))
    if ij_ok and not rgb and nsp in (2, 3, 4):
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}[nsp]
        ij_meta: dict[str, Any] = {"axes": axes}
        if nsp >= 3:
            ij_meta["spacing"] = float(scale[-3])
        kwargs.update(imagej=True, metadata=ij_meta)
    else:
        kwargs["photometric"] = "rgb" if rgb else "minisblack"
    tifffile.imwrite(str(path), data, **kwargs)
    return path


def write_nifti(path: str | os.PathLike, data: np.ndarray, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a 3D/4D array in napari order as NIfTI.

    If the layer came from :func:`expertloop.io.readers.read_nifti` (its
    metadata holds ``canonical_affine``), the array is mapped back to that
    voxel grid, so a label volume drawn on an MRI overlays it in any NIfTI
    viewer. Otherwise the affine is diagonal with the layer's ``scale``.
    """
    import nibabel as nib

    meta = dict(meta or {})
    data = np.asarray(data)
    if data.ndim not in (3, 4):
        raise ValueError(f"NIfTI needs a 3D or 4D array, got shape {data.shape}")
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
    nib.save(img, str(path))
    return Path(path)
