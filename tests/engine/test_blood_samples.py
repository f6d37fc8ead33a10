"""Drawn rectangles (a Shapes layer's data and features) -> a blood training sample, in the engine."""

from __future__ import annotations

import numpy as np
import pytest

from expertloop.engine.blood import parse_types, sample_from_rectangles


def _rect(y0, x0, y1, x1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)


def test_rectangles_become_boxes_types_and_classes():
    img = np.zeros((40, 50, 3), np.uint8)
    rects = [_rect(2, 3, 10, 12), np.column_stack([np.zeros(4), _rect(20, 30, 35, 45)])]  # a 3D shape too
    s = sample_from_rectangles(img, rects, types=["Echinocyte+Granular", float("nan")], name="smear")
    assert s.boxes.tolist() == [[3, 2, 12, 10], [30, 20, 45, 35]]  # x0, y0, x1, y1
    assert s.labels == ["cell", "cell"] and s.types == [frozenset({"Echinocyte", "Granular"}), frozenset()]
    assert parse_types(None) == frozenset() and parse_types("a; b,c") == frozenset("abc")

    two = ["RBC", "WBC"]
    s = sample_from_rectangles(img, rects, types=["WBC", "RBC"], det_classes=two)  # a single type names the class
    assert s.labels == ["WBC", "RBC"]
    assert sample_from_rectangles(img, rects, classes=["RBC", "RBC"], det_classes=two).labels == ["RBC", "RBC"]
    with pytest.raises(ValueError, match="give each shape a 'class' feature"):
        sample_from_rectangles(img, rects, det_classes=two)
    with pytest.raises(ValueError, match="no shapes"):
        sample_from_rectangles(img, [])
