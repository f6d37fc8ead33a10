"""Small helpers shared by the widgets (layer look-ups)."""

from __future__ import annotations

from typing import Any


def image_layer_choices(viewer) -> list[str]:
    from napari.layers import Image

    return [layer.name for layer in viewer.layers if isinstance(layer, Image)]


def layer_by_name(viewer, name: str | None) -> Any:
    if not name or name not in viewer.layers:
        return None
    return viewer.layers[name]


def layer_array(layer, level: int = 0) -> tuple[Any, Any, Any]:
    """``(array, scale, translate)`` of one resolution level of ``layer``, not read.

    A multiscale layer's ``data`` is a list of levels, and ``np.asarray`` on it
    gives the *smallest* level; this picks ``level`` (0 = full resolution) and
    the scale/translate a result layer of that level's shape needs to overlay
    the source. A plain layer's data comes back unchanged. The array may be
    lazy (dask, zarr): read it (``np.asarray``) in the worker, not on the GUI thread.
    """
    import numpy as np

    scale = np.asarray(layer.scale, float)
    translate = np.asarray(layer.translate, float)
    if not getattr(layer, "multiscale", False):
        if level != 0:
            raise ValueError(f"layer '{layer.name}' has one resolution level, not level {level}")
        return layer.data, scale, translate
    levels = layer.data
    if not 0 <= level < len(levels):
        raise ValueError(f"layer '{layer.name}' has {len(levels)} resolution levels, not level {level}")
    data = levels[level]
    # napari's level k is drawn with scale * (level-0 shape / level-k shape), same origin
    factor = np.ones_like(scale)
    n = len(scale)
    factor[:] = np.asarray(levels[0].shape[:n], float) / np.asarray(data.shape[:n], float)
    return data, scale * factor, translate
