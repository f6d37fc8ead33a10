"""engine/config.py: config fields that describe themselves -> controls, flags, changes."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from expertloop.engine.config import (
    FixedParameterError,
    add_arguments,
    apply_values,
    build,
    control_specs,
    current_values,
    given_values,
    param,
    parameters,
    validate,
)


@dataclass(frozen=True)
class Inner:
    size: int = param(64, help="tile size", min=16, max=512, unit="px", fixed=True)
    width: tuple[int, int] = param((8, 16), help="widths", type=int, view=lambda w: w[0], fixed=True)

    def __post_init__(self) -> None:
        if isinstance(self.width, int):
            object.__setattr__(self, "width", (self.width, 2 * self.width))


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    sigma: float = param(1.5, help="smoothing", min=0.0, max=10.0, step=0.5)
    mode: str = param("fast", help="speed", choices=("fast", "exact"))
    flag: bool = param(True, help="an option", widget=False)
    note: int | None = param(None, help="optional", min=1, cli=False, widget=False)

    def __post_init__(self) -> None:
        validate(self)


def test_parameters_walk_nested_configs_and_show_views():
    infos = parameters(Outer)
    assert [i.name for i in infos] == ["size", "width", "sigma", "mode", "flag", "note"]
    assert infos[0].path == ("inner", "size") and infos[1].default == 8 and infos[1].type is int
    assert current_values(Outer(sigma=2.0)) == {"size": 64, "width": 8, "sigma": 2.0, "mode": "fast",
                                                "flag": True, "note": None}


def test_build_apply_and_validate():
    c = build(Outer, {"size": 32, "width": 4, "sigma": 3.0})
    assert c.inner == Inner(size=32, width=(4, 8)) and c.sigma == 3.0 and c.mode == "fast"
    new, changes = apply_values(c, {"sigma": 4, "mode": "fast", "size": 32, "width": None})
    assert changes == {"sigma": (3.0, 4.0)} and new.sigma == 4.0 and c.sigma == 3.0
    with pytest.raises(FixedParameterError, match="size is fixed.*it is 32, 64 was asked"):
        apply_values(c, {"size": 64})
    forced, _ = apply_values(c, {"size": 64}, allow_fixed=True)
    assert forced.inner.size == 64
    with pytest.raises(ValueError, match=r"sigma must be in \[0.0, 10.0\], got 11"):
        apply_values(c, {"sigma": 11})
    with pytest.raises(ValueError, match="mode must be one of"):
        Outer(mode="slow")
    with pytest.raises(KeyError, match="not parameters"):
        build(Outer, {"nope": 1})


def test_control_specs_and_cli_flags_come_from_the_fields():
    specs = {s["name"]: s for s in control_specs(Outer)}
    assert set(specs) == {"size", "width", "sigma", "mode"}  # widget=False ones left out
    assert specs["sigma"]["widget_type"] == "FloatSpinBox" and specs["sigma"]["value"] == 1.5
    assert specs["sigma"]["options"]["min"] == 0.0 and specs["sigma"]["options"]["step"] == 0.5
    assert specs["mode"]["widget_type"] == "ComboBox" and specs["mode"]["options"]["choices"] == ["fast", "exact"]
    assert specs["size"]["fixed"] and "default 64 px" in specs["size"]["options"]["tooltip"]
    assert control_specs(Outer(sigma=2.0), ["sigma"])[0]["value"] == 2.0  # an instance: its values

    p = argparse.ArgumentParser()
    add_arguments(p, Outer, when_absent="the saved value")
    helps = {a.dest: a.help for a in p._actions}
    assert "note" not in helps and "absent: the saved value; default 1.5" in helps["sigma"]
    args = p.parse_args(["--sigma", "2", "--flag", "no", "--mode", "exact"])
    assert given_values(args, Outer) == {"sigma": 2.0, "flag": False, "mode": "exact"}
    assert given_values(p.parse_args([]), Outer) == {}
    with pytest.raises(SystemExit):
        p.parse_args(["--mode", "slow"])


def test_membrane_config_reads_version_1_flat_project_files():
    from expertloop.engine.membranes import MembraneConfig, NetConfig

    flat = {"window": 16, "channels": [4, 8, 8], "hidden": [16, 16], "dropout": 0.5, "lam": 0.3}
    c = MembraneConfig.from_dict(flat)
    assert c.net == NetConfig(window=16, channels=4) and c.lam == 0.3 and c.window == 16
    assert MembraneConfig.from_dict(c.to_dict()) == c
