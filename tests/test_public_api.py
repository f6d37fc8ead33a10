"""The public API per workflow: small and documented (numpydoc). (That it imports without
torch is checked in test_cli_startup.py.)"""

from __future__ import annotations

import inspect

import expertloop.membranes as membranes

ENTRY_METHODS = {"MembraneProject": ["create", "open", "update_config", "train_source", "transfer",
                                     "propose", "accept", "retrain"]}


def test_membranes_entry_points_have_numpydoc_sections():
    assert len(membranes.__all__) <= 12  # a handful, not the engine
    documented = []  # (name, callable)
    for name in membranes.__all__:
        obj = getattr(membranes, name)
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
