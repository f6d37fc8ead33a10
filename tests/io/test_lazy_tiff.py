"""Lazy TIFF reading: dask chunks per plane, OME units in µm, pyramids as multiscale."""

import dask.array as da
import numpy as np
import pytest
import tifffile

from expertloop.io.napari_hooks import read_layers
from expertloop.io.readers import read_image


def test_multipage_tiff_is_dask_one_chunk_per_plane(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (6, 40, 50), dtype=np.uint8)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol)
    data, meta, kind = read_layers(str(path))[0]
    assert isinstance(data, da.Array) and kind == "image"
    assert data.chunks[0] == (1,) * 6  # one plane per chunk: a plane reads one page
    np.testing.assert_array_equal(data[3].compute(), vol[3])
    # the eager path used by the engine is unchanged
    assert isinstance(read_image(path)[0].data, np.ndarray)


@pytest.mark.parametrize("unit,factor", [("nm", 1e-3), ("µm", 1.0), ("mm", 1e3)])
def test_ome_units_converted_to_um(tmp_path, unit, factor):
    path = tmp_path / "u.ome.tif"
    md = {"axes": "ZYX", "PhysicalSizeX": 200, "PhysicalSizeXUnit": unit,
          "PhysicalSizeY": 200, "PhysicalSizeYUnit": unit,
          "PhysicalSizeZ": 1, "PhysicalSizeZUnit": "µm"}  # fmt: skip
    tifffile.imwrite(path, np.zeros((3, 16, 16), np.uint8), ome=True, metadata=md)
    item = read_image(path, lazy=True)[0]
    assert item.meta["scale"] == pytest.approx([1.0, 200 * factor, 200 * factor])
    assert item.meta["metadata"]["units"] == "µm"
    assert item.meta["metadata"]["ome_units"]["X"] == unit


def test_pyramid_becomes_multiscale(tmp_path):
    vol = np.random.default_rng(1).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    path = tmp_path / "pyr.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        md = {"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tw.write(vol, subifds=2, tile=(32, 32), metadata=md)
        tw.write(vol[:, ::2, ::2], subfiletype=1, tile=(32, 32))
        tw.write(vol[:, ::4, ::4], subfiletype=1, tile=(16, 16))
    data, meta, _ = read_layers(str(path))[0]
    assert meta["multiscale"] is True and len(data) == 3
    assert [lv.shape for lv in data] == [(4, 64, 64), (4, 32, 32), (4, 16, 16)]
    assert meta["scale"] == pytest.approx([1.0, 0.5, 0.5])  # level 0's scale
    np.testing.assert_array_equal(data[1][2].compute(), vol[2, ::2, ::2])
