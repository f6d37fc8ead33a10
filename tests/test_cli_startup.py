import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

import expertloop
from expertloop.cli import main


def test_import_is_cheap_and_does_not_import_torch():
    code = ("import sys, expertloop, expertloop.engine, expertloop.io, expertloop.cli, expertloop.membranes, "
            "expertloop.spots, expertloop.blood, expertloop.flim, expertloop.semiauto; "
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


def test_building_the_parser_with_every_workflow_command_does_not_import_torch():
    code = (
        "import sys\n"
        "from expertloop.cli import build_parser, workflow_command_modules\n"
        "build_parser()\n"
        "print(len(workflow_command_modules()), 'torch' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[1] == "False"


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert expertloop.__version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "features" in capsys.readouterr().out


def test_console_script_info_reports_device():
    r = subprocess.run(["expertloop", "info", "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "torch " in r.stdout and "device: cpu" in r.stdout and "argument" in r.stdout


def test_info_with_unavailable_device_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    assert main(["info", "--device", "cuda:3"]) == 2
    assert "not available" in capsys.readouterr().err


def test_features_batch(tmp_path, data_dir, capsys):
    bad = tmp_path / "bad.tif"
    bad.write_text("x")
    out = tmp_path / "out"
    rc = main([
        "features", str(data_dir / "nuclei_crop.tif"), str(bad),
        "-o", str(out), "--backbone", "resnet18", "--pretrained", "no", "--tile", "64", "--in-process",
        "--json",
    ])
    assert rc == 1  # one file failed, and said so
    doc = json.loads(capsys.readouterr().out)  # --json: one document on stdout, as in every command
    assert doc["failed"] == 1
    status = {Path(r["image"]).name: r["status"] for r in doc["images"]}
    assert status == {"nuclei_crop.tif": "done", "bad.tif": "failed"}
    written = tifffile.imread(out / "nuclei_crop_resnet18_features.tif")
    assert written.shape == (32, 32, 3) and written.dtype == np.uint8 and written.std() > 0


def test_gui_viewer_has_sample_file_and_widget(make_napari_viewer_proxy, data_dir):
    from expertloop.cli import build_viewer

    viewer = build_viewer([str(data_dir / "em_crop.png")], sample="nuclei", show=False)
    try:
        assert [layer.name for layer in viewer.layers] == ["em_crop", "dsb2018_nuclei"]
        # the nuclei sample opens the workflow that starts from it (issue 19 item 7)
        assert "Marker encoder (FLIM) (napari-expertloop)" in viewer.window.dock_widgets
        assert "Deep features (napari-expertloop)" not in viewer.window.dock_widgets
    finally:
        viewer.close()


def test_gui_without_sample_or_widget_opens_start_here(make_napari_viewer_proxy):
    from expertloop.cli import build_viewer

    viewer = build_viewer([], show=False)
    try:
        assert list(viewer.window.dock_widgets) == ["Start here (napari-expertloop)"]
    finally:
        viewer.close()
