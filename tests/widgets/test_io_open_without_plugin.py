"""Issue 16: the workflows' files open by drag and drop (``viewer.open``
with ``plugin=None``, what napari's drop and File > Open do: a
MultipleReaderError there is the "choose reader" dialog), and labels/images
round-trip through the TIFF writers as they do through NIfTI."""

from pathlib import Path

import numpy as np
import pytest

PLUGIN = "napari-expertloop"
DATA = Path(__file__).resolve().parents[1] / "data"


def _files(tmp_path):
    """(path, layer type) of one file of each kind the workflows write."""
    from expertloop.io.spots_clicks import ClickLog

    t = iter([0.0, 1.0, 2.5])
    log = ClickLog(tmp_path / "scan.spots.jsonl", shape=(8, 32, 32), annotator="ana", session_id="s",
                   clock=lambda: next(t))
    log.click((2, 10, 11))
    log.click((5, 20, 3))
    return [
        (tmp_path / "scan.spots.jsonl", "points"),
        (DATA / "blood" / "BloodImage_00001.xml", "shapes"),
        (DATA / "flim" / "dsb2018_nuclei_128_markers.txt", "labels"),
    ]


def test_workflow_files_open_without_choosing_a_reader(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    for path, kind in _files(tmp_path):
        layers = viewer.open(str(path), plugin=None)  # napari must find exactly one reader
        assert [ly._type_string for ly in layers] == [kind], path
    points, shapes = viewer.layers[0], viewer.layers[1]
    # what napari's File > Save writes opens again by drag and drop
    csv, coco = tmp_path / "scan.clicks.csv", tmp_path / "boxes_coco.json"
    viewer.layers.selection = {points}
    viewer.layers.save(str(csv), selected=True, plugin=PLUGIN)
    viewer.layers.selection = {shapes}
    viewer.layers.save(str(coco), selected=True, plugin=PLUGIN)
    (s2,) = viewer.open(str(coco), plugin=None)
    assert len(s2.data) == len(shapes.data)
    assert list(s2.features["type"]) == list(shapes.features["type"])
    # napari's builtin reader claims every *.csv, so a click table is the one
    # file that asks (docs/io.md): the dialog offers expertloop, which reads it
    from npe2 import PluginManager

    readers = {r.plugin_name for r in PluginManager.instance().iter_compatible_readers([str(csv)])}
    assert readers == {"napari", PLUGIN}
    (p2,) = viewer.open(str(csv), plugin=PLUGIN)
    np.testing.assert_allclose(p2.data, points.data)
    assert "latency_s" in p2.features


@pytest.mark.parametrize("ndim", [2, 3])
def test_labels_and_images_round_trip_as_tiff(make_napari_viewer, tmp_path, ndim):
    rng = np.random.default_rng(1)
    shape = (12, 10) if ndim == 2 else (3, 12, 10)
    lab = rng.integers(0, 5, shape).astype(np.uint16)
    img = rng.random(shape).astype(np.float32)
    viewer = make_napari_viewer()
    viewer.add_labels(lab, name="lab", scale=(2.0,) * ndim)
    viewer.add_image(img, name="img")
    for name, arr, kind in (("lab", lab, "labels"), ("img", img, "image")):
        out = tmp_path / f"{name}.tif"
        viewer.layers.selection = {viewer.layers[name]}
        viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
        (back,) = viewer.open(str(out), plugin=PLUGIN)  # TIFF: both napari and expertloop offer (docs/io.md)
        np.testing.assert_array_equal(np.asarray(back.data), arr)
        assert back._type_string == kind  # labels are marked in the file and open as Labels
        if name == "lab":
            np.testing.assert_allclose(back.scale, (2.0,) * ndim)  # the voxel size travels with the file
