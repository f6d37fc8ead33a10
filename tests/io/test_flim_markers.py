"""LIDS FLIM marker text format."""

from __future__ import annotations

import numpy as np
import pytest

from expertloop.io.flim_markers import (
    MarkerFileError,
    read_lids_markers,
    write_lids_markers,
)


def test_round_trip_2d(tmp_path):
    mk = np.zeros((5, 7), np.int32)
    mk[1, 1:4] = 1  # one background scribble
    mk[3, 5] = 2
    mk[4, 0] = 2  # two object scribbles
    p = write_lids_markers(tmp_path / "m.txt", mk)
    lines = p.read_text().splitlines()
    assert lines[0] == "5 7 5"  # N W H
    assert "1 1 1 0" in lines  # x=1 y=1, scribble 1, LIDS label 0 (= our class 1)
    assert "5 3 2 1" in lines and "0 4 3 1" in lines
    back, ids = read_lids_markers(p, return_ids=True)
    np.testing.assert_array_equal(back, mk)
    assert len(np.unique(ids[mk == 2])) == 2 and len(np.unique(ids[mk == 1])) == 1


def test_round_trip_3d_and_reads_a_hand_written_file(tmp_path):
    mk = np.zeros((3, 4, 5), np.int32)
    mk[2, 3, 4] = 3
    mk[0, 0, 0] = 1
    back = read_lids_markers(write_lids_markers(tmp_path / "v.txt", mk))
    np.testing.assert_array_equal(back, mk)
    f = tmp_path / "lids.txt"
    f.write_text("3 4 2\n0 0 1 0\n3 1 2 1\n2 1 2 1\n")
    m = read_lids_markers(f)
    assert m.shape == (2, 4) and m[0, 0] == 1 and m[1, 3] == 2 and m[1, 2] == 2 and (m > 0).sum() == 3


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("a b c\n", "first line"),
        ("2 4 4\n0 0 1 0\n", "announces 2"),
        ("1 4 4\n9 0 1 0\n", "outside"),
        ("1 4 4\n0 0 1\n", "integers"),
        ("1 4 4\n0 0 1 -1\n", ">= 0"),
    ],
)
def test_malformed_files(tmp_path, text, match):
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(MarkerFileError, match=match):
        read_lids_markers(f)


def test_missing_file(tmp_path):
    with pytest.raises(MarkerFileError, match="not found"):
        read_lids_markers(tmp_path / "nope.txt")
