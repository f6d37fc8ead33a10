"""One owner for every parameter: config dataclass fields that describe themselves.

Each workflow keeps its parameters in one dataclass. A field declared with
:func:`param` carries, next to its default, what a front end needs to show
it: a label, one line of help, a range (min/max/step), a unit, the allowed
choices, and whether it is *fixed* once a project or model exists (an
architecture, a cached abundance) or may change later (a weight, an epoch
count). Nested config dataclasses (e.g. a network architecture inside a
loop config) are walked; their parameters are addressed by their own field
name, which must be unique in the whole tree.

Three functions turn that metadata into front ends, so no default or range
is written twice:

* :func:`control_specs`: one plain dict per parameter, ready for
  :func:`magicgui.widgets.create_widget` (the widgets build their controls
  from it; the engine itself never imports Qt or magicgui);
* :func:`add_arguments`: argparse flags with ``default=None``, meaning
  "the config's value" (the default for a new project or model, the saved
  value when resuming), read back with :func:`given_values`;
* :func:`apply_values`: a new config with some values changed, refusing
  (:class:`FixedParameterError`, a clear message) a change to a fixed field
  and reporting what changed, so callers can save and log it.

:func:`build` makes a new config from the defaults and some values, and
:func:`current_values` reads the values in force, as controls show them.

Example::

    @dataclass
    class SmoothConfig:
        sigma: float = param(1.0, help="Gaussian sigma", min=0.1, max=20, step=0.1, unit="px")
        size: int = param(64, help="tile size", min=16, max=4096, fixed=True)
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

__all__ = [
    "FixedParameterError", "Param", "ParamInfo", "add_arguments", "apply_values", "build",
    "control_specs", "current_values", "given_values", "markdown_table", "param", "parameters", "validate",
]


class FixedParameterError(ValueError):
    """A change was asked for a parameter fixed when the project/model was created."""


@dataclass(frozen=True)
class Param:
    """What a front end needs to know about one config field."""

    help: str
    label: str | None = None          # control label (default: the field name, spaced)
    min: float | None = None
    max: float | None = None
    step: float | None = None
    unit: str | None = None
    choices: tuple[Any, ...] | None = None
    fixed: bool = False               # fixed at creation: read-only once a project is open
    control: str | None = None        # magicgui widget type (default: from the type)
    type: Any = None                  # value type of control and flag (default: the field's)
    view: Callable[[Any], Any] | None = None  # field value -> control/flag value
    widget: bool = True               # shown in the widget
    cli: bool = True                  # a command-line flag
    flag: str | tuple[str, ...] | None = None  # flag name(s) (default: --field-name)


def param(default: Any = MISSING, *, default_factory: Any = MISSING, help: str, **meta: Any) -> Any:
    """A dataclass field with a default and its :class:`Param` description."""
    kw: dict[str, Any] = {"metadata": {"param": Param(help=help, **meta)}}
    if default_factory is not MISSING:
        kw["default_factory"] = default_factory
    else:
        kw["default"] = default
    return field(**kw)


@dataclass(frozen=True)
class ParamInfo:
    """One parameter of a config tree: where it lives and how to show it."""

    name: str
    path: tuple[str, ...]   # attribute path from the root config
    param: Param
    type: Any               # the control/flag value type (int, float, str, bool)
    default: Any            # the default as a control shows it

    @property
    def label(self) -> str:
        return self.param.label or self.name.replace("_", " ")

    @property
    def flags(self) -> tuple[str, ...]:
        f = self.param.flag or "--" + self.name.replace("_", "-")
        return (f,) if isinstance(f, str) else tuple(f)

    def show(self, value: Any) -> Any:
        return self.param.view(value) if self.param.view is not None and value is not None else value

    def describe(self, absent: str | None = None) -> str:
        """One line: help, then what an absent flag means (``absent``), the
        default, the unit and whether it is fixed (tooltips and ``--help``)."""
        notes = [] if absent is None else [f"absent: {absent}"]
        if self.default is not None:
            unit = f" {self.param.unit}" if self.param.unit else ""
            notes.append(f"default {self.default}{unit}")
        if self.param.fixed:
            notes.append("fixed once created")
        return f"{self.param.help} ({'; '.join(notes)})" if notes else self.param.help


def _value_type(hint: Any) -> Any:
    """``int | None`` -> int; plain types unchanged."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def parameters(cls: Any) -> list[ParamInfo]:
    """Every :func:`param` field of config class (or instance) ``cls``, nested
    config dataclasses included, in declaration order."""
    cls = cls if isinstance(cls, type) else type(cls)
    out: list[ParamInfo] = []

    def walk(c: type, path: tuple[str, ...]) -> None:
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            hint = _value_type(hints.get(f.name, Any))
            p = f.metadata.get("param")
            if p is None:
                if dataclasses.is_dataclass(hint):
                    walk(hint, path + (f.name,))
                continue
            typ = p.type or hint
            default = _default_of(f)
            default = p.view(default) if p.view is not None and default is not None else default
            out.append(ParamInfo(f.name, path + (f.name,), p, typ, default))

    walk(cls, ())
    names = [i.name for i in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise TypeError(f"{cls.__name__}: parameter names must be unique in the tree, repeated: {sorted(dup)}")
    return out


def _select(cls: Any, names: Iterable[str] | None, where: str | None = None) -> list[ParamInfo]:
    infos = parameters(cls)
    if names is None:
        return [i for i in infos if where is None or getattr(i.param, where)]
    by_name = {i.name: i for i in infos}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise KeyError(f"{unknown} are not parameters of {type(cls).__name__ if not isinstance(cls, type) else cls.__name__}")
    return [by_name[n] for n in names]


def _get(config: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name)
    return config


def current_values(config: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The values in force, as controls and flags show them."""
    return {i.name: i.show(_get(config, i.path)) for i in _select(config, names)}


def _cell(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1e4:
        return str(int(value))
    return str(value).replace("|", "\\|")


def markdown_table(cls: Any, names: Iterable[str] | None = None) -> str:
    """The docs' parameter table of config class ``cls``: one row per
    parameter with its command-line flag, default (and unit), range or
    choices and help, generated from the fields so the docs cannot drift
    (``tests/test_docs_parameters.py`` checks every page's tables)."""
    rows = ["| parameter | flag | default | range | meaning |", "|---|---|---|---|---|"]
    for i in _select(cls, names):
        p = i.param
        unit = f" {p.unit}" if p.unit and i.default is not None else ""
        default = "none" if i.default is None else f"{_cell(i.default)}{unit}"
        if p.choices:
            rng = " / ".join(_cell(c) for c in p.choices)
        elif p.min is not None or p.max is not None:
            rng = f"{_cell(p.min) if p.min is not None else ''} to {_cell(p.max) if p.max is not None else ''}".strip()
        else:
            rng = ""
        flag = ", ".join(f"`{f}`" for f in i.flags) if p.cli else "(widget only)" if p.widget else ""
        meaning = p.help + (" (fixed once created)" if p.fixed else "")
        rows.append(f"| `{i.name}` | {flag} | {default} | {rng} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def validate(config: Any) -> None:
    """Check every parameter of ``config`` against its range and choices
    (a ValueError naming the parameter); call it from ``__post_init__``."""
    for i in parameters(config):
        value = i.show(_get(config, i.path))
        if value is None:
            continue
        p = i.param
        if p.choices is not None and value not in p.choices:
            raise ValueError(f"{i.name} must be one of {list(p.choices)}, got {value!r}")
        if (p.min is not None and value < p.min) or (p.max is not None and value > p.max):
            raise ValueError(f"{i.name} must be in [{p.min}, {p.max}], got {value}")


# ----------------------------------------------------------------- widgets
_CONTROLS = {bool: "CheckBox", int: "SpinBox", float: "FloatSpinBox", str: "LineEdit"}


def control_specs(config: Any, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Keyword arguments of :func:`magicgui.widgets.create_widget` for each
    widget parameter of ``config`` (a class: its defaults; an instance: its
    values), plus ``"fixed"`` (read-only once a project is open)."""
    values = current_values(config) if not isinstance(config, type) else None
    specs = []
    for i in _select(config, names, "widget"):
        p = i.param
        options: dict[str, Any] = {"tooltip": i.describe()}
        if p.choices is not None:
            options["choices"] = list(p.choices)
            control = p.control or "ComboBox"
        else:
            control = p.control or _CONTROLS.get(i.type)
            if control is None:
                raise TypeError(f"no control for parameter {i.name!r} of type {i.type!r}: give Param.control")
            for key in ("min", "max", "step"):
                if getattr(p, key) is not None:
                    options[key] = getattr(p, key)
        value = i.default if values is None else values[i.name]
        specs.append({"name": i.name, "label": i.label, "value": value, "widget_type": control,
                      "options": options, "fixed": p.fixed})
    return specs


# ----------------------------------------------------------------- command line
def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "yes", "true", "on"):
        return True
    if t in ("0", "no", "false", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser, config_cls: Any, names: Iterable[str] | None = None,
                  *, when_absent: str = "the default") -> None:
    """One flag per command-line parameter of ``config_cls`` (default None:
    not given, so :func:`given_values` leaves the config's value).
    ``when_absent`` says in ``--help`` what an absent flag means."""
    for i in _select(config_cls, names, "cli"):
        kw: dict[str, Any] = {"default": None, "dest": i.name, "type": _bool if i.type is bool else i.type}
        if i.param.choices is not None:
            kw["choices"] = list(i.param.choices)
        kw["help"] = i.describe(when_absent)
        parser.add_argument(*i.flags, **kw)


def given_values(args: argparse.Namespace, config_cls: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
    """The parameters given on the command line (flags added by :func:`add_arguments`)."""
    return {i.name: getattr(args, i.name) for i in _select(config_cls, names, "cli")
            if getattr(args, i.name, None) is not None}


# ----------------------------------------------------------------- values -> config
def _replace(config: Any, path: tuple[str, ...], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(config, **{path[0]: value})
    return dataclasses.replace(config, **{path[0]: _replace(getattr(config, path[0]), path[1:], value)})


def build(config_cls: type, values: Mapping[str, Any] = (), **overrides: Any) -> Any:
    """A new config: the defaults, with ``values`` (parameter names, control/
    flag values) set; nested configs are built from their own defaults, so
    fields derived in ``__post_init__`` follow the given values."""
    values = {**dict(values), **overrides}
    by_path: dict[tuple[str, ...], Any] = {}
    for i in _select(config_cls, list(values)):
        by_path[i.path] = values[i.name]

    def make(c: type, prefix: tuple[str, ...]) -> Any:
        hints = typing.get_type_hints(c)
        kw = {}
        for f in dataclasses.fields(c):
            path = prefix + (f.name,)
            if path in by_path:
                kw[f.name] = by_path[path]
            elif f.metadata.get("param") is None and dataclasses.is_dataclass(_value_type(hints.get(f.name))):
                if any(p[:len(path)] == path for p in by_path):
                    kw[f.name] = make(_value_type(hints[f.name]), path)
        return c(**kw)

    return make(config_cls, ())


def apply_values(config: Any, values: Mapping[str, Any], *, allow_fixed: bool = False
                 ) -> tuple[Any, dict[str, tuple[Any, Any]]]:
    """``(new_config, changes)``: ``config`` with ``values`` set (None values
    are skipped), and ``{name: (old, new)}`` for those that differ.

    A changed fixed parameter raises :class:`FixedParameterError` unless
    ``allow_fixed``; an invalid value raises the config's own ValueError.
    """
    infos = {i.name: i for i in _select(config, [n for n, v in values.items() if v is not None])}
    changes = {}
    new = config
    for name, info in infos.items():
        old = info.show(_get(config, info.path))
        value = values[name]
        if info.type in (int, float) and not isinstance(value, bool):
            value = info.type(value)
        if value == old:
            continue
        if info.param.fixed and not allow_fixed:
            raise FixedParameterError(
                f"{info.name} is fixed once a project or model is created (it is {old}, {value} "
                "was asked): start a new project or model to change it")
        new = _replace(new, info.path, value)
        changes[name] = (old, value)
    return new, changes
