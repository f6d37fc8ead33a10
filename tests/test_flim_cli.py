"""``expertloop flim`` subcommands."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from expertloop.cli import main
from expertloop.engine.metrics import dice


def test_fit_segment_recommend_convert(data_dir, tmp_path, capsys):
    d = data_dir / "flim"
    img, mk, mask = d / "dsb2018_nuclei_128.tif", d / "dsb2018_nuclei_128_markers.txt", d / "dsb2018_nuclei_128_mask.tif"
    spec = tmp_path / "arch.json"
    spec.write_text(json.dumps({"ndim": 2, "layers": [{"filters_per_class": 4, "pool_stride": 2}]}))
    assert main(["flim", "fit", str(img), "--markers", str(mk), "--spec", str(spec), "-o", str(tmp_path / "m")]) == 0
    assert "encoder fitted" in capsys.readouterr().out
    assert main(["flim", "segment", str(tmp_path / "m.pt"), str(img), "-o", str(tmp_path / "out"),
                 "--background-zero", "--in-process"]) == 0
    seg = tifffile.imread(tmp_path / "out" / "dsb2018_nuclei_128_flim_labels.tif")
    assert dice(seg == 2, tifffile.imread(mask) > 0) > 0.6 and (seg == 1).sum() == 0
    full = tifffile.imread(img)
    others = []
    for i, sl in enumerate([(slice(0, 64), slice(0, 64)), (slice(64, 128), slice(0, 64)), (slice(0, 64), slice(64, 128))]):
        tifffile.imwrite(tmp_path / f"c{i}.tif", full[sl])
        others.append(str(tmp_path / f"c{i}.tif"))
    tifffile.imwrite(tmp_path / "c0_markers.tif", _markers64(mk))
    rec_args = ["flim", "recommend", *others, "--marker", others[0], str(tmp_path / "c0_markers.tif"),
                "-k", "1", "--superpixels", "12", "--spec", '{"layers": [{"filters_per_class": 2}]}']
    capsys.readouterr()
    assert main([*rec_args, "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)  # --json: stdout is the one JSON document
    assert rec["marked"] == [0] and len(rec["points"]) == 3 and rec["projection"] == "pca"
    assert main(rec_args) == 0
    assert "farthest:" in capsys.readouterr().out
    assert main(["flim", "convert-markers", str(mk), str(tmp_path / "mk.tif")]) == 0
    assert main(["flim", "convert-markers", str(tmp_path / "mk.tif"), str(tmp_path / "back.txt")]) == 0
    from expertloop.io.flim_markers import read_lids_markers

    np.testing.assert_array_equal(read_lids_markers(tmp_path / "back.txt"), read_lids_markers(mk))


def _markers64(path):
    from expertloop.io.flim_markers import read_lids_markers

    return read_lids_markers(path)[:64, :64].astype(np.uint8)


def test_bad_inputs_exit_2(data_dir, tmp_path, capsys):
    d = data_dir / "flim"
    img = str(d / "dsb2018_nuclei_128.tif")
    assert main(["flim", "fit", img, "--markers", "a.txt", "b.txt", "-o", str(tmp_path / "m")]) == 2
    assert "one per image" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((5, 5), np.uint8))
    assert main(["flim", "fit", img, "--markers", str(tmp_path / "small.tif"), "-o", str(tmp_path / "m")]) == 2
    assert "shape" in capsys.readouterr().err
    assert main(["flim", "segment", str(tmp_path / "missing.pt"), img, "-o", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
