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
