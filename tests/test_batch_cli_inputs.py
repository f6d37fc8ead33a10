"""Bad inputs of the batch commands, through ``expertloop.cli.main``: one
clear line on standard error and the exit code ``expertloop --help`` lists
(2: nothing done; 1: done, some inputs failed)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from expertloop.cli import main


@pytest.fixture
def commands(tiny_membrane_model):
    _, model = tiny_membrane_model
    return {"features": ["features"],
            "membranes predict": ["membranes", "predict", str(model)]}


@pytest.mark.parametrize("name", ["features", "membranes predict"])
def test_empty_glob_and_folder_of_non_images(commands, name, tmp_path, capsys):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("not an image")
    (texts / "table.csv").write_text("a,b\n1,2\n")
    (texts / "sub").mkdir()
    capsys.readouterr()
    for inputs, words in [([str(tmp_path / "nothing*.tif")], "no image matches"),
                          ([str(texts)], "no images in the folder"),
                          ([str(texts / "*")], "no image matches")]:
        out = tmp_path / "out"
        assert main([*commands[name], *inputs, "-o", str(out), "--in-process"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
        assert ".tif" in err[0]  # says which files it looked for
        assert not out.exists() or not any(out.iterdir())  # nothing written (the folder is checked first)


@pytest.mark.parametrize("name", ["features", "membranes predict"])
def test_a_non_image_with_an_image_name_fails_alone(commands, name, tmp_path, capsys):
    good = tmp_path / "in" / "good.tif"
    good.parent.mkdir()
    tifffile.imwrite(good, np.random.default_rng(0).integers(0, 255, (40, 40)).astype(np.uint8))
    (tmp_path / "in" / "broken.tif").write_text("this is not a TIFF")
    capsys.readouterr()
    rc = main([*commands[name], str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--in-process"])
    assert rc == 1
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if ln.startswith("failed:")]
    assert len(failed) == 1 and "broken.tif" in failed[0] and "Traceback" not in err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 1 and written[0].startswith("good_")  # the good image is done, nothing of broken
