"""The per-image steps of the batch commands, run by :func:`expertloop.engine.batch.run_batch`.

Each step is a module-level function ``step(source, paths, name, params) ->
str`` (so dask can send it to worker processes by reference): it reads the
image ``source``, computes, writes each of ``paths`` (temporary names that the
batch renames into place) and returns a one-line summary. Steps whose work is
an engine job are jobs themselves (``yield from`` it, no nested ``run_job``):
the batch re-yields their progress and Cancel stops them at their next step
(:func:`~expertloop.engine.batch.iter_one`); a ``run_job`` left inside a step
follows the batch's Cancel and its :class:`~expertloop.engine.jobs.JobCancelled`
is a cancellation, not a failed image. Models are loaded
through :func:`~expertloop.engine.batch.worker_cache`, once per worker.
``params`` is a plain dict. ``OUTPUTS`` names what each step writes (the
suffixes after the image's output name).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.batch import worker_cache
from expertloop.engine.jobs import Job, run_job

#: output suffixes of each step
OUTPUTS = {
    "blood": (".regions.csv", ".coco.json"),
    "flim": ("_flim_labels.tif",),
    "spots": ("_spots.csv",),
    "membranes": ("_membranes.tif",),
}


def _read(source: Path, *, lazy: bool = False, grey: str | None = None):
    from expertloop.io import read_image

    item = read_image(source, lazy=lazy)[0]
    if grey and item.meta.get("rgb"):
        raise ValueError(f"{source.name} is RGB: {grey}")
    return item


def _on_device(model, device):
    from expertloop.engine.device import select_device

    return model.to(select_device(device))


# ---------------------------------------------------------------- features
def feature_pca_image(source: Path, paths, name: str, params: dict[str, Any]) -> Job[str]:
    """CNN feature PCA image (RGB uint8 TIFF, pixel size times the stride).
    Output suffix: ``_<backbone>_features.tif``."""
    from expertloop.engine.features import feature_pca
    from expertloop.io import write_tiff

    item = _read(source)
    rgb, stride = yield from feature_pca(
        np.asarray(item.data), params["backbone"], pretrained=params.get("pretrained", "auto"),
        tile=params.get("tile", 512), rgb=bool(item.meta.get("rgb")), device=params.get("device"),
        seed=params.get("seed", 0))
    scale = [float(s) for s in item.meta.get("scale", [1.0] * (rgb.ndim - 1))]
    scale[-2:] = [s * stride for s in scale[-2:]]
    write_tiff(paths[0], (rgb * 255).astype(np.uint8), {"rgb": True, "scale": scale})
    return f"features at stride {stride}"


# ---------------------------------------------------------------- blood
def _blood_model(path: str, device):
    """The model and the thresholds saved with it (the cached model is shared
    by the images of every batch in this process: it is never changed)."""
    from expertloop.engine.blood import load_blood_model

    model = load_blood_model(path, device=device)
    return model, model.thresholds()


def blood_predict(source: Path, paths, name: str, params: dict[str, Any]) -> str:
    """Detect and classify cells; write the image's CSV rows and COCO file
    (``params["display_names"]``: the image names written there, by source path)."""
    from expertloop.engine.blood import predict_image
    from expertloop.io.blood_formats import (
        results_to_annotations,
        results_to_rows,
        write_coco,
        write_csv,
    )

    model, saved = worker_cache(_blood_model, params["model"], params.get("device"))
    given = {k: v for k, v in params.get("thresholds", {}).items() if v is not None}
    th = {**saved, **given}
    thr, tthr = th["score_threshold"], th["type_threshold"]
    item = _read(source)
    data = np.asarray(item.data)
    rgb = bool(item.meta.get("rgb"))
    notes = []
    if data.ndim > (3 if rgb else 2):
        notes.append("a stack: used its first plane")
        data = data.reshape((-1,) + data.shape[-(3 if rgb else 2):])[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = run_job(predict_image(model, data, score_threshold=th["candidate_floor"],
                                    name=params.get("display_names", {}).get(str(source), source.name),
                                    device=params.get("device")))
    notes += [f"warning: {w.message}" for w in caught]
    write_csv(paths[0], results_to_rows([res], thr, tthr))
    write_coco(paths[1], results_to_annotations([res], thr, tthr), categories=model.det_classes)
    s = res.summary(thr, tthr)
    types = ", ".join(f"{t} {n}" for t, n in s["per_type"].items() if n)
    abnormal = f"{s['abnormal_regions']} abnormal" if s["abnormal_trained"] else "abnormal not trained"
    return "; ".join([f"{s['regions']} regions, {abnormal}"]
                     + ([types] if types else []) + notes)


# ---------------------------------------------------------------- FLIM
def _flim_network(path: str, device):
    from expertloop.engine.flim import load_network

    return _on_device(load_network(path), device)


def flim_segment(source: Path, paths, name: str, params: dict[str, Any]) -> Job[str]:
    """Segment with a saved FLIM network; write the class labels as TIFF. The
    image is read lazily, tile by tile (``predict_blocks``)."""
    from expertloop.engine.flim import predict_blocks
    from expertloop.io import write_tiff

    net = worker_cache(_flim_network, params["model"], params.get("device"))
    item = _read(source, lazy=True, grey="RGB images are not supported by the FLIM commands; convert to grey first")
    data = item.data[0] if isinstance(item.data, list) else item.data  # level 0 of a pyramid
    cls = yield from predict_blocks(net, data, tile=params.get("tile", 512))
    if params.get("background_zero"):
        cls[cls == 1] = 0
    write_tiff(paths[0], cls, {"name": f"{name}_flim_labels", "scale": item.meta.get("scale")})
    return f"{len(np.unique(cls))} classes"


# ---------------------------------------------------------------- spots
def _spot_detector(path: str, device):
    from expertloop.engine.spots.lcnn import SpotDetector

    det = SpotDetector.load(path)
    _on_device(det.model, device)
    return det


def spots_detect(source: Path, paths, name: str, params: dict[str, Any]) -> Job[str]:
    """Detect 3D spots; write ``z, y, x, probability, n_slices, n_patches`` as CSV."""
    from expertloop.engine.spots.lcnn import detect_spots

    det = worker_cache(_spot_detector, params["model"], params.get("device"))
    item = _read(source)
    if item.meta.get("rgb") or item.data.ndim != 3:
        raise ValueError(f"a {'colour' if item.meta.get('rgb') else f'{item.data.ndim}D'} image "
                         f"(shape {tuple(item.data.shape)}); the spot detector works on 3D "
                         "grey-level volumes")
    found = yield from detect_spots(det, item.data)
    s = found.spots(params.get("threshold"), params.get("join_radius"))  # None: SpotSelection's defaults
    table = np.column_stack([s["points"], s["probability"], s["n_slices"], s["n_patches"]])
    np.savetxt(paths[0], table, delimiter=",", header="z,y,x,probability,n_slices,n_patches",
               comments="", fmt=["%.2f", "%.2f", "%.2f", "%.4f", "%d", "%d"])
    return f"{len(table)} spots"


# ---------------------------------------------------------------- membranes
def _membrane_net(path: str, device):
    from expertloop.engine.membranes.net import load_net

    return _on_device(load_net(path)[0], device)


def membranes_predict(source: Path, paths, name: str, params: dict[str, Any]) -> str:
    """P(membrane) of every pixel (float32 TIFF), plane by plane for a stack:
    the image is read lazily, tile by tile (``predict_dense`` is block-wise),
    and one output plane is in memory at a time."""
    import tifffile

    from expertloop.engine.membranes.net import predict_dense

    model = worker_cache(_membrane_net, params["model"], params.get("device"))
    item = _read(source, lazy=True, grey="membrane images must be grayscale")
    data = item.data[0] if isinstance(item.data, list) else item.data  # level 0 of a pyramid
    if data.ndim not in (2, 3):
        raise ValueError(f"{source.name}: a {data.ndim}-D image; membranes predict takes 2D images or stacks of them")
    planes = data[None] if data.ndim == 2 else data
    scale = list(item.meta.get("scale") or [1.0] * data.ndim)
    meta = {"axes": "ZYX" if data.ndim == 3 else "YX"}
    if data.ndim == 3:
        meta["spacing"] = float(scale[0])
    def probabilities():
        for z in range(len(planes)):
            yield run_job(predict_dense(model, planes[z], tile=params.get("tile", 1024),
                                        device=params.get("device")))

    tifffile.imwrite(str(paths[0]), probabilities(), shape=tuple(data.shape), dtype=np.float32,
                     imagej=True, metadata=meta, resolution=(1.0 / float(scale[-1]), 1.0 / float(scale[-2])))
    return f"{len(planes)} plane{'s' if len(planes) > 1 else ''}"
