"""A small matplotlib plot for dock widgets (learning curves, scores per round).

::

    plot = PlotWidget("F-score per round", "round", "F-score")
    plot.set_series({"validation": ([0, 1, 2], [0.61, 0.70, 0.74])})
    viewer.window.add_dock_widget(plot, name="F-score", area="right")

``PlotWidget`` is a magicgui widget (it can go inside a ``Container``); its
matplotlib ``figure`` and ``axes`` are public for extra drawing (call
:meth:`draw` afterwards). ``on_pick`` (optional) is called with
``(series_name, index)`` when the user clicks a point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from magicgui.widgets import Container


class PlotWidget(Container):
    def __init__(self, title: str = "", xlabel: str = "", ylabel: str = "",
                 *, height: int = 220, on_pick: Callable[[str, int], None] | None = None) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        super().__init__(labels=False)
        self.figure = Figure(figsize=(4, 2.5), layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height)
        self.axes = self.figure.add_subplot()
        self._title, self._xlabel, self._ylabel = title, xlabel, ylabel
        self._series: dict[str, tuple[list[float], list[float]]] = {}
        self.on_pick = on_pick
        self.canvas.mpl_connect("pick_event", self._picked)
        self.native.layout().addWidget(self.canvas)
        self._redraw()

    @property
    def series(self) -> dict[str, tuple[list[float], list[float]]]:
        """The data on display, ``{name: (xs, ys)}`` (a copy)."""
        return {k: (list(x), list(y)) for k, (x, y) in self._series.items()}

    def set_series(self, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                   *, style: str = "o-") -> None:
        """Replace what is shown with one line per entry ``name: (xs, ys)``."""
        clean = {}
        for name, (xs, ys) in series.items():
            xs, ys = [float(v) for v in xs], [float(v) for v in ys]
            if len(xs) != len(ys):
                raise ValueError(f"series {name!r}: {len(xs)} x values but {len(ys)} y values")
            clean[name] = (xs, ys)
        self._series = clean
        self._style = style
        self._redraw()

    def _redraw(self) -> None:
        ax = self.axes
        ax.clear()
        for name, (xs, ys) in self._series.items():
            ax.plot(xs, ys, getattr(self, "_style", "o-"), label=name, picker=5, gid=name)
        ax.set_title(self._title, fontsize=9)
        ax.set_xlabel(self._xlabel, fontsize=8)
        ax.set_ylabel(self._ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if len(self._series) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        self.draw()

    def draw(self) -> None:
        self.canvas.draw_idle()

    def _picked(self, event) -> None:
        if self.on_pick is None or not len(getattr(event, "ind", [])):
            return
        self.on_pick(event.artist.get_gid(), int(event.ind[0]))
