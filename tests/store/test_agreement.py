"""Kappa against published worked examples and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest

from expertloop.store import cohen_kappa, fleiss_kappa, fleiss_table


def test_cohen_kappa_textbook_example():
    # Wikipedia "Cohen's kappa", worked example: 50 proposals, two readers;
    # yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> po = 0.7, pe = 0.5, kappa = 0.4
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_cohen_kappa_matches_sklearn():
    from sklearn.metrics import cohen_kappa_score

    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 200)
    b = np.where(rng.random(200) < 0.6, a, rng.integers(0, 4, 200))
    assert cohen_kappa(a.tolist(), b.tolist()) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    assert np.isnan(cohen_kappa(["x", "x"], ["x", "x"]))
    with pytest.raises(ValueError, match="pairs"):
        cohen_kappa([1, 2], [1])


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as worked in Wikipedia "Fleiss' kappa": 10 subjects, 14 raters,
    # 5 categories; P = 0.378, Pe = 0.213, kappa = 0.210
    table = np.array([
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_table_and_errors():
    t = fleiss_table([["a", "a", "b"], ["b", "b", "b"]], categories=["a", "b"])
    assert t.tolist() == [[2, 1], [0, 3]]
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(np.array([[2, 0], [1, 2]]))
    with pytest.raises(ValueError, match="not one of the categories"):
        fleiss_table([["a", "z"]], categories=["a", "b"])
