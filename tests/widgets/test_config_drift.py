"""Drift guard: every widget control and CLI flag of a workflow parameter shows
the default, range, choices and flag its config dataclass declares.

A default or range written again in a widget or a command would show up here.
"""

from __future__ import annotations

import argparse

import pytest

from expertloop.cli import build_parser
from expertloop.engine.blood.model import THRESHOLDS, BloodModel
from expertloop.engine.blood.pipeline import BloodTraining
from expertloop.engine.config import control_specs, parameters
from expertloop.engine.features import FeatureConfig
from expertloop.engine.flim.params import FlimFit, FlimRecommend
from expertloop.engine.membranes import MembraneConfig
from expertloop.engine.semiauto.loop import SemiAutoConfig
from expertloop.engine.spots.lcnn import SpotConfig, SpotSelection


def _membranes(v):
    from expertloop.widgets.membranes import MembraneWidget

    return MembraneWidget(v).params.controls


def _spots(v):
    from expertloop.widgets.spots import SpotDetectorWidget

    return SpotDetectorWidget(v).params.controls


def _spot_selection(v):
    from expertloop.widgets.spots import SpotDetectorWidget

    return {"threshold": SpotDetectorWidget(v).threshold}


def _semiauto(v):
    from expertloop.widgets.semiauto import SemiAutoWidget

    return SemiAutoWidget(v).params.controls


def _blood_training(v):
    from expertloop.widgets.blood import BloodWidget

    w = BloodWidget(v)
    return {"detector": w.detector, "embedder": w.embedder, "det_epochs": w.det_epochs,
            "head_epochs": w.head_epochs}


def _blood_thresholds(v):
    from expertloop.widgets.blood import BloodWidget

    w = BloodWidget(v)
    return {"score_threshold": w.score, "type_threshold": w.type_thr}


def _flim_fit(v):
    from expertloop.widgets.flim import FlimEncoderWidget

    return FlimEncoderWidget(v).params.controls


def _flim_recommend(v):
    from expertloop.widgets.flim import FlimRecommendWidget

    return FlimRecommendWidget(v).params.controls


def _features(v):
    from expertloop.widgets.features import FeaturesWidget

    return FeaturesWidget(v).params.controls


# config class, the names it gives (None: all), its CLI subcommand, the widget's controls
CASES = {
    "membranes": (MembraneConfig, None, ("membranes", "loop"), _membranes),
    "spots train": (SpotConfig, None, ("spots", "train"), _spots),
    "spots detect": (SpotSelection, None, ("spots", "detect"), _spot_selection),
    "semiauto": (SemiAutoConfig, None, ("semiauto", "simulate"), _semiauto),
    "blood train": (BloodTraining, None, ("blood", "train"), _blood_training),
    "blood thresholds": (BloodModel, THRESHOLDS, ("blood", "predict"), _blood_thresholds),
    "flim fit": (FlimFit, None, ("flim", "fit"), _flim_fit),
    "flim recommend": (FlimRecommend, None, ("flim", "recommend"), _flim_recommend),
    "features": (FeatureConfig, None, ("features",), _features),
}


def _subparser(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _infos(cls, names):
    infos = parameters(cls)
    return infos if names is None else [i for i in infos if i.name in names]


@pytest.mark.parametrize("case", list(CASES))
def test_cli_flags_are_made_from_the_config(case):
    cls, names, path, _ = CASES[case]
    actions = {a.dest: a for a in _subparser(build_parser(), *path)._actions}
    for info in _infos(cls, names):
        if not info.param.cli:
            continue
        a = actions.get(info.name)
        assert a is not None, f"{case}: no flag for {info.name}"
        assert a.default is None, f"{case}: {a.option_strings} has its own default {a.default!r}"
        assert tuple(a.option_strings) == info.flags
        assert (a.choices is None) == (info.param.choices is None)
        if info.param.choices is not None:
            assert list(a.choices) == list(info.param.choices)
        if info.default is not None:
            assert f"default {info.default}" in a.help, f"{case}: --help of {info.name} hides the default"


@pytest.mark.parametrize("case", list(CASES))
def test_widget_controls_are_made_from_the_config(case, make_napari_viewer):
    cls, names, _, controls_of = CASES[case]
    controls = controls_of(make_napari_viewer())
    specs = {s["name"]: s for s in control_specs(cls, names)}
    if names is None and case not in ("blood train", "spots detect"):
        # a widget that shows a config shows all of its widget parameters
        assert set(controls) == set(specs), case
    for name, control in controls.items():
        spec = specs[name]
        assert control.value == spec["value"], f"{case}: {name} shows {control.value}, the config {spec['value']}"
        assert control.label == spec["label"]
        opts = spec["options"]
        for key in ("min", "max", "step"):
            if key in opts:
                assert getattr(control, key) == opts[key], f"{case}: {name}.{key}"
        if "choices" in opts:
            assert list(control.choices) == opts["choices"]
        assert control.tooltip == opts["tooltip"]
