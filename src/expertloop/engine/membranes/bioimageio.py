"""Membrane networks as bioimage.io model packages (optional extra ``[bioimageio]``).

:func:`export_membrane_model` writes the fully convolutional P(membrane)
network (reflect padding by the window, dense evaluation, softmax) with
``zero_mean_unit_variance`` preprocessing over ``y, x`` (the per-image z-score
the plugin uses); the test output is the plugin's :func:`predict_dense`, so a
package that passes ``bioimageio.core``'s test reproduces the plugin.
:func:`import_membrane_model` reads such a package back (packages of other
networks are refused with the reason). See :mod:`expertloop.engine.bioimageio`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.bioimageio import (
    BioimageioError,
    PackageInfo,
    PackageKind,
    probability_module,
    write_package,
)
from expertloop.engine.membranes.net import NetConfig, build_net, predict_dense

__all__ = ["BioimageioError", "export_membrane_model", "import_membrane_model", "membrane_probability_net"]


def membrane_probability_net(window: int, channels: list[int], hidden: list[int], dropout: float = 0.5):
    """The network of a package: image ``(B, 1, H, W)`` (z-scored) ->
    P(membrane) ``(B, 1, H, W)``. Its ``net`` is a :func:`build_net` network."""
    config = NetConfig(window=int(window), channels=tuple(channels), hidden=tuple(hidden), dropout=float(dropout))
    return _probability(build_net(config, seed=None))


KIND = PackageKind(
    membrane_probability_net, input_id="raw", output_id="membrane_probability", what="membrane",
    docs_page="membranes",
    citation="Active learning based transfer learning for membrane segmentation "
             "(ConvNet pixel classifier, transfer, expert-guided regions)")


def _probability(net):
    """Reflect-pad by the window, dense logits, softmax: one P(membrane) per pixel."""
    return probability_module(net, window=int(net.config.window), keep=slice(1, 2), dense=True)


def export_membrane_model(model, output: str | Path, test_image: Any, *, name: str = "expertloop membranes",
                          authors: tuple[str, ...] = ("napari-expertloop user",),
                          license: str = "BSD-3-Clause") -> Path:
    """Write ``output`` (.zip) for a membrane network; ``test_image`` (2D, at
    least one window in size) becomes the test input. Returns the path."""
    from expertloop.engine.jobs import run_job

    img = np.asarray(test_image, np.float32)
    if img.ndim != 2:
        raise BioimageioError(f"the test image must be 2D, got shape {img.shape}")
    cfg = model.config
    model = model.cpu().eval()
    expected = run_job(predict_dense(model, img))
    info = PackageInfo(
        name=name, description="Membrane probability for electron-microscopy images (napari-expertloop)",
        kind=KIND, readme=(f"# {name}\n\nMembrane probability for electron-microscopy images, from "
                           f"napari-expertloop's membrane active-learning workflow ({KIND.docs_url}).\n\nA {cfg.window}x{cfg.window} window "
                "classifier (3 conv + 3 fully connected layers) run as a fully convolutional network: each "
                "output pixel is the probability that it is membrane, from the window centred on it (reflect "
                "padding at the borders). Input: one grey image, z-scored per image (the preprocessing). "
                "Output: P(membrane) in [0, 1], the size of the input.\n"),
        kwargs={"window": int(cfg.window), "channels": list(cfg.channels), "hidden": list(cfg.hidden),
                "dropout": float(cfg.dropout)},
        input_channels=["em"], output_channels=["membrane"],
        min_size=int(cfg.window), zero_mean_unit_variance=True,
        tags=["membrane-segmentation", "electron-microscopy", "active-learning", "transfer-learning",
              "napari-expertloop", "2d"],
        config={"workflow": "membranes", "net": cfg.to_dict()}, authors=authors, license=license)
    return write_package(_probability(model), info, img[None, None], expected[None, None], output)


def import_membrane_model(source: str | Path):
    """A membrane network (eval mode) from a package written by :func:`export_membrane_model`."""
    net = KIND.rebuild(source).net
    net.transferred = ()
    return net
