"""FLIM widgets in a real viewer: marker encoder and image recommendation dock."""

from __future__ import annotations

import contextlib

import numpy as np
import tifffile

from expertloop.engine.metrics import dice
from expertloop.io.flim_markers import read_lids_markers

TIMEOUT = 60_000


def _nuclei(data_dir):
    d = data_dir / "flim"
    img = tifffile.imread(d / "dsb2018_nuclei_128.tif")
    mask = tifffile.imread(d / "dsb2018_nuclei_128_mask.tif")
    mk = read_lids_markers(d / "dsb2018_nuclei_128_markers.txt")
    return img, mask, mk


def test_marker_encoder_fit_features_decoder_segment_save(make_napari_viewer, qtbot, data_dir, tmp_path,
                                                          record_threads):
    import expertloop.engine.flim as flim
    from expertloop.widgets.flim import FlimEncoderWidget

    saves, loads = record_threads(flim, "save_network"), record_threads(flim, "load_network")
    feature_maps = record_threads(flim, "feature_stack")

    img, mask, mk = _nuclei(data_dir)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="nuclei")
    w = FlimEncoderWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image.value = viewer.layers["nuclei"]  # a layer picker: its value is the layer
    lab = w.new_markers()
    assert lab.data.shape == img.shape and w.markers.value is lab and lab.name == "nuclei markers"
    lab.data = mk.astype(np.uint8)
    w.filters.value = 4
    w.fit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.encoder is not None and w.report.classes == [1, 2]
    feats = viewer.layers["nuclei FLIM features"]
    assert feats.data.shape == (8, 128, 128)  # 4 filters x 2 classes, channel slider first
    assert feature_maps == [False]  # computed in the worker, with its contrast limits
    np.testing.assert_allclose(feats.contrast_limits, (feats.data.min(), feats.data.max()), rtol=1e-5)
    w.decoder.value = "pixel"
    w.train()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.network is not None and w.network.kind == "pixel"
    w.segment()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    seg = viewer.layers["nuclei FLIM segmentation"].data
    assert seg.shape == img.shape and set(np.unique(seg)) <= {0, 2}
    assert dice(seg == 2, mask > 0) > 0.6
    w.model_file.value = tmp_path / "net.pt"
    w.save()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert (tmp_path / "net.pt").exists()
    w.network = None
    w.load()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.network is not None and w.network.kind == "pixel"
    fresh = FlimEncoderWidget(viewer)  # a loaded network's architecture fills the controls
    fresh.model_file.value = tmp_path / "net.pt"
    assert fresh.filters.value != 4 and fresh.load() is not None
    qtbot.waitUntil(lambda: not fresh.runner.running, timeout=TIMEOUT)
    assert saves == [False] and loads == [False, False]  # model files read and written off the GUI thread
    assert fresh.filters.value == 4 and fresh.n_layers.value == w.n_layers.value
    # the U-Net decoder trained on a dense mask layer (e.g. ground truth) instead of the markers
    viewer.add_labels(mask, name="truth")
    w.decoder.value, w.steps.value, w.train_labels.value = "unet", 3, viewer.layers["truth"]
    w.train()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.network.kind == "unet" and w.network.classes == [1, 2]


def test_marker_encoder_bad_inputs_notify(make_napari_viewer, qtbot, data_dir, notifications):
    from expertloop.widgets.flim import FlimEncoderWidget

    img, _, mk = _nuclei(data_dir)
    viewer = make_napari_viewer()
    viewer.add_image(img, name="nuclei")
    viewer.add_labels(np.zeros_like(mk), name="empty")
    w = FlimEncoderWidget(viewer)
    w.image.value, w.markers.value = viewer.layers["nuclei"], viewer.layers["empty"]
    # layer pickers (magicgui layer annotations): the layers of one type, not names
    assert w.image.choices == (viewer.layers["nuclei"],) and w.markers.choices == (viewer.layers["empty"],)
    assert w.train_labels.choices == (None, viewer.layers["empty"]) and w.train_labels.value is None
    w.fit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.encoder is None
    assert any("no markers" in str(n.message) for n in notifications)
    w.train()
    assert any("fit the encoder first" in str(n.message) for n in notifications)
    viewer.add_labels(np.zeros((5, 5), np.uint8), name="small")
    w.markers.value = viewer.layers["small"]
    w.fit()
    assert any("do not match the image" in str(n.message) for n in notifications)


def test_folder_stack_and_recommendation_dock_click_loads_image(make_napari_viewer, qtbot, data_dir, tmp_path,
                                                                record_threads):
    from matplotlib.backend_bases import MouseEvent

    import expertloop.engine.flim as flim
    import expertloop.io.flim_images as flim_images
    from expertloop.widgets.flim import FlimRecommendWidget

    img, mask, _ = _nuclei(data_dir)
    crops = [img[:64, :64], img[64:, :64], img[:64, 64:], img[64:, 64:],
             np.full((64, 64), int(img.min()), img.dtype)]
    for i, c in enumerate(crops):
        tifffile.imwrite(tmp_path / f"img{i}.tif", c)
    viewer = make_napari_viewer()
    w = FlimRecommendWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.folder.value = tmp_path
    reads, heats = record_threads(flim_images, "read_image"), record_threads(flim, "heatmap")
    w.open_folder()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    layer = w.image.value
    assert layer.data.shape == (5, 64, 64) and layer.metadata["flim_files"][4] == "img4.tif"
    lab = w.new_markers()
    from expertloop.engine.flim import simulate_markers

    mk = np.zeros((5, 64, 64), np.uint8)
    mk[0] = simulate_markers(mask[:64, :64], n_objects=3)
    lab.data = mk
    w.filters.value = 2
    w.n_segments.value = 16
    w.run()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    rec = w.result.recommendation
    assert rec.marked == [0] and len(rec.farthest) == 3 and 4 in rec.farthest
    assert w.result.points.shape == (5, 2)
    assert len(w.ranked.choices) == 6
    # the scatter: click on the farthest image's point
    w.plot.canvas.draw()
    target = rec.farthest[0]
    x, y = w.plot.axes.transData.transform(w.result.points[target])
    MouseEvent("motion_notify_event", w.plot.canvas, x, y)._process()
    assert f"img{target}.tif" in w.hover.value
    MouseEvent("button_press_event", w.plot.canvas, x, y, button=1)._process()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.inspected == target
    assert len(reads) == 5 and heats == [False] and not any(reads)  # folder and heatmap off the GUI thread
    np.testing.assert_array_equal(viewer.layers["FLIM inspected image"].data, crops[target])
    heat = viewer.layers["FLIM heatmap"].data
    assert heat.shape == (64, 64) and 0 <= heat.min() and heat.max() <= 1
    assert viewer.dims.current_step[0] == target
    w.mark_next()
    assert w.next_image == target and viewer.layers.selection.active is lab and lab.mode == "paint"
    assert not viewer.layers["FLIM heatmap"].visible


def test_marker_encoder_on_a_3d_volume(make_napari_viewer, qtbot, data_dir):
    from expertloop.engine.flim import simulate_markers
    from expertloop.widgets.flim import FlimEncoderWidget

    d = data_dir / "flim"
    vol = tifffile.imread(d / "cells3d_nuclei_16x64x64.tif")
    lab = tifffile.imread(d / "cells3d_nuclei_16x64x64_labels.tif")
    viewer = make_napari_viewer()
    viewer.add_image(vol, name="vol")
    viewer.add_labels(simulate_markers(lab, n_objects=3), name="vol markers")
    w = FlimEncoderWidget(viewer)
    w.image.value, w.markers.value = viewer.layers["vol"], viewer.layers["vol markers"]
    w.n_layers.value, w.filters.value = 1, 3
    w.fit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.encoder is not None and w.encoder.spec.ndim == 3
    assert viewer.layers["vol FLIM features"].data.shape == (6, 16, 64, 64)
    w.train()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    w.segment()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    seg = viewer.layers["vol FLIM segmentation"].data
    assert seg.shape == vol.shape and dice(seg == 2, lab > 0) > 0.5


def test_reading_a_folder_can_be_cancelled_and_planes_get_their_own_contrast(make_napari_viewer, qtbot, tmp_path,
                                                                               record_threads):
    import threading

    import expertloop.io.flim_images as flim_images
    from expertloop.widgets.flim import FlimEncoderWidget

    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    for i in range(4):  # images of very different ranges: 0..50, 0..100, ...
        tifffile.imwrite(tmp_path / f"img{i}.tif", (ramp * 50 * (i + 1)).astype(np.uint8))
    gate = threading.Event()
    reads = record_threads(flim_images, "read_image", gate)
    viewer = make_napari_viewer()
    w = FlimEncoderWidget(viewer)
    w.folder.value = tmp_path
    w.open_folder()
    qtbot.waitUntil(lambda: len(reads) == 1, timeout=5000)
    w.runner._cancel_btn.clicked.emit()
    gate.set()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=10000)
    assert reads == [False] and len(viewer.layers) == 0 and "cancelled" in w.runner.status
    # read to the end: each plane is shown with its own contrast (issue 19 item 6)
    w.open_folder()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=10000)
    layer = w.image.value
    assert layer.data.shape == (4, 16, 16)
    shown = viewer.dims.current_step[0]
    np.testing.assert_allclose(layer.contrast_limits, (0, 50 * (shown + 1)))
    viewer.dims.set_current_step(0, 0)
    np.testing.assert_allclose(layer.contrast_limits, (0, 50))
    viewer.dims.set_current_step(0, 3)
    np.testing.assert_allclose(layer.contrast_limits, (0, 200))


def test_load_a_bioimageio_package_as_flim_network(make_napari_viewer, qtbot, data_dir, tmp_path, notifications,
                                                   monkeypatch):
    """Issue 16: a package written by export_flim_model loads from the dock (and says so without the extra)."""
    import sys

    import pytest

    from expertloop.engine.flim import fit_encoder, fit_pixel_head, parse_spec
    from expertloop.engine.flim.decoder import predict
    from expertloop.engine.jobs import run_job
    from expertloop.widgets.flim import FlimEncoderWidget

    img, _, mk = _nuclei(data_dir)
    img = np.ascontiguousarray(img[:64, :64]).astype(np.float32)
    mk = np.ascontiguousarray(mk[:64, :64])
    viewer = make_napari_viewer()
    w = FlimEncoderWidget(viewer)
    w.package.value = tmp_path / "flim.zip"
    with monkeypatch.context() as m:  # no bioimageio extra installed
        m.setitem(sys.modules, "bioimageio.spec", None)
        w.package_btn.clicked.emit()
        qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.network is None
    assert any("needs the bioimageio extra" in str(n.message) and "pip install" in str(n.message)
               for n in notifications)
    pytest.importorskip("bioimageio.spec")
    from expertloop.engine.flim.bioimageio import export_flim_model

    enc, _ = run_job(fit_encoder([img], [mk], parse_spec({"layers": [{"filters_per_class": 2}]}), seed=0))
    net = run_job(fit_pixel_head(enc, [img], [mk], seed=0))
    export_flim_model(net, tmp_path / "flim.zip", img)
    w.package_btn.clicked.emit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.network is not None and w.network.classes == net.classes and w.encoder is w.network.encoder
    assert w.n_layers.value == 1 and w.filters.value == 2  # the controls show the package's architecture
    np.testing.assert_allclose(predict(w.network, img)[1], predict(net, img)[1], atol=1e-5)
    viewer.add_image(img, name="crop")
    w.image.value = viewer.layers["crop"]
    w.segment()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert viewer.layers["crop FLIM segmentation"].data.shape == img.shape


def test_lazy_layers_are_read_in_the_worker_not_on_the_gui_thread(make_napari_viewer, qtbot, data_dir):
    """Issue 14: a dask image and markers layer are read block by block in the job; the GUI
    thread reads only what napari draws (the planes shown), never the whole layer."""
    import threading

    import dask.array as da

    from expertloop.engine.flim import simulate_markers
    from expertloop.widgets.flim import FlimEncoderWidget

    img, mask, _ = _nuclei(data_dir)
    planes = np.stack([img[:64, :64], img[64:, :64], img[:64, 64:], img[64:, 64:]])
    marks = np.zeros(planes.shape, np.uint8)
    marks[0] = simulate_markers(mask[:64, :64], n_objects=3)
    on_gui: dict[str, set] = {"image": set(), "markers": set()}

    def lazy(arr, key):
        def block(b, block_info=None):
            if threading.current_thread() is threading.main_thread():
                on_gui[key].add(block_info[0]["chunk-location"][0])
            return b
        return da.from_array(arr, chunks=(1, 64, 64)).map_blocks(block, dtype=arr.dtype)

    import dask

    # blocks are computed in the thread that asks for them (dask's default pool would hide who asked)
    stack = contextlib.ExitStack()
    stack.enter_context(dask.config.set(scheduler="synchronous"))
    viewer = make_napari_viewer()
    viewer.add_image(lazy(planes, "image"), name="lazy", contrast_limits=(0, 255))
    viewer.add_labels(lazy(marks, "markers"), name="lazy markers")
    w = FlimEncoderWidget(viewer)
    w.image.value, w.markers.value = viewer.layers["lazy"], viewer.layers["lazy markers"]
    w.stack.value = True
    w.n_layers.value, w.filters.value = 1, 2
    w.fit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.encoder is not None and w.report.classes == [1, 2]
    w.decoder.value = "pixel"
    w.train()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    w.segment()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert viewer.layers["lazy FLIM segmentation"].data.shape == planes.shape
    stack.close()
    # napari reads the planes it draws (the plane axis moves when the 4D features layer comes);
    # reading a whole layer on the GUI thread would touch all 4
    assert len(on_gui["image"]) <= 2 and len(on_gui["markers"]) <= 2, on_gui


def test_folder_stack_contrast_is_computed_in_the_job_not_per_step(make_napari_viewer, qtbot, tmp_path,
                                                                   record_threads):
    """The per-plane limits of a folder stack are computed once, in the reading job: the layer
    is added with explicit limits and moving through the planes reads no pixels on the GUI thread."""
    import expertloop.widgets.flim as flim
    from expertloop.widgets.flim import LIMITS_KEY, FlimEncoderWidget

    ramp = np.linspace(0, 1, 16 * 16).reshape(16, 16)
    for i in range(3):
        tifffile.imwrite(tmp_path / f"img{i}.tif", (10 + ramp * 40 * (i + 1)).astype(np.uint8))
    limits_at = record_threads(flim, "_plane_limits")
    ranges_at = record_threads(flim, "_range")
    viewer = make_napari_viewer()
    w = FlimEncoderWidget(viewer)
    w.folder.value = tmp_path
    w.open_folder()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=10000)
    layer = w.image.value
    assert limits_at == [False], "plane limits not computed (once) in the worker"
    np.testing.assert_allclose(layer.metadata[LIMITS_KEY], [[10, 50], [10, 90], [10, 130]])
    for step in (0, 2, 1):
        viewer.dims.set_current_step(0, step)
        np.testing.assert_allclose(layer.contrast_limits, (10, 10 + 40 * (step + 1)))
    assert ranges_at == [], "pixels read on the GUI thread to set a plane's contrast"
