"""The shared dock plot shows series and reports picks."""

import pytest

from expertloop.widgets._plot import PlotWidget


def test_plot_widget_shows_series_and_picks(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    picks = []
    plot = PlotWidget("F-score per round", "round", "F-score", on_pick=lambda n, i: picks.append((n, i)))
    viewer.window.add_dock_widget(plot, name="scores")
    plot.set_series({"threshold": ([0, 1, 2], [0.5, 0.6, 0.7]), "random": ([0, 1], [0.5, 0.55])})
    lines = {ln.get_label(): ln for ln in plot.axes.get_lines()}
    assert set(lines) == {"threshold", "random"}
    assert list(lines["threshold"].get_ydata()) == [0.5, 0.6, 0.7]
    assert plot.series["random"] == ([0.0, 1.0], [0.5, 0.55])

    class Event:
        artist = lines["random"]
        ind = [1]

    plot._picked(Event())
    assert picks == [("random", 1)]
    with pytest.raises(ValueError, match="2 x values but 1"):
        plot.set_series({"bad": ([0, 1], [1])})
