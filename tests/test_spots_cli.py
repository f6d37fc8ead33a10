"""``expertloop spots phantom / spots train / spots detect`` end to end on a small crop."""

from __future__ import annotations

import numpy as np

from expertloop.cli import main


def test_spots_cli_end_to_end(tmp_path, data_dir, capsys):
    crop = data_dir / "colin27_crop.nii.gz"
    assert main(["spots", "phantom", str(crop), "-o", str(tmp_path), "--spots", "12", "--seed", "3"]) == 0
    vol = tmp_path / "colin27_crop_phantom.nii.gz"
    clicks = tmp_path / "colin27_crop_phantom.clicks.csv"
    assert vol.exists() and clicks.exists() and (tmp_path / "colin27_crop_phantom.truth.csv").exists()
    assert clicks.read_text().splitlines()[0].startswith("click_id,z,y,x")
    model = tmp_path / "m"
    assert main(["spots", "train", str(vol), str(clicks), "-o", str(model), "--epochs", "2",
                 "--source-epochs", "2", "--max-negatives", "500"]) == 0
    assert (tmp_path / "m.pt").exists() and (tmp_path / "m.json").exists()
    assert main(["spots", "detect", str(model), str(vol), "-o", str(tmp_path / "out"), "--threshold", "0",
                 "--in-process"]) == 0
    table = np.loadtxt(tmp_path / "out" / "colin27_crop_phantom_spots.csv", delimiter=",", skiprows=1, ndmin=2)
    assert table.shape[1] == 6 and len(table) > 0 and (table[:, 3] >= 0).all()


def test_spots_cli_bad_inputs(tmp_path, data_dir, capsys):
    assert main(["spots", "train", str(data_dir / "colin27_crop.nii.gz"), "-o", str(tmp_path / "m")]) == 2
    assert "IMAGE TABLE pairs" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("z,y,x\n")
    assert main(["spots", "train", str(data_dir / "colin27_crop.nii.gz"), str(tmp_path / "empty.csv"),
                 "-o", str(tmp_path / "m")]) == 2
    assert "no clicks" in capsys.readouterr().err
    assert main(["spots", "detect", str(tmp_path / "nomodel"), str(data_dir / "colin27_crop.nii.gz"),
                 "-o", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["spots", "phantom", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path)]) == 2
