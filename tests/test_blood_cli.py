"""``expertloop blood`` commands."""

from __future__ import annotations

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
from skimage.io import imsave

from expertloop.cli import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from expertloop.engine.backend import get_torch
    from expertloop.engine.blood import new_blood_model, save_blood_model

    torch = get_torch()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = new_blood_model(det_backbone="mobilenet_v2", embedder="resnet18", pretrained=False, patch_size=32,
                            min_size=96, max_size=96, hidden=8, max_regions=5)
    m.train_image_size = (480, 640)
    yield save_blood_model(tmp_path_factory.mktemp("m") / "blood", m)
    torch.set_num_threads(n)


def test_predict_folder_writes_csv_and_coco(tiny_model, tmp_path, data_dir, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(data_dir / "blood" / "BloodImage_00001.jpg", src)
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    imsave(src / "rgba.png", rgba, check_contrast=False)
    imsave(src / "grey16.png", (np.arange(60 * 80).reshape(60, 80) * 9).astype(np.uint16))
    (src / "broken.png").write_bytes(b"not a png")
    rc = main(["blood", "predict", str(src), "-m", str(tiny_model), "-o", str(tmp_path / "out"),
               "--score-threshold", "0", "--in-process"])
    err = capsys.readouterr().err
    assert rc == 1 and "broken.png" in err and "failed" in err  # one unreadable file
    with open(tmp_path / "out" / "regions.csv") as f:
        rows = list(csv.DictReader(f))
    coco = json.loads((tmp_path / "out" / "regions_coco.json").read_text())
    assert {im["file_name"] for im in coco["images"]} == {"BloodImage_00001.jpg", "rgba.png", "grey16.png"}
    assert len(rows) == len(coco["annotations"]) > 0
    assert {"image", "x0", "score", "p_Oval/Disc", "abnormal_score"} <= set(rows[0])


def test_predict_bad_inputs(tiny_model, tmp_path, capsys):
    assert main(["blood", "predict", str(tmp_path / "nothing"), "-m", str(tiny_model), "-o", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"x")
    assert main(["blood", "predict", str(tmp_path), "-m", str(tmp_path / "bad.pt"), "-o", str(tmp_path)]) == 2
    assert "metadata" in capsys.readouterr().err


def test_train_from_voc_folder(tmp_path, data_dir):
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    shutil.copy(data_dir / "blood" / "BloodImage_00001.xml", root / "Annotations")
    shutil.copy(data_dir / "blood" / "BloodImage_00001.jpg", root / "JPEGImages")
    out = tmp_path / "model"
    rc = main(["blood", "train", str(root), "-o", str(out), "--det-epochs", "1", "--head-epochs", "2",
               "--embedder", "resnet18", "--pretrained", "no", "--min-size", "96", "--abnormal", "WBC"])
    assert rc == 0
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["workflow"] == "blood" and meta["class_names"] == ["RBC", "WBC"]
    assert meta["extra"]["det_classes"] == ["RBC", "WBC"]
    # regression (issue 19): a bundle with an abnormal classifier reloads and detects
    from expertloop.engine.blood import load_blood_model
    m = load_blood_model(out)
    assert m.abnormal is not None and m.abnormal.a["init"].shape == ()
    assert m.abnormal.predict_proba(np.full((2, len(m.type_names)), 0.5)).shape == (2,)
    rc = main(["blood", "predict", str(root / "JPEGImages"), "-m", str(out), "-o", str(tmp_path / "pred"),
               "--score-threshold", "0", "--in-process"])
    assert rc == 0
    assert (tmp_path / "pred" / "regions.csv").exists()


def test_predict_two_folders_with_the_same_file_names_keeps_them_apart(tiny_model, tmp_path, data_dir):
    """Issue 18 defect 6: x/img.jpg and y/img.jpg were both written as img.jpg."""
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        shutil.copy(data_dir / "blood" / "BloodImage_00001.jpg", tmp_path / sub / "img.jpg")
    rc = main(["blood", "predict", str(tmp_path / "x"), str(tmp_path / "y"), "-m", str(tiny_model),
               "-o", str(tmp_path / "out"), "--score-threshold", "0", "--in-process"])
    assert rc == 0
    coco = json.loads((tmp_path / "out" / "regions_coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["x/img.jpg", "y/img.jpg"]
    with open(tmp_path / "out" / "regions.csv") as f:
        assert {r["image"] for r in csv.DictReader(f)} == {"x/img.jpg", "y/img.jpg"}


def test_train_refuses_voc_filenames_outside_the_dataset(tmp_path, data_dir, capsys):
    """Issue 18 defect 4: a VOC <filename> of ../x or /abs/x was followed."""
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    shutil.copy(data_dir / "blood" / "BloodImage_00001.jpg", tmp_path / "private.jpg")
    xml = (data_dir / "blood" / "BloodImage_00001.xml").read_text()
    for i, name in enumerate(["../../private.jpg", str(tmp_path / "private.jpg")]):
        (root / "Annotations" / f"a{i}.xml").write_text(
            xml.replace("<filename>BloodImage_00001.jpg</filename>", f"<filename>{name}</filename>"))
    rc = main(["blood", "train", str(root), "-o", str(tmp_path / "model"), "--det-epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "no annotated images" in err
    assert err.count("skipped") == 2 and "points outside" in err and "only relative paths" in err
    assert not (tmp_path / "model.pt").exists()
