"""Hostile image files: crafted headers and truncated data give one clear
ImageReadError before anything large is allocated (issue 18, defect 9)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tifffile

from expertloop.io import ImageReadError, read_image
from expertloop.io._safety import DeclaredSizeError, check_declared_size


def _tiff_claiming(path, width, height):
    """A minimal little-endian TIFF whose header declares width x height uint8
    pixels in one strip, followed by only 100 bytes of data."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 100)]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at))
    out += struct.pack("<H", len(tags))
    for tag, typ, val in tags:
        val = data_at if tag == 273 else val
        fmt = "<HHIHH" if typ == 3 else "<HHII"
        out += struct.pack(fmt, tag, typ, 1, val, 0) if typ == 3 else struct.pack(fmt, tag, typ, 1, val)
    out += struct.pack("<I", 0)
    out += bytes(100)
    path.write_bytes(bytes(out))
    return path


def test_tiff_header_claiming_100000_squared_is_refused(tmp_path):
    p = _tiff_claiming(tmp_path / "huge.tif", 100_000, 100_000)
    with pytest.raises(ImageReadError, match="declares 100000 x 100000") as info:
        read_image(p)
    assert "truncated" in str(info.value)


def test_half_truncated_tiff_is_one_clear_error(tmp_path):
    p = tmp_path / "half.tif"
    tifffile.imwrite(p, np.arange(256 * 256, dtype=np.uint16).reshape(256, 256))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageReadError, match="half.tif"):
        read_image(p)


def test_nifti_header_claiming_30000_cubed_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape((30000, 30000, 30000))
    hdr.set_qform(np.eye(4), code=1)
    p = tmp_path / "huge.nii"
    with open(p, "wb") as f:
        hdr.write_to(f)
        f.write(bytes(4 + 1000))
    with pytest.raises(ImageReadError, match="declares 30000 x 30000 x 30000"):
        read_image(p)


def test_gzip_nifti_claiming_more_than_deflate_can_hold_is_refused(tmp_path):
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    img.header.set_data_shape((30000, 30000, 30000))
    p = tmp_path / "huge.nii.gz"
    hdr_bytes = img.header.binaryblock + bytes(4) + bytes(64)
    import gzip
    p.write_bytes(gzip.compress(hdr_bytes))
    with pytest.raises(ImageReadError, match="compressed file can hold"):
        read_image(p)


def test_check_declared_size_memory_limit(tmp_path, monkeypatch):
    p = tmp_path / "x.bin"
    p.write_bytes(bytes(10_000))
    assert check_declared_size((100, 100), np.uint8, p) == 10_000
    monkeypatch.setattr("expertloop.io._safety.available_memory", lambda: 5_000)
    with pytest.raises(DeclaredSizeError, match="memory available"):
        check_declared_size((100, 100), np.uint8, p)
    with pytest.raises(DeclaredSizeError, match="negative"):
        check_declared_size((-1, 100), np.uint8, p)


def test_ordinary_files_still_read(tmp_path):
    a = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    tifffile.imwrite(tmp_path / "ok.tif", a)
    tifffile.imwrite(tmp_path / "okz.tif", a, compression="zlib")
    for name in ("ok.tif", "okz.tif"):
        (layer,) = read_image(tmp_path / name)
        np.testing.assert_array_equal(layer.data, a)


# ------------------------------------------------------------ LIDS marker files (defect 13)
def test_lids_header_claiming_100000_squared_is_refused_before_allocating(tmp_path):
    from expertloop.io.flim_markers import MarkerFileError, read_lids_markers

    p = tmp_path / "m.txt"
    p.write_text("0 100000 100000\n")
    with pytest.raises(MarkerFileError, match="more than the .* of memory available"):
        read_lids_markers(p)


@pytest.mark.parametrize("line,match", [("1 1 1 99999999999", "above"), ("1 1 99999999999 0", "above"),
                                        ("1 1 -5 0", "negative"), ("1 1 1 inf", "integers"),
                                        ("1 1 1 1e30", "integers")])
def test_lids_labels_that_do_not_fit_are_refused(tmp_path, line, match):
    from expertloop.io.flim_markers import MarkerFileError, read_lids_markers

    p = tmp_path / "m.txt"
    p.write_text(f"1 4 4\n{line}\n")
    with pytest.raises(MarkerFileError, match=match):
        read_lids_markers(p)


# ------------------------------------------------------------ pixel sizes and colour modes (defect 10)
@pytest.mark.parametrize("size", ["0", "-0.5", "1e999"])
def test_ome_physical_size_that_is_not_positive_and_finite_is_not_passed_through(tmp_path, size):
    p = tmp_path / "o.ome.tif"
    tifffile.imwrite(p, np.zeros((8, 8), np.uint8), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.123456, "PhysicalSizeY": 0.25})
    raw = p.read_bytes()
    old = b'PhysicalSizeX="0.123456"'
    assert old in raw  # same length replacement: the TIFF offsets stay valid
    p.write_bytes(raw.replace(old, f'PhysicalSizeX="{size}"'.ljust(len(old)).encode()))
    with pytest.warns(UserWarning, match="not a positive finite size"):
        (item,) = read_image(p)
    assert item.meta["scale"] == [0.25, 1.0]
    assert "along X" in item.meta["metadata"]["warnings"][0]


def test_cmyk_jpeg_is_rgb_and_palette_png_says_so(tmp_path):
    from PIL import Image

    Image.new("CMYK", (8, 6), (0, 255, 0, 0)).save(tmp_path / "c.jpg")
    with pytest.warns(UserWarning, match="CMYK"):
        (item,) = read_image(tmp_path / "c.jpg")
    assert item.data.shape == (6, 8, 3) and item.meta["rgb"]
    np.testing.assert_allclose(item.data[3, 4], [255, 0, 255], atol=2)  # magenta, not RGBA
    pal = Image.new("P", (8, 6))
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    with pytest.warns(UserWarning, match="palette"):
        (item,) = read_image(tmp_path / "p.png")
    assert item.meta["metadata"]["colour_mode"] == "P"
    assert "palette" in item.meta["metadata"]["warnings"][0]


# ------------------------------------------------------------ box annotation files
@pytest.mark.parametrize("bbox", [[1, 2, float("nan"), 4], [1, 2, -3, 4], "1234", [1, 2, 3], None])
def test_blood_coco_boxes_must_be_finite_and_not_negative(tmp_path, bbox):
    import json

    from expertloop.io.blood_formats import AnnotationFileError, read_coco

    p = tmp_path / "c.json"
    p.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}],
                             "categories": [{"id": 1, "name": "RBC"}],
                             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox}]}))
    with pytest.raises(AnnotationFileError, match="bbox|box"):
        read_coco(p)


def test_voc_box_with_negative_size_is_refused(tmp_path, data_dir):
    from expertloop.io.blood_formats import AnnotationFileError, read_voc

    xml = (data_dir / "blood" / "BloodImage_00001.xml").read_text()
    import re

    p = tmp_path / "a.xml"
    p.write_text(re.sub(r"<xmax>\d+</xmax>", "<xmax>-50</xmax>", xml, count=1))
    with pytest.raises(AnnotationFileError, match="negative width"):
        read_voc(p)


def test_a_folder_of_palette_pngs_gives_one_summary_warning(tmp_path):
    from PIL import Image

    from expertloop.engine.semiauto.data import load_folder

    for i in range(3):
        pal = Image.new("P", (8, 8))
        pal.putpalette([0, 0, 0, 255, 0, 0])
        pal.save(tmp_path / f"p{i}.png")
    with pytest.warns(UserWarning) as rec:
        col = load_folder(tmp_path)
    assert len(col) == 3
    assert [str(w.message) for w in rec if "palette" in str(w.message)] == [
        f"3 note(s) while reading the images, e.g. {'p0.png'}: an indexed-colour (palette) image; its "
        "palette colours are shown as RGB; the colour indices are not kept"]
