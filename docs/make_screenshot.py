"""Make docs/images/screenshot.png from a real napari viewer.

    xvfb-run -a -s '-screen 0 1400x850x24' python docs/make_screenshot.py

Opens the nuclei sample, runs the Deep features widget (ImageNet MobileNetV2
weights if they are in the torch hub cache, random weights otherwise) and
saves a screenshot of the whole window.
"""

import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
viewer.open_sample("napari-expertloop", "nuclei")
_, widget = viewer.window.add_plugin_dock_widget("napari-expertloop", "Deep features")
widget.tile.value = 256
widget.run()
app = QApplication.instance()
t0 = time.time()
while widget.runner.running and time.time() - t0 < 300:
    app.processEvents()
    time.sleep(0.02)
for _ in range(20):
    app.processEvents()
out = Path(__file__).parent / "images" / "screenshot.png"
viewer.screenshot(str(out), canvas_only=False)
print("wrote", out, widget.runner.status)
viewer.close()
