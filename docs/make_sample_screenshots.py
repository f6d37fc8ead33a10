"""Make the README's per-workflow screenshots from a real napari viewer.

    xvfb-run -a -s '-screen 0 1400x850x24' python docs/make_sample_screenshots.py

For each workflow, opens its sample (File > Open Sample > expertloop),
docks its widget and saves a screenshot of the whole window as
docs/images/sample_<key>.png. Nothing is trained: the pictures show what a
new user sees after opening the sample.
"""

from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

PLUGIN = "napari-expertloop"
SHOTS = {  # sample key -> widget to dock
    "blood": "Blood cell detector",
    "membranes": "Membrane active learning",
    "flim": "Marker encoder (FLIM)",
}

out_dir = Path(__file__).parent / "images"
for key, widget_name in SHOTS.items():
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1300, 800)
    viewer.open_sample(PLUGIN, key)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, widget_name)
    if key == "membranes":  # the controls the sample's layers go into
        widget.source_image.value = "EM source"
        widget.source_labels.value = "EM source truth"
        widget.target_image.value = "EM target"
        widget.val_image.value = "EM validation"
        widget.val_truth.value = "EM validation truth"
        viewer.layers.selection.active = viewer.layers["EM source"]
    for _ in range(30):  # let the dock take its width before fitting the view
        QApplication.instance().processEvents()
    viewer.reset_view()
    for _ in range(30):
        QApplication.instance().processEvents()
    out = out_dir / f"sample_{key}.png"
    viewer.screenshot(str(out), canvas_only=False)
    print("wrote", out)
    viewer.close()
