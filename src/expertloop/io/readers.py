"""Image readers: NIfTI, TIFF/OME-TIFF, PNG/JPEG -> arrays with metadata.

Pure functions with no napari import. :func:`read_image` returns a list of
:class:`ImageData` (one per layer) or raises :class:`ImageReadError` with a
message a user can act on. The napari reader hook in
:mod:`expertloop.io.napari_hooks` wraps it.

Orientation of NIfTI volumes
----------------------------
NIfTI data is first reoriented to the closest canonical RAS+ orientation
(``nibabel.as_closest_canonical``), then transposed to napari's
(z, y, x) order and flipped in y so that an axial slice shows anterior at the
top and the patient's left on the left of the screen (neurological
convention). The array axes are then:

* axis 0: inferior -> superior (the slider),
* axis 1: anterior -> posterior (rows),
* axis 2: left -> right (columns; increasing R coordinate).

``scale`` is the voxel spacing (mm) in that order. The original affine and
the axis codes are kept in the layer's ``metadata`` (``nifti_affine``,
``axes``) and :func:`expertloop.io.writers.write_nifti` uses them to write
labels back in the source's voxel grid. A 4D NIfTI (x, y, z, t) becomes
(t, z, y, x).
"""

from __future__ import annotations

import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.io._safety import DeclaredSizeError, check_declared_size

NIFTI_SUFFIXES = (".nii", ".nii.gz")
TIFF_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff")
PLAIN_SUFFIXES = (".png", ".jpg", ".jpeg")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + TIFF_SUFFIXES + PLAIN_SUFFIXES
#: images stored as folders (OME-Zarr)
FOLDER_SUFFIXES = (".zarr",)

#: axis codes of a NIfTI volume as returned by :func:`read_nifti`
NIFTI_AXES = ("S", "P", "R")  # increasing superior, posterior, right


class ImageReadError(ValueError):
    """A file could not be read; the message says why in plain words."""


@dataclass
class ImageData:
    """One layer's worth of image data."""

    data: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    layer_type: str = "image"

    def as_layer_data(self) -> tuple:
        return (self.data, self.meta, self.layer_type)


def file_kind(path: str | os.PathLike) -> str | None:
    """'nifti', 'tiff', 'plain', 'ome-zarr' or None, from the file name only."""
    name = str(path).lower().rstrip("/\\")
    if name.endswith(FOLDER_SUFFIXES):
        return "ome-zarr"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(PLAIN_SUFFIXES):
        return "plain"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suf in sorted(SUPPORTED_SUFFIXES + (".ome.zarr",) + FOLDER_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return path.stem


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path.name}: the file is empty (0 bytes)")


def read_image(path: str | os.PathLike, lazy: bool = False) -> list[ImageData]:
    """Read any supported image file (dispatch on the file name).

    ``lazy=True`` (the napari reader) returns TIFF data as dask arrays read
    through tifffile's zarr store, one chunk per plane or tile, and a pyramid
    as a list of levels (napari multiscale); OME-Zarr the same way through
    ome-zarr-py; a NIfTI volume of more than :data:`LAZY_NIFTI_BYTES` as a
    dask array over nibabel's array proxy. PNG/JPEG ignore it.
    """
    path = Path(path)
    kind = file_kind(path)
    if kind is None:
        raise ImageReadError(
            f"{path.name}: unsupported file type; expertloop reads "
            + ", ".join(SUPPORTED_SUFFIXES + FOLDER_SUFFIXES)
        )
    if kind == "tiff":
        return read_tiff(path, lazy=lazy)
    if kind == "ome-zarr":
        return read_ome_zarr(path, lazy=lazy)
    if kind == "nifti":
        return read_nifti(path, lazy=lazy)
    return read_plain(path)


# ---------------------------------------------------------------- NIfTI
def nifti_to_napari(data: np.ndarray) -> np.ndarray:
    """Canonical RAS+ (x, y, z[, t]) array -> napari (..., z, y, x), y flipped."""
    arr = np.moveaxis(data, [0, 1, 2], [-1, -2, -3])  # (t, z, y, x)
    return arr[..., ::-1, :]


def napari_to_nifti(arr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`nifti_to_napari`."""
    arr = arr[..., ::-1, :]
    return np.moveaxis(arr, [-1, -2, -3], [0, 1, 2])


def _checked_scale(scale: list[float], axes: str, path: Path, meta: dict[str, Any]) -> list[float]:
    """Pixel sizes that are positive and finite; any other (0, negative, inf,
    NaN: a crafted or broken header) is replaced by 1 with a warning, kept in
    ``metadata["warnings"]``, instead of dividing by zero later."""
    out = []
    for ax, s in zip(axes, scale):
        if np.isfinite(s) and s > 0:
            out.append(float(s))
            continue
        note = (f"{path.name}: the file gives a pixel size of {s!r} along {ax}, which is not a "
                "positive finite size; 1 is used instead")
        warnings.warn(note, stacklevel=3)
        meta["metadata"].setdefault("warnings", []).append(note)
        out.append(1.0)
    return out


#: NIfTI volumes bigger than this (uncompressed bytes) are read lazily by ``read_image(lazy=True)``
LAZY_NIFTI_BYTES = 256 * 2**20
#: a lazy NIfTI's chunks: slabs of about this many bytes along the file's last spatial axis
NIFTI_SLAB_BYTES = 64 * 2**20


def _lazy_canonical(img):
    """``(dask array, canonical affine, zooms)``: the data of ``img`` reoriented to the
    closest canonical RAS+ orientation like ``nibabel.as_closest_canonical``,
    but over nibabel's array proxy (nothing read until a chunk is computed;
    one chunk per slab of about :data:`NIFTI_SLAB_BYTES` along the file's
    last spatial axis; a gzipped file is decompressed from its start for each
    slab, so big volumes are best stored uncompressed)."""
    import dask.array as da
    from nibabel.orientations import (
        axcodes2ornt,
        inv_ornt_aff,
        io_orientation,
        ornt_transform,
    )

    proxy = img.dataobj
    shape = tuple(img.shape)
    plane = int(np.prod(shape[:2])) * np.dtype(img.get_data_dtype()).itemsize
    per = max(1, int(NIFTI_SLAB_BYTES // max(plane, 1)))
    chunks = (shape[0], shape[1]) + (min(per, shape[2]),) + tuple(shape[3:]) if len(shape) > 2 else shape
    arr = da.from_array(proxy, chunks=chunks, asarray=True, fancy=False, lock=True)
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(("R", "A", "S")))
    # nibabel.orientations.apply_orientation, in dask operations
    for ax, flip in enumerate(ornt[:, 1]):
        if flip == -1:
            arr = da.flip(arr, axis=ax)
    order = list(np.argsort(ornt[:, 0]).astype(int)) + list(range(3, arr.ndim))
    arr = arr.transpose(order)
    zooms = img.header.get_zooms()
    return arr, img.affine @ inv_ornt_aff(ornt, shape[:3]), [zooms[i] for i in order] + list(zooms[3:])


def read_nifti(path: str | os.PathLike, lazy: bool = False,
               lazy_bytes: int | None = None) -> list[ImageData]:
    """NIfTI -> napari (see the module docs); ``lazy``: a volume of more than
    ``lazy_bytes`` (default :data:`LAZY_NIFTI_BYTES`) comes back as a dask
    array read through nibabel's array proxy, slab by slab."""
    import nibabel as nib

    path = Path(path)
    _check_file(path)
    try:
        img = nib.load(str(path))
        gz = path.name.lower().endswith(".gz")
        nbytes = check_declared_size(img.shape, img.get_data_dtype(), path,
                                     compression="deflate" if gz else None,
                                     offset=0 if gz else int(img.header.get("vox_offset", 0)),
                                     in_memory=not lazy)
        limit = LAZY_NIFTI_BYTES if lazy_bytes is None else lazy_bytes
        if lazy and nbytes > limit and len(img.shape) >= 3:
            data, canonical_affine, zooms = _lazy_canonical(img)
        else:
            canon = nib.as_closest_canonical(img)
            data, canonical_affine = np.asanyarray(canon.dataobj), canon.affine
            zooms = canon.header.get_zooms()
    except DeclaredSizeError as exc:
        raise ImageReadError(str(exc)) from exc
    except (EOFError, zlib.error, OSError, struct.error, MemoryError) as exc:
        raise ImageReadError(
            f"{path.name}: the NIfTI file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    except (nib.filebasedimages.ImageFileError, ValueError) as exc:
        raise ImageReadError(f"{path.name}: not a valid NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise ImageReadError(
            f"{path.name}: NIfTI with {data.ndim} dimensions {data.shape}; "
            "expertloop reads 3D volumes and 4D time series"
        )
    zooms = [float(z) for z in zooms[: data.ndim]]
    out = nifti_to_napari(data)
    scale = [zooms[2], zooms[1], zooms[0]]
    # world coordinates (mm) of voxel (0, 0, 0) of the napari array
    aff = canonical_affine
    corner = aff @ np.array([0, data.shape[1] - 1, 0, 1.0])
    translate = [corner[2], -corner[1], corner[0]]
    if data.ndim == 4:
        scale = [zooms[3] or 1.0] + scale
        translate = [0.0] + translate
    meta = {
        "name": _stem(path),
        "scale": scale,
        "translate": translate,
        "metadata": {
            "source": str(path),
            "format": "nifti",
            "nifti_affine": img.affine.tolist(),
            "canonical_affine": np.asarray(canonical_affine).tolist(),
            "source_axcodes": "".join(nib.aff2axcodes(img.affine)),
            "axes": ("T" if data.ndim == 4 else "") + "".join(NIFTI_AXES),
            "units": "mm",
        },
    }
    meta["scale"] = _checked_scale(scale, meta["metadata"]["axes"][-len(scale):], path, meta)
    return [ImageData(out, meta, _kind(img.header.get_intent()[0] == "label", out))]


def _kind(labels_marked: bool, data) -> str:
    """"labels" for an integer array its file marks as labels (expertloop's
    labels writers do), else "image"."""
    dtype = getattr(data[0] if isinstance(data, list) else data, "dtype", None)
    return "labels" if labels_marked and dtype is not None and np.issubdtype(dtype, np.integer) else "image"


# ----------------------------------------------------------------- TIFF
#: OME length units -> factor to micrometres
OME_UNIT_TO_UM = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3,
    "cm": 1e4, "m": 1e6,
}  # fmt: skip


def _ome_scale(ome_xml: str) -> tuple[dict[str, float], dict[str, str]]:
    """OME PhysicalSize{X,Y,Z} in µm and the source unit of each axis."""
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    pixels = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", ome_xml)
    head = pixels.group(0) if pixels else ome_xml
    for ax in "XYZ":
        m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', head)
        if not m:
            continue
        u = re.search(rf'PhysicalSize{ax}Unit="([^"]+)"', head)
        unit = u.group(1) if u else "µm"  # the OME default
        if unit not in OME_UNIT_TO_UM:
            raise ImageReadError(f"OME PhysicalSize{ax}Unit {unit!r} is not a length unit")
        scale[ax] = float(m.group(1)) * OME_UNIT_TO_UM[unit]
        units[ax] = unit
    return scale, units


def _tiff_scale(tif) -> tuple[dict[str, float], dict[str, str]]:
    """Physical pixel size per axis letter, from OME (in µm) or ImageJ metadata,
    and the OME source unit of each axis (empty when not OME)."""
    scale: dict[str, float] = {}
    if tif.is_ome and tif.ome_metadata:
        return _ome_scale(tif.ome_metadata)
    page = tif.pages.first
    # ImageJ metadata, or the JSON description of a plain tifffile TIFF
    ij = tif.imagej_metadata or (tif.shaped_metadata or [{}])[0] or {}
    for ax, tag in (("X", "XResolution"), ("Y", "YResolution")):
        t = page.tags.get(tag)
        if t is not None:
            num, den = t.value if isinstance(t.value, tuple) else (t.value, 1)
            if num and den and (num / den) > 0 and (num, den) != (1, 1):
                scale[ax] = den / num
    if ij.get("spacing"):
        scale["Z"] = float(ij["spacing"])
    return scale, {}


def _lazy_levels(series) -> list:
    """Dask arrays of every pyramid level, read through tifffile's zarr store."""
    import dask.array as da
    import zarr

    return [
        da.from_zarr(zarr.open_array(series.aszarr(level=i), mode="r"))
        for i in range(len(series.levels))
    ]


def _tiff_compression(series) -> str | None:
    """None for raw pixel data, "deflate" for zlib, else the codec name."""
    codes = {int(getattr(p, "compression", 1)) for p in series.pages if p is not None}
    if codes <= {1}:
        return None
    if codes <= {8, 32946}:
        return "deflate"
    return "compressed"


def read_tiff(path: str | os.PathLike, lazy: bool = False) -> list[ImageData]:
    """TIFF/OME-TIFF; ``lazy`` gives dask arrays (a list of them for a pyramid).

    OME physical sizes are converted to micrometres; the source units are in
    ``metadata["ome_units"]``.
    """
    import tifffile

    path = Path(path)
    _check_file(path)
    try:
        with tifffile.TiffFile(str(path)) as tif:
            series = tif.series[0]
            axes = series.axes
            check_declared_size(series.shape, series.dtype, path,
                                compression=_tiff_compression(series), in_memory=not lazy)
            levels = _lazy_levels(series) if lazy else None
            data = levels[0] if lazy else series.asarray()
            scale_by_axis, ome_units = _tiff_scale(tif)
            marked = (tif.imagej_metadata or (tif.shaped_metadata or [{}])[0] or {}).get("layer") == "labels"
    except tifffile.TiffFileError as exc:
        raise ImageReadError(f"{path.name}: not a valid TIFF file ({exc})") from exc
    except DeclaredSizeError as exc:
        raise ImageReadError(str(exc)) from exc
    except (EOFError, OSError, ValueError, IndexError, zlib.error, struct.error,
            MemoryError) as exc:
        raise ImageReadError(
            f"{path.name}: the TIFF file is truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    if data.ndim != len(axes):  # squeezed series
        axes = axes[-data.ndim :]
    rgb = axes.endswith("S") and data.shape[-1] in (3, 4)
    if axes.endswith("S") and not rgb:  # samples that are not RGB: channels
        axes = axes[:-1] + "C"
    channel_axis = axes.index("C") if "C" in axes else None
    spatial = [a for a in axes if a not in "CS"]
    if len(spatial) > 4:
        raise ImageReadError(
            f"{path.name}: a {data.ndim}-D TIFF (axes {axes!r}, shape {data.shape}) "
            "has more than 4 non-channel dimensions; expertloop reads 2D, 3D "
            "and time series (up to T, Z, Y, X) plus channels. Save it with "
            "ImageJ/OME axis metadata or split it first."
        )
    if len(spatial) < 2 or 0 in data.shape:
        raise ImageReadError(f"{path.name}: TIFF of shape {data.shape} is not an image")
    meta: dict[str, Any] = {
        "name": _stem(path),
        "metadata": {"source": str(path), "format": "tiff", "axes": axes},
    }
    meta["scale"] = _checked_scale([scale_by_axis.get(a, 1.0) for a in spatial],
                                   "".join(spatial), path, meta)
    if ome_units:
        meta["metadata"]["units"] = "µm"
        meta["metadata"]["ome_units"] = ome_units  # converted from these
    if rgb:
        meta["rgb"] = True
    shape = data.shape  # of level 0 when data becomes a pyramid below
    if levels is not None and len(levels) > 1 and data.ndim == len(axes):
        data = levels  # napari multiscale; scale is level 0's, napari infers the rest
        meta["multiscale"] = True
        meta["metadata"]["level_shapes"] = [tuple(lv.shape) for lv in levels]
    if channel_axis is not None and shape[channel_axis] > 1:
        meta["channel_axis"] = channel_axis
        meta["name"] = [f"{_stem(path)} [ch{i}]" for i in range(shape[channel_axis])]
    elif channel_axis is not None:
        if isinstance(data, list):
            data = [lv[(slice(None),) * channel_axis + (0,)] for lv in data]
        else:
            data = data[(slice(None),) * channel_axis + (0,)]
    return [ImageData(data, meta, _kind(marked and not rgb and "channel_axis" not in meta, data))]


# ------------------------------------------------------------ OME-Zarr
#: OME-Zarr (UDUNITS) length units -> factor to micrometres
OME_ZARR_UNIT_TO_UM = {
    "picometer": 1e-6, "angstrom": 1e-4, "nanometer": 1e-3, "micrometer": 1.0,
    "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6,
}  # fmt: skip


def _zarr_scale(transforms, ndim: int) -> tuple[list[float], list[float]]:
    scale, translate = [1.0] * ndim, [0.0] * ndim
    for t in transforms or []:
        if t.get("type") == "scale" and len(t.get("scale", [])) == ndim:
            scale = [float(v) for v in t["scale"]]
        elif t.get("type") == "translation" and len(t.get("translation", [])) == ndim:
            translate = [float(v) for v in t["translation"]]
    return scale, translate


def read_ome_zarr(path: str | os.PathLike, lazy: bool = True) -> list[ImageData]:
    """An OME-Zarr image (read with ome-zarr-py): its pyramid as napari
    multiscale dask arrays (one level: a dask array), pixel sizes converted to
    µm (the source units in ``metadata["ome_units"]``), a channel axis split
    into layers. The first image of the folder is read (not its labels or a
    plate's wells). ``lazy=False`` reads level 0 into memory."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    try:
        loc = parse_url(str(path))
        if loc is None:
            raise ImageReadError(f"{path.name}: not an OME-Zarr image (no zarr group metadata inside)")
        nodes = [n for n in Reader(loc)()
                 if any(isinstance(sp, Multiscales) for sp in n.specs)
                 and not any(isinstance(sp, Label) for sp in n.specs)]
    except ImageReadError:
        raise
    except Exception as exc:  # ome-zarr/zarr raise many types for bad folders
        raise ImageReadError(f"{path.name}: could not read the OME-Zarr metadata "
                             f"({type(exc).__name__}: {exc})") from exc
    if not nodes:
        raise ImageReadError(f"{path.name}: a zarr folder without an OME-Zarr multiscale image")
    node = nodes[0]
    levels = list(node.data)
    ndim = levels[0].ndim
    axes_md = node.metadata.get("axes") or [{"name": n} for n in "tczyx"[-ndim:]]
    axes_md = [a if isinstance(a, dict) else {"name": str(a)} for a in axes_md]
    names = [str(a.get("name", "?")) for a in axes_md]
    types = [a.get("type") or ("channel" if n.lower() == "c" else "time" if n.lower() == "t" else "space")
             for a, n in zip(axes_md, names)]
    transforms = (node.metadata.get("coordinateTransformations") or [[]])[0]
    scale, translate = _zarr_scale(transforms, ndim)
    ome_units = {}
    for i, (a, kind) in enumerate(zip(axes_md, types)):
        unit = a.get("unit")
        if kind == "space" and unit in OME_ZARR_UNIT_TO_UM:
            ome_units[names[i].upper()] = unit
            scale[i] *= OME_ZARR_UNIT_TO_UM[unit]
            translate[i] *= OME_ZARR_UNIT_TO_UM[unit]
    channel_axis = types.index("channel") if "channel" in types else None
    axes = "".join(("C" if t == "channel" else n.upper()[:1]) for n, t in zip(names, types))
    keep = [i for i in range(ndim) if i != channel_axis]
    meta: dict[str, Any] = {
        "name": _stem(path),
        "scale": [scale[i] for i in keep],
        "translate": [translate[i] for i in keep],
        "metadata": {"source": str(path), "format": "ome-zarr", "axes": axes,
                     "level_shapes": [tuple(lv.shape) for lv in levels]},
    }
    meta["scale"] = _checked_scale(meta["scale"], "".join(axes[i] for i in keep), path, meta)
    if ome_units:
        meta["metadata"]["units"] = "µm"
        meta["metadata"]["ome_units"] = ome_units
    if lazy:
        data: Any = levels if len(levels) > 1 else levels[0]
        if len(levels) > 1:
            meta["multiscale"] = True
    else:
        try:
            check_declared_size(levels[0].shape, levels[0].dtype, path, compression="zarr")
        except DeclaredSizeError as exc:
            raise ImageReadError(str(exc)) from exc
        data = np.asarray(levels[0].compute(scheduler="synchronous"))
    if channel_axis is not None and levels[0].shape[channel_axis] > 1:
        meta["channel_axis"] = channel_axis
        meta["name"] = [f"{_stem(path)} [ch{i}]" for i in range(levels[0].shape[channel_axis])]
    elif channel_axis is not None:
        pick = (slice(None),) * channel_axis + (0,)
        data = [lv[pick] for lv in data] if isinstance(data, list) else data[pick]
        meta["metadata"]["axes"] = axes.replace("C", "")
    return [ImageData(data, meta, "image")]


# ------------------------------------------------------------ PNG / JPEG
def read_plain(path: str | os.PathLike) -> list[ImageData]:
    import imageio.v3 as iio

    path = Path(path)
    _check_file(path)
    notes = []
    try:
        mode = iio.immeta(str(path), plugin="pillow").get("mode")
        if mode == "CMYK":  # 4 ink channels are not RGBA: convert to RGB
            data = np.asarray(iio.imread(str(path), plugin="pillow", mode="RGB"))
            notes.append(f"{path.name}: a CMYK image, converted to RGB for display")
        else:
            data = np.asarray(iio.imread(str(path), plugin="pillow"))
        if mode in ("P", "PA"):
            notes.append(f"{path.name}: an indexed-colour (palette) image; its palette colours are "
                         "shown as RGB; the colour indices are not kept")
    except Exception as exc:  # imageio/Pillow raise many types for bad files
        raise ImageReadError(
            f"{path.name}: cannot decode the image; the file is corrupt or not "
            f"a {path.suffix.lstrip('.').upper()} ({type(exc).__name__}: {exc})"
        ) from exc
    if data.ndim not in (2, 3) or 0 in data.shape:
        raise ImageReadError(f"{path.name}: decoded to shape {data.shape}, not an image")
    meta: dict[str, Any] = {
        "name": _stem(path),
        "metadata": {"source": str(path), "format": path.suffix.lower().lstrip(".")},
    }
    for note in notes:
        warnings.warn(note, stacklevel=2)
        meta["metadata"].setdefault("warnings", []).append(note)
    if notes:
        meta["metadata"]["colour_mode"] = mode
    if data.ndim == 3 and data.shape[-1] in (3, 4):
        meta["rgb"] = True
    elif data.ndim == 3 and data.shape[-1] == 2:  # grey + alpha
        data = data[..., 0]
    return [ImageData(data, meta, "image")]
