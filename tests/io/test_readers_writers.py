import gzip

import nibabel as nib
import numpy as np
import pytest
import tifffile

from expertloop.io import ImageReadError, read_image, write_nifti, write_tiff
from expertloop.io.napari_hooks import napari_get_reader, read_layers


# -------------------------------------------------------------- real files
def test_nifti_orientation_and_scale(data_dir):
    path = data_dir / "nibabel_anatomical_las.nii.gz"  # LAS, 2 mm
    (item,) = read_image(path)
    canon = nib.as_closest_canonical(nib.load(str(path)))
    ras = np.asarray(canon.dataobj)
    assert item.data.shape == (ras.shape[2], ras.shape[1], ras.shape[0])
    assert item.meta["scale"] == [2.0, 2.0, 2.0]
    # napari[z, y, x] == RAS[x, ny - 1 - y, z]: anterior at the top
    ny = ras.shape[1]
    for z, y, x in [(0, 0, 0), (10, 5, 7), (24, 40, 32)]:
        assert item.data[z, y, x] == ras[x, ny - 1 - y, z]
    md = item.meta["metadata"]
    assert md["source_axcodes"] == "LAS" and md["axes"] == "SPR"


def test_colin_crop(data_dir):
    (item,) = read_image(data_dir / "colin27_crop.nii.gz")
    assert item.data.shape == (36, 48, 40) and item.data.dtype == np.uint8
    assert item.meta["scale"] == [1.0, 1.0, 1.0]
    assert item.data.max() > 0


def test_tiff_2d_and_3d_scale(data_dir):
    (a,) = read_image(data_dir / "nuclei_crop.tif")
    assert a.data.shape == (128, 128) and a.data.dtype == np.uint16
    assert a.meta["scale"] == pytest.approx([0.5, 0.5])
    (b,) = read_image(data_dir / "cells3d_crop.tif")
    assert b.data.shape == (8, 64, 64)
    assert b.meta["scale"] == pytest.approx([0.29, 0.26, 0.26])


def test_png_and_jpeg(data_dir):
    (p,) = read_image(data_dir / "em_crop.png")
    assert p.data.shape == (96, 96) and "rgb" not in p.meta
    (j,) = read_image(data_dir / "blood_crop.jpg")
    assert j.data.shape == (96, 128, 3) and j.meta["rgb"] is True


def test_ome_tiff_physical_size(tmp_path):
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16)
    p = tmp_path / "x.ome.tif"
    tifffile.imwrite(p, data, ome=True, metadata={"axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 1.5})
    (item,) = read_image(p)
    assert item.meta["name"] == "x"
    assert item.meta["scale"] == pytest.approx([1.5, 0.2, 0.2])


# ----------------------------------------------------------------- writers
def test_tiff_round_trip_keeps_scale(tmp_path, data_dir):
    (b,) = read_image(data_dir / "cells3d_crop.tif")
    out = write_tiff(tmp_path / "o.tif", b.data, b.meta)
    (c,) = read_image(out)
    np.testing.assert_array_equal(c.data, b.data)
    assert c.meta["scale"] == pytest.approx(b.meta["scale"])
    labels = (b.data > b.data.mean()).astype(np.int32) * 70000
    (d,) = read_image(write_tiff(tmp_path / "l.tif", labels, {"scale": b.meta["scale"]}))
    np.testing.assert_array_equal(d.data, labels)
    assert d.data.dtype == np.int32  # not squeezed into an ImageJ type
    assert d.meta["scale"] == pytest.approx(b.meta["scale"])  # z spacing kept too


def test_nifti_labels_written_back_on_source_grid(tmp_path, data_dir):
    src = data_dir / "nibabel_anatomical_las.nii.gz"
    (item,) = read_image(src)
    labels = (item.data > np.percentile(item.data, 80)).astype(np.uint8)
    out = write_nifti(tmp_path / "labels.nii.gz", labels, item.meta)
    # the saved labels line up voxel-for-voxel with the source in world space
    img, lab = nib.load(str(src)), nib.load(str(out))
    src_ras = nib.as_closest_canonical(img)
    np.testing.assert_allclose(lab.affine, src_ras.affine)
    (back,) = read_image(out)
    np.testing.assert_array_equal(back.data, labels)
    # and without source metadata, scale survives a round trip
    out2 = write_nifti(tmp_path / "plain.nii", labels, {"scale": [3.0, 2.0, 1.0]})
    (b2,) = read_image(out2)
    np.testing.assert_array_equal(b2.data, labels)
    assert b2.meta["scale"] == [3.0, 2.0, 1.0]


# --------------------------------------------------------------- bad input
def test_empty_file(tmp_path):
    for name in ("empty.tif", "empty.nii.gz", "empty.png"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(ImageReadError, match="empty"):
            read_image(tmp_path / name)


def test_truncated_nifti(tmp_path, data_dir):
    raw = (data_dir / "colin27_crop.nii.gz").read_bytes()
    p = tmp_path / "trunc.nii.gz"
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt"):
        read_image(p)
    # truncated uncompressed file too
    q = tmp_path / "trunc.nii"
    q.write_bytes(gzip.decompress(raw)[:2000])
    with pytest.raises(ImageReadError, match="truncated or corrupt|not a valid NIfTI"):
        read_image(q)


def test_text_renamed_tif(tmp_path):
    p = tmp_path / "notes.tif"
    p.write_text("this is not an image\n" * 10)
    with pytest.raises(ImageReadError, match="not a valid TIFF"):
        read_image(p)
    q = tmp_path / "notes.png"
    q.write_text("hello")
    with pytest.raises(ImageReadError, match="cannot decode"):
        read_image(q)


def test_5d_tiff_without_axes_is_refused_clearly(tmp_path):
    p = tmp_path / "five.tif"
    tifffile.imwrite(p, np.zeros((2, 3, 2, 8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="5-D TIFF .* more than 4 non-channel"):
        read_image(p)


def test_5d_imagej_tiff_splits_channels(tmp_path):
    p = tmp_path / "tzcyx.tif"
    data = np.random.default_rng(0).integers(0, 255, (2, 3, 2, 8, 8), dtype=np.uint8)
    tifffile.imwrite(p, data, imagej=True, metadata={"axes": "TZCYX"})
    (item,) = read_image(p)
    assert item.meta["channel_axis"] == 2 and len(item.meta["name"]) == 2
    assert item.data.shape == (2, 3, 2, 8, 8)


def test_unsupported_suffix(tmp_path):
    with pytest.raises(ImageReadError, match="unsupported"):
        read_image(tmp_path / "x.czi")


# ------------------------------------------------------------ reader hook
def test_get_reader_decides_on_name_and_never_raises(tmp_path, data_dir):
    assert napari_get_reader(str(data_dir / "em_crop.png")) is read_layers
    assert napari_get_reader(str(tmp_path / "x.czi")) is None
    assert napari_get_reader(str(tmp_path)) is None  # a folder
    assert napari_get_reader([]) is None
    assert napari_get_reader(12345) is None  # junk: None, not an exception
    (tmp_path / "bad.tif").write_text("nope")
    assert napari_get_reader(str(tmp_path / "bad.tif")) is read_layers


def test_read_layers_reports_bad_file_without_raising(tmp_path, monkeypatch):
    messages = []
    monkeypatch.setattr("expertloop.io.napari_hooks._notify_error", messages.append)
    (tmp_path / "bad.tif").write_text("nope")
    assert read_layers(str(tmp_path / "bad.tif")) == [(None,)]
    assert len(messages) == 1 and "bad.tif" in messages[0] and "not a valid TIFF" in messages[0]
