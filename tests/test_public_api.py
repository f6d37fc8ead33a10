"""The public API per workflow: small and documented (numpydoc). (That it imports without
torch is checked in test_cli_startup.py.)"""

from __future__ import annotations

import importlib
import inspect

import pytest

# public classes whose methods are entry points
ENTRY_METHODS = {"MembraneProject": ["create", "open", "update_config", "train_source", "transfer",
                                     "propose", "accept", "retrain"],
                 "SpotDetector": ["save", "load"],
                 "SemiAutoLoop": ["restore", "run_iteration", "apply_review", "finish"]}


@pytest.mark.parametrize("workflow", ["membranes", "spots", "blood", "flim", "semiauto"])
def test_entry_points_have_numpydoc_sections(workflow):
    api = importlib.import_module(f"expertloop.{workflow}")
    assert len(api.__all__) <= 12  # a handful, not the engine
    documented = []  # (name, callable)
    for name in api.__all__:
        obj = getattr(api, name)
        if inspect.isclass(obj):
            documented += [(f"{name}.{m}", getattr(obj, m)) for m in ENTRY_METHODS.get(name, [])]
        elif name != "run_job":
            documented.append((name, obj))
    for name, fn in documented:
        doc = inspect.getdoc(fn)
        assert doc, f"{name} has no docstring"
        assert "\nReturns\n-------" in doc, f"{name}: no numpydoc Returns section"
        if [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]:
            assert "\nParameters\n----------" in doc, f"{name}: no numpydoc Parameters section"
