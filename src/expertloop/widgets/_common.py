"""Small helpers shared by the widgets: layer look-ups, notifications, config controls."""

from __future__ import annotations

from typing import Any


def image_layer_choices(viewer) -> list[str]:
    from napari.layers import Image

    return [layer.name for layer in viewer.layers if isinstance(layer, Image)]


def layer_picker(viewer, layer_type: str, label: str, *, optional: bool = False) -> Any:
    """A drop-down of ``viewer``'s layers of one type (magicgui's napari layer annotation):
    its value is the layer itself (None when ``optional`` and nothing is chosen, or when
    the viewer has no such layer). ``layer_type``: a class name of :mod:`napari.layers`.
    The choices come from ``viewer`` (magicgui would look for the dock's viewer, and
    fall back to the current viewer while the widget is not docked)."""
    from magicgui.widgets import create_widget
    from napari import layers

    cls = getattr(layers, layer_type)
    annotation = cls | None if optional else cls
    options = {"nullable": optional, "choices": lambda _w: [ly for ly in viewer.layers if isinstance(ly, cls)]}
    return create_widget(annotation=annotation, label=label, options=options)


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


def follow_layers(viewer, *controls: Any) -> None:
    """Keep layer pickers current: their choices are refreshed whenever a layer
    is added, removed or renamed (by any dock or by the user), and a picker
    showing a layer that is renamed shows its new name. ``controls`` are
    magicgui ComboBox/Select widgets whose choices are layer names."""
    names: dict[int, str] = {}

    def refresh(old: str | None = None, new: str | None = None) -> None:
        for c in controls:
            value = c.value
            c.reset_choices()
            if old is None or new is None or new not in c.choices:
                continue
            if isinstance(value, (list, tuple)) and old in value:
                c.value = [new if v == old else v for v in value]
            elif value == old:
                c.value = new

    def renamed(event) -> None:
        layer = event.source
        old, names[id(layer)] = names.get(id(layer)), layer.name
        refresh(old, layer.name)

    def watch(layer) -> None:
        names[id(layer)] = layer.name
        layer.events.name.connect(renamed)

    def inserted(event) -> None:
        watch(event.value)
        refresh()

    def removed(event) -> None:
        names.pop(id(event.value), None)
        event.value.events.name.disconnect(renamed)
        refresh()

    for layer in viewer.layers:
        watch(layer)
    viewer.layers.events.inserted.connect(inserted)
    viewer.layers.events.removed.connect(removed)


def notify(title: str, message: str, level: str = "info") -> None:
    """Tell the user ``"title: message"`` as a napari notification: the
    widgets' one way to do it. ``title`` names the widget; ``level`` is
    "info", "warning" or "error"."""
    from napari.utils import notifications

    if level not in ("info", "warning", "error"):
        raise ValueError(f"level must be info, warning or error, got {level!r}")
    getattr(notifications, f"show_{level}")(f"{title}: {message}")


class ConfigControls:
    """magicgui controls made from a config dataclass (see :mod:`expertloop.engine.config`).

    ``controls[name]`` is one control per widget parameter, with the label,
    range, choices, tooltip and default the config declares. :meth:`fill`
    shows a config's values (and locks the fixed ones once a project is
    open); :meth:`values` reads the controls back; :meth:`bind` calls a
    function with ``{name: value}`` whenever the user edits a control, so
    the front end can write it to the config in force.
    """

    def __init__(self, config_cls: type, names=None) -> None:
        from magicgui.widgets import create_widget

        from expertloop.engine.config import control_specs

        self.config_cls = config_cls
        self.fixed: set[str] = set()
        self.controls: dict[str, Any] = {}
        for spec in control_specs(config_cls, names):
            if spec.pop("fixed"):
                self.fixed.add(spec["name"])
            self.controls[spec["name"]] = create_widget(**spec)
        self._filling = False
        self._bound = None
        for name, control in self.controls.items():
            control.changed.connect(lambda value, name=name: self._edited(name, value))

    @property
    def widgets(self) -> list[Any]:
        return list(self.controls.values())

    def __getitem__(self, name: str) -> Any:
        return self.controls[name]

    def values(self) -> dict[str, Any]:
        return {name: c.value for name, c in self.controls.items()}

    def fill(self, config: Any, *, lock_fixed: bool = True) -> None:
        """Show ``config``'s values; fixed parameters become read-only when ``lock_fixed``
        (a project is open), editable otherwise (a new one is being set up)."""
        from expertloop.engine.config import current_values

        self._filling = True
        try:
            for name, value in current_values(config, list(self.controls)).items():
                self.controls[name].value = value
        finally:
            self._filling = False
        for name in self.fixed:
            self.controls[name].enabled = not lock_fixed

    def bind(self, on_edit) -> None:
        """Call ``on_edit({name: value})`` after each user edit (not during :meth:`fill`)."""
        self._bound = on_edit

    def _edited(self, name: str, value: Any) -> None:
        if self._filling or self._bound is None:
            return
        self._bound({name: value})


#: tallest a dock asks to be (napari's dock title bar comes on top): fits a 1080-px screen
DOCK_MAX_HEIGHT = 860


def fit_dock(widget: Any, max_height: int = DOCK_MAX_HEIGHT) -> Any:
    """Put a dock's contents in a vertical scroll area, so that it fits the screen
    and keeps its width; every dock calls this at the end of its ``__init__``.

    ``widget`` is a magicgui ``Container`` or a ``QWidget`` with a layout. Its
    layout (with every control in it) moves into the scroll area, so magicgui
    keeps managing it as before. The dock asks for its contents' height up to
    ``max_height`` (scrolling beyond that) and for the width its contents had
    when first shown: text or tables that grow later scroll sideways instead of
    widening the dock and squeezing the canvas. Returns the scroll area.
    """
    from qtpy.QtCore import QSize, Qt
    from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

    class _DockScroll(QScrollArea):
        def __init__(self, inner: QWidget) -> None:
            super().__init__()
            self.setWidgetResizable(True)
            self.setFrameShape(QFrame.Shape.NoFrame)
            self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
            self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
            self.setWidget(inner)
            self.width_kept: int | None = None

        def _width(self) -> int:
            if self.width_kept is not None:
                return self.width_kept
            return self.widget().sizeHint().width() + self.verticalScrollBar().sizeHint().width()

        def showEvent(self, event) -> None:
            if self.width_kept is None:
                self.width_kept = self._width()
            super().showEvent(event)

        def sizeHint(self) -> QSize:
            return QSize(self._width(), min(self.widget().sizeHint().height(), max_height))

        def minimumSizeHint(self) -> QSize:
            return QSize(self._width(), min(self.widget().minimumSizeHint().height(), 200))

    host = getattr(widget, "native", widget)
    inner = QWidget()
    inner.setLayout(host.layout())  # reparents the layout and its controls
    scroll = _DockScroll(inner)
    outer = QVBoxLayout(host)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    return scroll
