import json

import numpy as np
import pytest
import torch

from expertloop.engine import device as dev
from expertloop.engine.persistence import (
    ModelFileError,
    load_model,
    model_paths,
    read_metadata,
    save_model,
)
from expertloop.engine.seed import seed_everything


# ------------------------------------------------------------------ device
def test_auto_device_is_cpu_here(monkeypatch):
    monkeypatch.delenv(dev.ENV_VAR, raising=False)
    info = dev.device_info()
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert info.device == expected and info.source == "auto"
    assert str(dev.select_device()) == expected


def test_env_var_and_argument_override(monkeypatch):
    monkeypatch.setenv(dev.ENV_VAR, "cpu")
    assert dev.device_info().source == "environment"
    assert dev.device_info("cpu").source == "argument"
    assert "cpu" in str(dev.device_info("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_an_error_not_a_fallback(monkeypatch):
    with pytest.raises(dev.DeviceError, match="CUDA is not available"):
        dev.device_info("cuda")
    monkeypatch.setenv(dev.ENV_VAR, "cuda:0")
    with pytest.raises(dev.DeviceError):
        dev.select_device()
    with pytest.raises(dev.DeviceError, match="unknown device"):
        dev.device_info("gpu-please")


def test_autocast_is_noop_on_cpu():
    with dev.autocast_context("cpu"):
        x = torch.ones(2, 2) @ torch.ones(2, 2)
    assert x.dtype == torch.float32


# -------------------------------------------------------------------- seed
def test_seed_controls_numpy_and_torch():
    rng = seed_everything(7)
    a = (rng.random(3), np.random.rand(2), torch.rand(3))
    rng = seed_everything(7)
    b = (rng.random(3), np.random.rand(2), torch.rand(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert torch.equal(a[2], b[2])
    c = seed_everything(8).random(3)
    assert not np.array_equal(a[0], c)
    with pytest.raises(ValueError):
        seed_everything(-1)


# ------------------------------------------------------------- persistence
def _net():
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = _net()
    weights = save_model(
        tmp_path / "m", net, workflow="demo", class_names=["bg", "fg"],
        input_spec={"channels": 1, "patch": 9}, extra={"mean": np.float64(3.5).item()},
    )
    assert weights == tmp_path / "m.pt" and (tmp_path / "m.json").exists()
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["workflow"] == "demo" and meta["versions"]["torch"] == torch.__version__
    bundle = load_model(tmp_path / "m.pt", workflow="demo")
    assert bundle.class_names == ["bg", "fg"] and bundle.input_spec["patch"] == 9
    net2 = _net()
    net2.load_state_dict(bundle.state)
    x = torch.randn(1, 1, 8, 8)
    assert torch.equal(net(x), net2(x))
    # numpy arrays are accepted and come back as tensors
    save_model(tmp_path / "arr.pt", {"w": np.arange(4.0)}, workflow="demo")
    assert load_model(tmp_path / "arr").state["w"].tolist() == [0, 1, 2, 3]


def test_wrong_workflow_is_refused(tmp_path):
    save_model(tmp_path / "m", _net(), workflow="membrane")
    with pytest.raises(ModelFileError, match="'membrane' model, not a 'spots' model"):
        load_model(tmp_path / "m", workflow="spots")


def test_corrupt_files_give_clear_errors(tmp_path):
    w = save_model(tmp_path / "m", _net(), workflow="demo")
    _, meta = model_paths(w)
    # truncated weights: checksum mismatch
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="corrupt, truncated"):
        load_model(w)
    # bad JSON
    meta.write_text("{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        read_metadata(w)
    # missing sidecar
    meta.unlink()
    with pytest.raises(ModelFileError, match="not found"):
        load_model(w)


def test_weights_only_refuses_pickled_code(tmp_path):
    """A weights file holding an arbitrary object must not be unpickled."""
    w = save_model(tmp_path / "m", _net(), workflow="demo")
    meta_path = model_paths(w)[1]
    meta = json.loads(meta_path.read_text())
    torch.save({"evil": _Evil()}, w)  # crafted file, checksum removed below
    meta.pop("weights_sha256")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="cannot load model weights"):
        load_model(w)
    assert not _Evil.ran


def test_unsaveable_objects_are_refused(tmp_path):
    with pytest.raises(TypeError, match="no pickled objects"):
        save_model(tmp_path / "m", {"x": object()}, workflow="demo")
    assert not (tmp_path / "m.pt").exists()


class _Evil:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Evil.ran = True
    return "pwned"
