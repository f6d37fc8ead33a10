"""Issue 16: the workflows' annotation files open and save through napari (npe2)."""

from pathlib import Path

import numpy as np

PLUGIN = "napari-expertloop"
DATA = Path(__file__).resolve().parents[1] / "data"


def _click_log(path):
    from expertloop.io.spots_clicks import ClickLog

    t = iter([0.0, 1.5, 2.0, 4.5])
    log = ClickLog(path, shape=(8, 32, 32), annotator="ana", session_id="s1", clock=lambda: next(t))
    log.click((2, 10, 11), contrast_limits=(0, 255), zoom=2.0)
    log.click((5, 20, 3))
    log.click((7, 1, 30))
    log.delete("s1-2")
    return path


def test_click_log_and_csv_round_trip_as_points(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(_click_log(tmp_path / "scan.spots.jsonl")), plugin=PLUGIN)
    assert layer._type_string == "points"
    np.testing.assert_allclose(layer.data, [[2, 10, 11], [7, 1, 30]])
    np.testing.assert_allclose(layer.features["latency_s"], [1.5, 2.5])  # deleted click's time kept
    assert list(layer.features["annotator"]) == ["ana", "ana"]
    assert list(layer.features["first_in_session"]) == [True, False]

    out = tmp_path / "scan.clicks.csv"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    (back,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(back.data, layer.data)
    for c in ("click_id", "latency_s", "slice", "contrast_lo", "zoom", "first_in_session"):
        np.testing.assert_array_equal(np.asarray(back.features[c]), np.asarray(layer.features[c]), err_msg=c)


def test_plain_2d_points_save_as_click_table(make_napari_viewer, tmp_path):
    from expertloop.io.spots_clicks import import_csv

    viewer = make_napari_viewer()
    viewer.add_points(np.array([[3.0, 4.0], [10.5, 2.0]]), name="p")
    out = tmp_path / "p.clicks.csv"
    viewer.layers.save(str(out), plugin=PLUGIN)
    table = import_csv(out)
    np.testing.assert_allclose(table["z"], [0, 0])
    np.testing.assert_allclose(table["y"], [3.0, 10.5])
    assert np.isnan(table["latency_s"]).all()
    (back,) = viewer.open(str(out), plugin=PLUGIN)
    np.testing.assert_allclose(back.data, [[3.0, 4.0], [10.5, 2.0]])  # all z = 0 -> 2D


def test_voc_opens_as_typed_rectangles_and_saves_as_coco(make_napari_viewer, tmp_path):
    from expertloop.io.blood_formats import read_coco, read_voc

    voc = read_voc(DATA / "blood" / "BloodImage_00001.xml")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(DATA / "blood" / "BloodImage_00001.xml"), plugin=PLUGIN)
    assert layer._type_string == "shapes"
    assert set(layer.shape_type) == {"rectangle"}
    assert list(layer.features["type"]) == voc.labels
    x0, y0, x1, y1 = voc.boxes[0]
    np.testing.assert_allclose(layer.data[0].min(0), [y0, x0])
    np.testing.assert_allclose(layer.data[0].max(0), [y1, x1])

    out = tmp_path / "boxes_coco.json"
    viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    (ann,) = read_coco(out)
    np.testing.assert_allclose(ann.boxes, voc.boxes)
    assert ann.labels == voc.labels
    (back,) = viewer.open(str(out), plugin=PLUGIN)
    assert list(back.features["type"]) == voc.labels
    np.testing.assert_allclose(np.stack(back.data), np.stack(layer.data))


def test_coco_predictions_keep_scores_one_layer_per_image(make_napari_viewer, tmp_path):
    from expertloop.io.blood_formats import BoxAnnotation, read_coco, write_coco

    anns = [BoxAnnotation("a.jpg", 64, 48, [[1, 2, 11, 12], [20, 5, 30, 40]], ["RBC", "WBC"], np.array([0.9, 0.6])),
            BoxAnnotation("b.jpg", 64, 48, [[0, 0, 5, 5]], ["Platelets"], np.array([0.7]))]
    src = write_coco(tmp_path / "pred.coco.json", anns)
    viewer = make_napari_viewer()
    a, b = viewer.open(str(src), plugin=PLUGIN)
    assert (a.name, b.name) == ("a boxes", "b boxes")
    assert list(a.features["type"]) == ["RBC", "WBC"]
    np.testing.assert_allclose(a.features["score"], [0.9, 0.6])
    viewer.layers.selection = {a}
    out = tmp_path / "a_coco.json"
    viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    (back,) = read_coco(out)
    np.testing.assert_allclose(back.boxes, anns[0].boxes)
    np.testing.assert_allclose(back.scores, [0.9, 0.6])


def test_lids_markers_open_as_labels(make_napari_viewer, tmp_path):
    from expertloop.io.flim_markers import write_lids_markers

    mk = np.zeros((4, 12, 10), np.int32)
    mk[1, 2:5, 3] = 1
    mk[3, 8, 1:9] = 2
    src = write_lids_markers(tmp_path / "img_markers.txt", mk)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(src), plugin=PLUGIN)
    assert layer._type_string == "labels"
    np.testing.assert_array_equal(np.asarray(layer.data), mk)


def test_readers_decline_files_that_are_not_ours(tmp_path):
    from expertloop.io import napari_annotations as na

    (tmp_path / "t.clicks.csv").write_text("a,b\n1,2\n")
    (tmp_path / "x.spots.jsonl").write_text('{"foo": 1}\n')
    (tmp_path / "c_coco.json").write_text('{"images": []}')
    (tmp_path / "n.xml").write_text("<svg></svg>")
    (tmp_path / "r.txt").write_text("hello world\n")
    assert na.get_clicks_reader(str(tmp_path / "t.clicks.csv")) is None
    assert na.get_clicks_reader(str(tmp_path / "x.spots.jsonl")) is None
    assert na.get_boxes_reader(str(tmp_path / "c_coco.json")) is None
    assert na.get_boxes_reader(str(tmp_path / "n.xml")) is None
    assert na.get_markers_reader(str(tmp_path / "r.txt")) is None
