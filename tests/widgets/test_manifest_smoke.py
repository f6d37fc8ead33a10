"""The plugin as napari sees it: manifest, widgets, samples, readers."""

import subprocess
import sys

import numpy as np
import pytest

PLUGIN = "napari-expertloop"


def test_npe2_validate_installed_package():
    r = subprocess.run(["npe2", "validate", PLUGIN], capture_output=True, text=True)
    assert r.returncode == 0 and "valid" in r.stdout, r.stdout + r.stderr


def test_manifest_is_the_top_level_file():
    from importlib import resources
    from pathlib import Path

    shipped = Path(str(resources.files("expertloop") / "napari.yaml"))
    top = Path(__file__).parents[2] / "napari.yaml"
    if top.exists():  # running from a checkout
        assert shipped.read_text() == top.read_text()
    assert "napari-expertloop.get_reader" in shipped.read_text()


def test_reading_the_manifest_does_not_import_torch():
    code = (
        "import sys, npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "m = pm.get_manifest('napari-expertloop')\n"
        "assert m.contributions.widgets\n"
        "from expertloop.io.napari_hooks import napari_get_reader\n"
        "import expertloop.widgets._jobs\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == ["False", "False"]


WIDGET_MODULES = (
    "import importlib, sys, napari, magicgui.widgets, npe2\n"
    "pm = npe2.PluginManager.instance(); pm.discover()\n"
    "m = pm.get_manifest('napari-expertloop')\n"
    "mods = sorted({c.python_name.split(':')[0] for c in m.contributions.commands\n"
    "               if c.python_name.startswith('expertloop.widgets.')})\n"
    "for mod in mods: importlib.import_module(mod)\n"
    "print(len(mods), 'torch' in sys.modules, 'torchvision' in sys.modules)\n"
)


def test_every_widget_module_imports_without_torch():
    """Opening any expertloop widget must not import torch (nor torchvision)."""
    r = subprocess.run([sys.executable, "-c", WIDGET_MODULES], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    n, torch_loaded, tv_loaded = r.stdout.split()[-3:]
    assert int(n) >= 1
    assert (torch_loaded, tv_loaded) == ("False", "False")


def test_widget_opens_and_runs_in_viewer(make_napari_viewer, qtbot, data_dir):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Deep features")
    viewer.open(str(data_dir / "nuclei_crop.tif"), plugin=PLUGIN)
    assert widget.image.value == "nuclei_crop"
    widget.backbone.value = "resnet18"
    widget.pretrained.value = False
    widget.tile.value = 64
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    out = viewer.layers["nuclei_crop resnet18 features"]
    assert out.rgb and out.data.shape == (32, 32, 3)
    np.testing.assert_allclose(out.scale, [2.0, 2.0])  # 0.5 um pixels x stride 4
    assert widget.runner.status.endswith("done")


def test_widget_bad_input_becomes_notification(make_napari_viewer, qtbot, notifications):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Deep features")
    viewer.add_image(np.zeros((2, 2, 2, 16, 16)), name="five_d")
    widget.image.value = "five_d"
    widget.pretrained.value = False
    widget.run()
    qtbot.waitUntil(lambda: not widget.runner.running, timeout=60_000)
    assert any("2D image or a 3D stack" in str(n.message) for n in notifications)
    assert len(viewer.layers) == 1


@pytest.mark.parametrize(
    ("key", "shape", "scale"),
    [("mri", (181, 217, 181), (1.0, 1.0, 1.0)), ("nuclei", (512, 512), (1.0, 1.0))],
)
def test_sample_data(make_napari_viewer, key, shape, scale):
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, key)
    assert layers[0].data.shape == shape
    np.testing.assert_allclose(layers[0].scale, scale)


def test_viewer_open_real_nifti_and_tiff(make_napari_viewer, data_dir):
    viewer = make_napari_viewer()
    (mri,) = viewer.open(str(data_dir / "nibabel_anatomical_las.nii.gz"), plugin=PLUGIN)
    assert mri.data.shape == (25, 41, 33)
    np.testing.assert_allclose(mri.scale, [2.0, 2.0, 2.0])
    (tif,) = viewer.open(str(data_dir / "cells3d_crop.tif"), plugin=PLUGIN)
    assert tif.data.shape == (8, 64, 64)
    np.testing.assert_allclose(tif.scale, [0.29, 0.26, 0.26], rtol=1e-6)
    (jpg,) = viewer.open(str(data_dir / "blood_crop.jpg"))  # napari's builtin reader (issue 16)
    assert jpg.rgb


def test_bad_files_give_notifications_not_crashes(make_napari_viewer, tmp_path, data_dir, notifications):
    import tifffile

    viewer = make_napari_viewer()
    (tmp_path / "empty.tif").write_bytes(b"")
    raw = (data_dir / "colin27_crop.nii.gz").read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "text.tif").write_text("not a tiff\n")
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((2, 3, 2, 8, 8), np.uint8))
    expected = {
        "empty.tif": "empty",
        "trunc.nii.gz": "truncated or corrupt",
        "text.tif": "not a valid TIFF",
        "five.tif": "more than 4 non-channel",
    }
    for name, words in expected.items():
        before = len(notifications)
        layers = viewer.open(str(tmp_path / name), plugin=PLUGIN)
        assert layers == []
        new = [str(n.message) for n in notifications[before:]]
        assert any(name in m and words in m for m in new), (name, new)
    assert len(viewer.layers) == 0
    viewer.add_image(np.zeros((4, 4)))  # still alive


def test_5d_imagej_tiff_opens_as_channel_layers(make_napari_viewer, tmp_path, notifications):
    import tifffile

    viewer = make_napari_viewer()
    data = np.random.default_rng(0).integers(0, 255, (2, 3, 2, 8, 8), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tzcyx.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    layers = viewer.open(str(tmp_path / "tzcyx.tif"), plugin=PLUGIN)
    assert [lay.name for lay in layers] == ["tzcyx [ch0]", "tzcyx [ch1]"]
    assert layers[0].data.shape == (2, 3, 8, 8)
    np.testing.assert_array_equal(layers[1].data, data[:, :, 1])
    assert any("channels opened as separate layers" in str(n.message) for n in notifications)
