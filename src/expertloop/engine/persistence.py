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


@dataclass(frozen=True)
class Field:
    """One entry of a sidecar schema (see :func:`check_fields`).

    ``kind``: ``int``, ``float``, ``bool``, ``str``, ``list`` or ``dict``;
    ``lo``/``hi`` bound numbers (and each number of a list of ``item``);
    ``max_len`` bounds lists and strings.
    """

    kind: type
    lo: float | None = None
    hi: float | None = None
    required: bool = True
    item: type | None = None
    max_len: int = 100_000
    nullable: bool = False


_KIND_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text",
               list: "a list", dict: "a JSON object"}


def _check_value(value: Any, f: Field, name: str, where: str) -> None:
    def bad(why: str):
        return ModelFileError(f"{where}: {name} = {str(value)[:60]!r} {why}; "
                              "the model description is damaged or crafted")

    if value is None and f.nullable:
        return
    kind_ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
               float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
               bool: lambda v: isinstance(v, bool)}.get(f.kind, lambda v: isinstance(v, f.kind))
    if not kind_ok(value):
        raise bad(f"is not {_KIND_NAMES.get(f.kind, f.kind.__name__)}")
    if f.kind is float and not np.isfinite(value):
        raise bad("is not a finite number")
    if f.kind in (int, float) and ((f.lo is not None and value < f.lo)
                                   or (f.hi is not None and value > f.hi)):
        raise bad(f"is outside {f.lo}..{f.hi}")
    if f.kind in (list, str, dict) and len(value) > f.max_len:
        raise bad(f"is longer than {f.max_len}")
    if f.kind is list and f.item is not None:
        for i, v in enumerate(value):
            _check_value(v, Field(f.item, f.lo, f.hi), f"{name}[{i}]", where)


def check_fields(values: Any, schema: Mapping[str, Field], where: str) -> dict[str, Any]:
    """Check a sidecar section against ``schema`` before anything is built from it.

    Returns the section as a dict. A wrong type, a value out of range (a
    ``patch_size`` of 100000 would allocate terabytes) or a missing required
    key raises :class:`ModelFileError` naming the key.
    """
    if not isinstance(values, Mapping):
        raise ModelFileError(f"{where} is a {type(values).__name__}, not a JSON object; "
                             "the model description is damaged or crafted")
    for name, f in schema.items():
        if name not in values:
            if f.required:
                raise ModelFileError(f"{where}: {name} is missing from the model description")
            continue
        _check_value(values[name], f, name, where)
    return dict(values)


_TOP = {
    "workflow": Field(str, max_len=100),
    "class_names": Field(list, item=str, max_len=10_000, required=False),
    "input_spec": Field(dict, required=False),
    "extra": Field(dict, required=False),
    "weights_sha256": Field(str, max_len=64, required=False),
}


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

    Returns the path of the weights file. Both files are written in full under
    ``.new`` names first, then renamed; a crash at any point leaves either the
    old model or the new one loadable (see :func:`_roll_forward`), never a
    half-written or mismatched pair.
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
    new_w, new_m = _pending(weights), _pending(meta_path)
    swapped = False
    try:
        torch.save(state, new_w)
        _fsync(new_w)
        meta["weights_sha256"] = _sha256(new_w)
        new_m.write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _fsync(new_m)
        # From this rename on, ``<name>.json.new`` is the commit record: a kill
        # before the next rename is completed by the next read (roll forward).
        os.replace(new_w, weights)
        swapped = True
        os.replace(new_m, meta_path)
        _fsync(meta_path.parent)
    finally:
        for t in ((new_m,) if swapped else (new_w, new_m)):
            if t.exists() and not (swapped and _sha_matches(t, weights)):
                t.unlink()
    return weights


def _pending(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha_matches(meta_file: Path, weights: Path) -> bool:
    """Whether the sidecar ``meta_file`` describes the weights now in ``weights``."""
    try:
        sha = json.loads(meta_file.read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return bool(sha) and weights.exists() and _sha256(weights) == sha


def _roll_forward(weights: Path, meta_path: Path) -> None:
    """Finish a save that was killed between its two renames.

    :func:`save_model` writes ``<name>.pt.new`` and ``<name>.json.new`` in
    full, then renames the weights, then the sidecar. If a ``.json.new`` is
    left and describes the weights in place, the weights were already
    switched: the sidecar is switched too. Otherwise the leftovers belong to
    a save killed before any rename and the old pair is intact.
    """
    pending = _pending(meta_path)
    if pending.exists() and _sha_matches(pending, weights):
        try:
            os.replace(pending, meta_path)
        except OSError as exc:  # read-only folder: the model stays unreadable here
            raise ModelFileError(
                f"{meta_path}: a save was interrupted and cannot be completed "
                f"({exc.strerror}); rename {pending.name} to {meta_path.name}") from exc


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a model's JSON sidecar (does not touch the weights)."""
    weights, meta_path = model_paths(path)
    _roll_forward(weights, meta_path)
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
    if not isinstance(meta.get("format_version", 0), int) or isinstance(meta.get("format_version"), bool):
        raise ModelFileError(f"{meta_path}: format_version is not a whole number")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ModelFileError(
            f"{meta_path} was written by a newer expertloop (model format "
            f"{meta['format_version']}, this version reads up to {FORMAT_VERSION})"
        )
    return check_fields(meta, _TOP, str(meta_path))


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
