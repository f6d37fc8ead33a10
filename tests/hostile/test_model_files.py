"""Hostile and damaged model files (issue 18, defects 8 and 11).

A sidecar is checked against a schema before anything is built from it (a
crafted ``patch_size`` must not allocate terabytes), and an overwrite killed
at any point leaves the old or the new model loadable, never neither.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from expertloop.engine.persistence import (
    ModelFileError,
    load_model,
    model_paths,
    save_model,
)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _edit_sidecar(weights: Path, edit) -> None:
    meta_path = model_paths(weights)[1]
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


def _state(value: float) -> dict:
    return {"w": torch.full((4, 4), float(value))}


@pytest.mark.parametrize("key,value", [("extra", ["not", "a", "dict"]), ("input_spec", 3),
                                       ("class_names", "abc"), ("class_names", [1, 2]),
                                       ("workflow", None), ("format_version", "1")])
def test_sidecar_of_the_wrong_shape_is_a_model_file_error(tmp_path, key, value):
    w = save_model(tmp_path / "m", _state(1), workflow="demo")
    _edit_sidecar(w, lambda m: m.__setitem__(key, value))
    with pytest.raises(ModelFileError):
        load_model(w)


def test_spot_model_patch_size_100000_is_refused_before_building(tmp_path):
    from expertloop.engine.spots.lcnn import SpotConfig, SpotDetector, build_spotnet

    det = SpotDetector(build_spotnet(2, 9), SpotConfig())
    w = det.save(tmp_path / "spots")
    _edit_sidecar(w, lambda m: m["extra"]["config"].__setitem__("patch_size", 100_000))
    t = time.perf_counter()
    with pytest.raises(ModelFileError, match="patch_size = '100000' is outside 7..255"):
        SpotDetector.load(w)
    assert time.perf_counter() - t < 5  # refused, not allocated
    # an even patch size (the network cannot be built) is one clear error too
    _edit_sidecar(w, lambda m: m["extra"]["config"].__setitem__("patch_size", 10))
    with pytest.raises(ModelFileError, match="patch_size must be odd"):
        SpotDetector.load(w)
    _edit_sidecar(w, lambda m: m["extra"].__setitem__("config", [1, 2]))
    with pytest.raises(ModelFileError, match="not a JSON object"):
        SpotDetector.load(w)


def test_blood_model_sidecar_is_checked_before_the_detector_is_built(tmp_path):
    from expertloop.engine.blood import load_blood_model

    extra = {"det_backbone": "mobilenet_v2", "det_classes": ["RBC"], "embedder": "resnet18",
             "abnormal_types": [], "frozen_bn": True, "backbone_pretrained": False,
             "embedder_pretrained": False, "hidden": 8}
    spec = {"patch_size": 32, "min_size": 96, "max_size": 10**7}
    w = save_model(tmp_path / "b", _state(0), workflow="blood", class_names=["RBC"],
                   input_spec=spec, extra=extra)
    with pytest.raises(ModelFileError, match="max_size = '10000000' is outside"):
        load_blood_model(w)
    _edit_sidecar(w, lambda m: (m["input_spec"].__setitem__("max_size", 96),
                                m["extra"].__setitem__("hidden", "8")))
    with pytest.raises(ModelFileError, match="hidden = '8' is not a whole number"):
        load_blood_model(w)
    _edit_sidecar(w, lambda m: m["extra"].pop("det_classes"))
    with pytest.raises(ModelFileError, match="det_classes is missing"):
        load_blood_model(w)


def test_membrane_and_flim_sidecars_are_bounded(tmp_path):
    from expertloop.engine.flim.encoder import load_encoder
    from expertloop.engine.membranes.net import load_net

    w = save_model(tmp_path / "mem", _state(0), workflow="membranes",
                   input_spec={"net": {"window": 64, "channels": [16, 32, 10**9], "hidden": [64, 64]}})
    with pytest.raises(ModelFileError, match=r"channels\[2\] = '1000000000' is outside"):
        load_net(w)
    w = save_model(tmp_path / "flim", _state(0), workflow="flim",
                   extra={"kind": "encoder", "spec": {"ndim": 3, "layers": [{"kernel_size": 999}]},
                          "in_channels": 1, "out_channels": [8]})
    with pytest.raises(ModelFileError, match="kernel_size = '999' is outside 1..63"):
        load_encoder(w)


_KILL_BETWEEN_RENAMES = """
import os, sys, torch
from expertloop.engine import persistence
real, calls = os.replace, []
def replace(a, b):
    real(a, b)
    calls.append(b)
    if len(calls) == int(sys.argv[2]):
        os._exit(9)  # a kill: no finally clause, no clean-up
persistence.os.replace = replace
persistence.save_model(sys.argv[1], {"w": torch.full((4, 4), 2.0)}, workflow="demo")
"""


@pytest.mark.parametrize("killed_after,expected", [(1, 2.0), (0, 1.0)])
def test_overwrite_killed_between_the_two_renames_leaves_a_loadable_model(tmp_path, killed_after,
                                                                          expected):
    """Defect 8: before, a kill after the weights' rename left new weights
    with the old sidecar (checksum mismatch): neither model loaded."""
    w = save_model(tmp_path / "m", _state(1), workflow="demo")
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # killed_after=0: killed while writing (no rename reached)
    code = _KILL_BETWEEN_RENAMES if killed_after else _KILL_BETWEEN_RENAMES.replace(
        "persistence.save_model",
        "torch.save = lambda obj, f: (open(f, 'wb').write(b'half'), os._exit(9))\npersistence.save_model")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(killed_after or 99)],
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == 9, r.stderr.decode()
    bundle = load_model(w)
    np.testing.assert_array_equal(bundle.state["w"].numpy(), np.full((4, 4), expected))
    if killed_after:  # the sidecar's rename was completed by the read
        assert not list(tmp_path.glob("*.new"))
    else:  # leftovers of a save killed mid-write do not block the next one
        assert list(tmp_path.glob("*.new"))
        save_model(tmp_path / "m", _state(3), workflow="demo")
        assert float(load_model(w).state["w"][0, 0]) == 3.0
        assert not list(tmp_path.glob("*.new"))


def test_failed_save_keeps_the_old_model(tmp_path, monkeypatch):
    from expertloop.engine import persistence

    w = save_model(tmp_path / "m", _state(1), workflow="demo")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(persistence, "_sha256", full_disk)
    with pytest.raises(OSError):
        save_model(tmp_path / "m", _state(2), workflow="demo")
    monkeypatch.undo()
    assert float(load_model(w).state["w"][0, 0]) == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]
