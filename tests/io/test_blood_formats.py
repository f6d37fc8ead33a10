"""Pascal VOC / COCO / CSV for the blood workflow."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from expertloop.io.blood_formats import (
    AnnotationFileError,
    BoxAnnotation,
    read_coco,
    read_voc,
    read_voc_folder,
    results_to_annotations,
    results_to_rows,
    write_coco,
    write_csv,
    write_voc,
)


def test_read_real_bccd_voc(data_dir):
    a = read_voc(data_dir / "blood" / "BloodImage_00001.xml")
    assert (a.width, a.height) == (640, 480) and a.filename == "BloodImage_00001.jpg"
    assert len(a.boxes) == len(a.labels) == 19
    assert set(a.labels) <= {"RBC", "WBC", "Platelets"} and "WBC" in a.labels
    # VOC's 1-based inclusive xmin is converted to a 0-based pixel edge
    assert np.all(a.boxes[:, 2] > a.boxes[:, 0]) and a.boxes.min() >= 0


def test_voc_round_trip(tmp_path, data_dir):
    a = read_voc(data_dir / "blood" / "BloodImage_00001.xml")
    write_voc(tmp_path / "x.xml", a)
    b = read_voc(tmp_path / "x.xml")
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert a.labels == b.labels and (a.width, a.height, a.filename) == (b.width, b.height, b.filename)
    (tmp_path / "Annotations").mkdir()
    write_voc(tmp_path / "Annotations" / "y.xml", a)
    assert len(read_voc_folder(tmp_path)) == 1


def test_coco_round_trip(tmp_path):
    anns = [
        BoxAnnotation("a.jpg", 64, 48, [[1.5, 2, 10, 20], [30, 30, 40, 47]], ["RBC", "WBC"],
                      np.array([0.9, 0.4]), [{"types": ["RBC"]}, {"types": []}]),
        BoxAnnotation("b.jpg", 64, 48, np.zeros((0, 4)), [], None, []),
    ]
    write_coco(tmp_path / "c.json", anns, categories=["RBC", "WBC", "Platelets"])
    back = read_coco(tmp_path / "c.json")
    assert [b.filename for b in back] == ["a.jpg", "b.jpg"]
    np.testing.assert_allclose(back[0].boxes, anns[0].boxes)
    assert back[0].labels == ["RBC", "WBC"] and back[0].scores.tolist() == [0.9, 0.4]
    assert back[0].attributes[0] == {"types": ["RBC"]}
    assert len(back[1].boxes) == 0 and back[1].scores is None


def test_bad_annotation_files(tmp_path):
    (tmp_path / "empty.xml").write_text("")
    with pytest.raises(AnnotationFileError, match="empty"):
        read_voc(tmp_path / "empty.xml")
    with pytest.raises(AnnotationFileError, match="not found"):
        read_voc(tmp_path / "missing.xml")
    (tmp_path / "bad.xml").write_text("<annotation><object>")
    with pytest.raises(AnnotationFileError, match="not valid XML"):
        read_voc(tmp_path / "bad.xml")
    (tmp_path / "nobox.xml").write_text("<annotation><object><name>RBC</name></object></annotation>")
    with pytest.raises(AnnotationFileError, match="bndbox"):
        read_voc(tmp_path / "nobox.xml")
    (tmp_path / "e.json").write_text("  \n")
    with pytest.raises(AnnotationFileError, match="empty"):
        read_coco(tmp_path / "e.json")
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(AnnotationFileError, match="not a COCO"):
        read_coco(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"images": [{"id": 1}], "annotations": '
                                     '[{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}], '
                                     '"categories": [{"id": 1, "name": "RBC"}]}')
    with pytest.raises(AnnotationFileError, match="unknown image"):
        read_coco(tmp_path / "y.json")
    with pytest.raises(AnnotationFileError, match="no VOC"):
        read_voc_folder(tmp_path / "nothing")


def test_results_export(tmp_path):
    from expertloop.engine.blood import BloodResult

    res = BloodResult(np.array([[0, 0, 10, 10], [5, 5, 20, 20.0]]), np.array([0.9, 0.3]), ["cell", "cell"],
                      np.array([[0.8, 0.6], [0.1, 0.2]]), np.array([0.7, 0.1]), ["A", "B"], (32, 40), "img.png")
    rows = results_to_rows([res], score_threshold=0.5)
    assert len(rows) == 1 and rows[0]["types"] == "A+B" and rows[0]["abnormal"] is True
    write_csv(tmp_path / "r.csv", rows)
    with open(tmp_path / "r.csv") as f:
        back = list(csv.DictReader(f))
    assert back[0]["image"] == "img.png" and float(back[0]["p_A"]) == pytest.approx(0.8)
    anns = results_to_annotations([res], score_threshold=0.0)
    write_coco(tmp_path / "r.json", anns, categories=["cell"])
    (c,) = read_coco(tmp_path / "r.json")
    assert (c.width, c.height) == (40, 32) and len(c.boxes) == 2
    assert c.attributes[0]["types"] == ["A", "B"] and c.attributes[1]["types"] == []
    assert c.attributes[0]["type_probabilities"]["B"] == pytest.approx(0.6)
