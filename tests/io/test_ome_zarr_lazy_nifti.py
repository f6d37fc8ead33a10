"""OME-Zarr (through ome-zarr-py) and lazy NIfTI (nibabel array proxy -> dask)."""

from __future__ import annotations

import dask.array as da
import nibabel as nib
import numpy as np
import pytest
import zarr

from expertloop.io import read_image
from expertloop.io.napari_hooks import napari_get_reader, read_layers
from expertloop.io.readers import ImageReadError, read_nifti


def write_ome_zarr(path, data, axes, scale, units, levels=2, chunks=None):
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    root = zarr.group(store=parse_url(str(path), mode="w").store)
    write_image(data, root, axes=axes, scale_factors=(2,) * (levels - 1), scale=scale, axes_units=units,
                storage_options={"chunks": chunks} if chunks else None)
    return path


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 255, (6, 64, 80), dtype=np.uint8)


def test_ome_zarr_pyramid_is_lazy_multiscale_in_micrometres(tmp_path, volume):
    path = write_ome_zarr(tmp_path / "em.ome.zarr", volume, "zyx", {"z": 40.0, "y": 4.0, "x": 4.0},
                          {"z": "nanometer", "y": "nanometer", "x": "nanometer"}, chunks=(1, 32, 32))
    assert napari_get_reader(str(path)) is read_layers  # a folder, but an OME-Zarr one
    assert napari_get_reader(str(tmp_path)) is None
    item = read_image(path, lazy=True)[0]
    assert item.meta["multiscale"] and isinstance(item.data, list) and len(item.data) == 2
    assert all(isinstance(lv, da.Array) for lv in item.data)
    assert item.data[0].numblocks == (6, 2, 3)  # chunked as stored: nothing read yet
    np.testing.assert_array_equal(item.data[0].compute(), volume)
    assert item.data[1].shape == (6, 32, 40)
    assert item.meta["scale"] == pytest.approx([0.04, 0.004, 0.004])  # nm -> µm
    md = item.meta["metadata"]
    assert md["units"] == "µm" and md["ome_units"]["X"] == "nanometer" and md["format"] == "ome-zarr"
    assert item.meta["name"] == "em"
    eager = read_image(path)[0]
    assert isinstance(eager.data, np.ndarray) and "multiscale" not in eager.meta
    np.testing.assert_array_equal(eager.data, volume)


def test_ome_zarr_channels_split_and_bad_folders(tmp_path, volume):
    two = np.stack([volume, 255 - volume])
    path = write_ome_zarr(tmp_path / "c.zarr", two, "czyx", {"c": 1.0, "z": 2.0, "y": 0.5, "x": 0.5},
                          {"z": "micrometer", "y": "micrometer", "x": "micrometer"}, levels=1)
    item = read_image(path, lazy=True)[0]
    assert item.meta["channel_axis"] == 0 and item.meta["name"] == ["c [ch0]", "c [ch1]"]
    assert item.meta["scale"] == pytest.approx([2.0, 0.5, 0.5]) and isinstance(item.data, da.Array)
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(ImageReadError, match="not an OME-Zarr image"):
        read_image(tmp_path / "empty.zarr")
    plain = tmp_path / "plain.zarr"
    zarr.create_array(str(plain), shape=(4, 4), dtype="u1")
    with pytest.raises(ImageReadError, match="not an OME-Zarr image|without an OME-Zarr multiscale image"):
        read_image(plain)


def test_ome_zarr_in_a_real_viewer_and_a_workflow_on_level_0(make_napari_viewer, tmp_path, volume):
    from expertloop.engine.jobs import run_job
    from expertloop.engine.membranes.net import NetConfig, build_net, predict_dense
    from expertloop.widgets._common import layer_array

    path = write_ome_zarr(tmp_path / "em.ome.zarr", volume, "zyx", {"z": 50.0, "y": 5.0, "x": 5.0},
                          {"z": "nanometer", "y": "nanometer", "x": "nanometer"})
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), plugin="napari-expertloop")
    layer = layers[0]
    assert layer.multiscale and len(layer.data) == 2
    data, scale, _ = layer_array(layer, 0)
    assert data.shape == volume.shape and scale == pytest.approx([0.05, 0.005, 0.005])
    net = build_net(NetConfig(window=16, channels=(4, 4, 4), hidden=(8, 8)), seed=0)
    prob = run_job(predict_dense(net, np.asarray(data[2])))
    out = viewer.add_image(prob, scale=scale[1:], name="P(membrane)")
    assert out.data.shape == volume.shape[1:]
    # the result overlays level 0: same world extent
    np.testing.assert_allclose(out.extent.world[1], layer.extent.world[1][1:])


def _nifti(tmp_path, name, data, affine):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("affine", [
    np.diag([-2.0, 3.0, 1.5, 1.0]),                                         # LAS
    np.array([[0, 0, -1.5, 10], [-2.0, 0, 0, 20], [0, 3.0, 0, -5], [0, 0, 0, 1]]),  # axes permuted (PSL)
])
def test_lazy_nifti_equals_the_eager_read(tmp_path, affine):
    data = np.random.default_rng(1).normal(size=(12, 10, 8)).astype(np.float32)
    path = _nifti(tmp_path, "v.nii", data, affine)
    eager = read_nifti(path)[0]
    lazy = read_nifti(path, lazy=True, lazy_bytes=0)[0]
    assert isinstance(lazy.data, da.Array) and isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)
    assert lazy.meta["scale"] == pytest.approx(eager.meta["scale"])
    assert lazy.meta["translate"] == pytest.approx(eager.meta["translate"])
    np.testing.assert_allclose(lazy.meta["metadata"]["canonical_affine"], eager.meta["metadata"]["canonical_affine"])
    # small volumes stay in memory unless asked
    assert isinstance(read_image(path, lazy=True)[0].data, np.ndarray)


def test_lazy_nifti_reads_slab_by_slab(tmp_path, data_dir, monkeypatch):
    import expertloop.io.readers as readers

    eager = read_nifti(data_dir / "nibabel_anatomical_las.nii.gz")[0]
    lazy = read_nifti(data_dir / "nibabel_anatomical_las.nii.gz", lazy=True, lazy_bytes=0)[0]
    np.testing.assert_array_equal(lazy.data.compute(), eager.data)
    big = np.zeros((32, 24, 16), np.int16)
    big[..., 5] = 7
    path = _nifti(tmp_path, "big.nii", big, np.eye(4))
    monkeypatch.setattr(readers, "NIFTI_SLAB_BYTES", 32 * 24 * 2 * 2)  # two slices per chunk
    item = readers.read_nifti(path, lazy=True, lazy_bytes=0)[0]
    assert item.data.shape == (16, 24, 32) and item.data.numblocks == (8, 1, 1)
    plane = item.data[5]
    assert plane.numblocks == (1, 1) and (plane.compute() == 7).all()


def test_batch_membranes_predict_over_a_folder_of_ome_zarr(tmp_path, volume, tiny_membrane_model):
    import tifffile

    from expertloop.cli import main
    from expertloop.engine.jobs import run_job
    from expertloop.engine.membranes.net import predict_dense

    net, model = tiny_membrane_model
    data = tmp_path / "plate"
    data.mkdir()
    write_ome_zarr(data / "em.ome.zarr", volume[:2], "zyx", {"z": 1.0, "y": 1.0, "x": 1.0},
                   {"z": "micrometer", "y": "micrometer", "x": "micrometer"})
    assert main(["membranes", "predict", str(model), str(data), "-o", str(tmp_path / "out"),
                 "--in-process", "--workers", "1"]) == 0
    prob = tifffile.imread(tmp_path / "out" / "em_membranes.tif")
    np.testing.assert_allclose(prob[1], run_job(predict_dense(net, volume[1])), atol=1e-6)
