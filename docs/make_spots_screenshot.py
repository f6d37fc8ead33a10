"""Make docs/images/spots_widgets.png from a real napari viewer.

    xvfb-run -a -s '-screen 0 1500x950x24' python docs/make_spots_screenshot.py

Plants SIMULATED spots into the Colin27 sample (a 40-slice slab), docks the
Spot annotator and the Spot detector, records the simulated expert's clicks
through the annotator (the same code path as mouse clicks), trains a small
L-CNN, detects spots and saves a screenshot of the whole window.
"""

import tempfile
import time
from importlib.resources import files
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

from expertloop.engine.spots import make_phantom, simulate_expert
from expertloop.io import read_image

mri = read_image(files("expertloop") / "data" / "colin27_t1_brain.nii.gz")[0].data
phantom = make_phantom(mri[70:110], 60, seed=0)
viewer = napari.Viewer(show=True)
viewer.add_image(phantom.volume, name="phantom", colormap="gray")
_, ann = viewer.window.add_plugin_dock_widget("napari-expertloop", "Spot annotator")
_, det = viewer.window.add_plugin_dock_widget("napari-expertloop", "Spot detector")
ann.folder.value = tempfile.mkdtemp()
ann.image.value = "phantom"
ann.start()
clicks = simulate_expert(phantom, seed=0)
for z, y, x in zip(clicks["z"], clicks["y"], clicks["x"]):
    ann.click((z, y, x))
app = QApplication.instance()


def wait():
    t0 = time.time()
    while det.runner.running and time.time() - t0 < 600:
        app.processEvents()
        time.sleep(0.02)


det.train_images.reset_choices()
det.train_images.value = ["phantom"]
det.epochs.value, det.source_epochs.value, det.max_negatives.value = 4, 20, 5000
det.train()
wait()
det.image.value = "phantom"
det.predict()
wait()
det.threshold.value = 0.7
viewer.dims.set_current_step(0, 20)
viewer.layers["phantom spots"].mode = "pan_zoom"
for _ in range(20):
    app.processEvents()
out = Path(__file__).parent / "images" / "spots_widgets.png"
viewer.screenshot(str(out), canvas_only=False)
print("wrote", out, det.info.value)
viewer.close()
