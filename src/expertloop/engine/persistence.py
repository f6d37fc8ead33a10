"""Saving and loading models: weights + a JSON metadata sidecar.

A saved model is two files side by side::

    my_model.pt     # tensors only (a state dict), written with torch.save
    my_model.json   # human-readable metadata

Loading uses ``torch.load(..., weights_only=True)``, which refuses to unpickle
arbitrary Python objects, so opening a model file someone sent you cannot run
their code. The sidecar records the workflow the model belongs to, its class
names, the input it expects, the versions that wrote it and the SHA-256 of the
weights file, so a mismatched, truncated or corrupt pair is reported clearly
(:class:`ModelFileError`) instead of failing somewhere deep in torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertloop import __version__
from expertloop.engine.backend import get_torch

FORMAT = "expertloop-model"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".pt"
META_SUFFIX = ".json"


class ModelFileError(ValueError):
    """A model file is missing, corrupt, or not the model that was expected."""


@dataclass
class ModelBundle:
    """What :func:`load_model` returns."""

    state: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def workflow(self) -> str:
        return self.metadata["workflow"]

    @property
    def class_names(self) -> list[str]:
        return list(self.metadata.get("class_names", []))

    @property
    def input_spec(self) -> dict[str, Any]:
        return dict(self.metadata.get("input_spec", {}))


def model_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (weights, metadata) file pair for ``path`` (with or without suffix)."""
    p = Path(path)
    if p.suffix in (WEIGHTS_SUFFIX, META_SUFFIX):
        p = p.with_suffix("")
    return p.with_name(p.name + WEIGHTS_SUFFIX), p.with_name(p.name + META_SUFFIX)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_state(obj: Any, torch) -> Any:
    """Convert a module / nested mapping of arrays to tensors-only data."""
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach().cpu() for k, v in obj.state_dict().items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be saved safely")
        # np.ascontiguousarray turns a 0-d array into shape (1,): keep the shape
        return torch.from_numpy(np.ascontiguousarray(obj).reshape(obj.shape))
    if isinstance(obj, Mapping):
        return {str(k): _to_state(v, torch) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_state(v, torch) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(
        f"cannot save a {type(obj).__name__}: models are saved as tensors, "
        "arrays, numbers and strings only (no pickled objects)"
    )


def _jsonable(obj: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(obj))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON-serialisable: {exc}") from exc


def save_model(
    path: str | os.PathLike,
    model: Any,
    *,
    workflow: str,
    class_names: Sequence[str] = (),
    input_spec: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (a ``torch.nn.Module`` or a mapping of tensors/arrays).

    Returns the path of the weights file. Both files are written to temporary
    names first and moved into place, so a crash never leaves a half-written
    model under the final name.
    """
    torch = get_torch()
    if not workflow or not isinstance(workflow, str):
        raise ValueError("workflow must be a non-empty string")
    weights, meta_path = model_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = _to_state(model, torch)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "workflow": workflow,
        "class_names": [str(c) for c in class_names],
        "input_spec": _jsonable(dict(input_spec or {}), "input_spec"),
        "extra": _jsonable(dict(extra or {}), "extra"),
        "versions": {
            "expertloop": __version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "weights_file": weights.name,
    }
    tmp_w = weights.with_name(weights.name + ".tmp")
    tmp_m = meta_path.with_name(meta_path.name + ".tmp")
    try:
        torch.save(state, tmp_w)
        meta["weights_sha256"] = _sha256(tmp_w)
        tmp_m.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        os.replace(tmp_w, weights)
        os.replace(tmp_m, meta_path)
    finally:
        for t in (tmp_w, tmp_m):
            if t.exists():
                t.unlink()
    return weights


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model's JSON sidecar (does not touch the weights)."""
    weights, meta_path = model_paths(path)
    if not meta_path.exists():
        raise ModelFileError(
            f"model metadata {meta_path} not found: an expertloop model is a "
            f"{WEIGHTS_SUFFIX} file with a {META_SUFFIX} file of the same name"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"model metadata {meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{meta_path} is not an expertloop model description")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path} was written by a newer expertloop (model format "
            f"{meta['format_version']}, this version reads up to {FORMAT_VERSION})"
        )
    return meta


def load_model(
    path: str | os.PathLike,
    *,
    workflow: str | None = None,
    map_location: Any = "cpu",
) -> ModelBundle:
    """Load a model saved by :func:`save_model` without unpickling code.

    ``workflow``, if given, must match the saved one (a membrane model cannot
    be loaded into the spot detector by mistake).
    """
    torch = get_torch()
    weights, meta_path = model_paths(path)
    meta = read_metadata(path)
    if workflow is not None and meta.get("workflow") != workflow:
        raise ModelFileError(
            f"{weights.name} is a {meta.get('workflow')!r} model, "
            f"not a {workflow!r} model"
        )
    if not weights.exists():
        raise ModelFileError(f"model weights {weights} not found (metadata is at {meta_path})")
    expected = meta.get("weights_sha256")
    if expected and _sha256(weights) != expected:
        raise ModelFileError(
            f"model weights {weights} do not match their metadata (checksum "
            "differs): the file is corrupt, truncated or from another model"
        )
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise ModelFileError(
            f"cannot load model weights {weights}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    return ModelBundle(state=state, metadata=meta)
