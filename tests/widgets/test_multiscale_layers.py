"""Widgets on multiscale layers work on level 0 and align their results with it."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from expertloop.io.flim_markers import read_lids_markers
from expertloop.widgets._common import layer_array

TIMEOUT = 60_000
SCALE, TRANSLATE = (0.5, 0.25), (3.0, -2.0)


def _nuclei(data_dir):
    d = data_dir / "flim"
    img = tifffile.imread(d / "dsb2018_nuclei_128.tif")
    return img, read_lids_markers(d / "dsb2018_nuclei_128_markers.txt")


def test_layer_array_level_zero_and_plain(make_napari_viewer):
    viewer = make_napari_viewer()
    base = np.arange(128 * 128, dtype=np.float32).reshape(128, 128)
    lazy0 = da.from_array(base, chunks=32)
    ms = viewer.add_image([lazy0, lazy0[::2, ::2]], multiscale=True, name="pyr", scale=SCALE, translate=TRANSLATE)
    assert np.asarray(ms.data).shape == (64, 64)  # the trap this helper avoids
    data, scale, translate = layer_array(ms)
    assert data is lazy0 and isinstance(data, da.Array)  # level 0, not read
    np.testing.assert_allclose(scale, SCALE)
    np.testing.assert_allclose(translate, TRANSLATE)
    d1, s1, t1 = layer_array(ms, level=1)
    assert d1.shape == (64, 64)
    np.testing.assert_allclose(s1, np.array(SCALE) * 2)
    np.testing.assert_allclose(t1, TRANSLATE)
    with pytest.raises(ValueError, match="2 resolution levels"):
        layer_array(ms, level=2)
    plain = viewer.add_image(base, name="plain", scale=SCALE)
    data, scale, translate = layer_array(plain)
    assert data is plain.data
    np.testing.assert_allclose(scale, SCALE)
    np.testing.assert_allclose(translate, (0, 0))


def test_flim_segment_on_multiscale_aligns_with_level_zero(make_napari_viewer, qtbot, data_dir):
    from expertloop.widgets.flim import FlimEncoderWidget

    img, mk = _nuclei(data_dir)
    viewer = make_napari_viewer()
    level0 = da.from_array(img, chunks=64)
    viewer.add_image([level0, level0[::2, ::2]], multiscale=True, name="pyr", scale=SCALE, translate=TRANSLATE)
    w = FlimEncoderWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.image.value = viewer.layers["pyr"]
    lab = w.new_markers()
    assert lab.data.shape == img.shape
    np.testing.assert_allclose(lab.scale, SCALE)
    np.testing.assert_allclose(lab.translate, TRANSLATE)
    lab.data = mk.astype(np.uint8)
    w.filters.value = 4
    w.fit()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.encoder is not None
    w.decoder.value = "pixel"
    w.train()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    assert w.network is not None
    w.segment()
    qtbot.waitUntil(lambda: not w.runner.running, timeout=TIMEOUT)
    seg = viewer.layers["pyr FLIM segmentation"]
    assert seg.data.shape == (128, 128)  # level 0, not the 64x64 level
    np.testing.assert_allclose(seg.scale, SCALE)
    np.testing.assert_allclose(seg.translate, TRANSLATE)
    # the same world point lands on the same pixel of the source level 0 and the result
    world = seg.data_to_world((100, 17))
    np.testing.assert_allclose(viewer.layers["pyr"].world_to_data(world), (100, 17))
    assert set(np.unique(seg.data)) >= {2}  # objects found on the full-resolution image
