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


#: the config dataclasses of each workflow (engine/config.py's ``param`` fields)
CONFIGS = {"membranes": ["MembraneConfig", "NetConfig"], "spots": ["SpotConfig"],
           "blood": ["BloodModel", "BloodTraining"], "flim": ["FlimFit", "FlimRecommend"],
           "semiauto": ["SemiAutoConfig"]}


def _config_defaults(workflow) -> dict:
    import dataclasses

    from expertloop.engine.config import parameters

    api = importlib.import_module(f"expertloop.{workflow}")
    engine = importlib.import_module(f"expertloop.engine.{workflow}")
    out = {}
    for cls_name in CONFIGS[workflow]:
        cls = getattr(api, cls_name, None) or getattr(engine, cls_name)
        assert parameters(cls), cls_name
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING and f.name != "seed":  # seeds are 0 by convention
                out[f.name] = (cls_name, f.default)
    return out


def _literal_defaults(fn):
    """(parameter, value) of the defaults written as literals in ``fn``'s own signature."""
    import ast
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    a = node.args
    pos = a.posonlyargs + a.args
    pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults))
    pairs += [(k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
    # (None means "not given", not a value that could drift)
    return [(arg.arg, d.value) for arg, d in pairs if isinstance(d, ast.Constant) and d.value is not None]


@pytest.mark.parametrize("workflow", ["membranes", "spots", "blood", "flim", "semiauto"])
def test_entry_points_take_config_defaults_from_the_config(workflow):
    """Issue 13: no default written twice. An entry point's parameter that a
    config field also has takes its default from that field, so they cannot drift."""
    api = importlib.import_module(f"expertloop.{workflow}")
    defaults = _config_defaults(workflow)
    checked = 0
    for name in api.__all__:
        obj = getattr(api, name)
        fns = ([getattr(obj, m) for m in ENTRY_METHODS.get(name, [])] if inspect.isclass(obj)
               else [] if name == "run_job" else [obj])
        for fn in fns:
            for param, value in _literal_defaults(fn):
                checked += 1
                if param in defaults:
                    cls_name, default = defaults[param]
                    assert not (type(value) is type(default) and value == default), (
                        f"{workflow}.{name}({param}={value!r}) repeats {cls_name}.{param}: "
                        f"write {cls_name}.{param}")
    assert checked, workflow
