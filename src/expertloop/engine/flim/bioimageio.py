"""FLIM encoder + decoder networks as bioimage.io model packages (optional extra ``[bioimageio]``).

:func:`export_flim_model` writes a 2D FLIM network (marker-based
normalisation and filters inside, so no preprocessing) that maps an image
``(B, C, y, x)`` to class probabilities ``(B, K, y, x)`` (softmax of the
decoder); the test output is the plugin's :func:`predict` probabilities.
:func:`import_flim_model` reads such a package back. See
:mod:`expertloop.engine.bioimageio`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from expertloop.engine.bioimageio import (
    BioimageioError,
    PackageInfo,
    PackageKind,
    probability_module,
    write_package,
)
from expertloop.engine.flim.decoder import build_network, predict
from expertloop.engine.flim.encoder import (
    as_channels_first,
    build_encoder,
    encoder_metadata,
)

__all__ = ["BioimageioError", "export_flim_model", "flim_probability_net", "import_flim_model"]


def flim_probability_net(encoder: dict, decoder: dict):
    """The network of a package: FLIM encoder + decoder + softmax over classes."""
    enc = build_encoder(encoder["spec"], encoder["in_channels"], encoder["out_channels"])
    return probability_module(build_network(enc, decoder["classes"], decoder["kind"],
                                            int(decoder.get("width", 16))))


KIND = PackageKind(
    flim_probability_net, input_id="image", output_id="class_probabilities", what="FLIM", docs_page="flim",
    citation="Feature Learning from Image Markers (FLIM): convolutional encoders estimated from user "
             "markers; ground-truth-free image selection for FLIM (Sousa de Souza, Falcao et al.)")


def _metadata(net) -> tuple[dict, dict]:
    dec = {"kind": net.kind, "classes": [int(c) for c in net.classes]}
    if net.kind == "unet":
        dec["width"] = int(net.decoder.final.out_channels)
    return encoder_metadata(net.encoder), dec


def export_flim_model(net, output: str | Path, test_image: Any, *, name: str = "expertloop FLIM",
                      authors: tuple[str, ...] = ("napari-expertloop user",), license: str = "BSD-3-Clause",
                      class_names: tuple[str, ...] | None = None) -> Path:
    """Write ``output`` (.zip) for a 2D FLIM network (encoder + decoder).
    ``test_image``: ``(y, x)`` or ``(C, y, x)``, like the images it was fitted on."""
    if net.encoder.spec.ndim != 2:
        raise BioimageioError("only 2D FLIM networks can be exported (bioimage.io axes b, c, y, x)")
    net = net.cpu().eval()
    x = as_channels_first(test_image, 2)
    if x.shape[0] != net.encoder.in_channels:
        raise BioimageioError(f"the network expects {net.encoder.in_channels} channel(s), "
                              f"the test image has {x.shape[0]}")
    _, probs = predict(net, test_image)
    enc, dec = _metadata(net)
    names = list(class_names or [f"class_{c}" for c in net.classes])
    info = PackageInfo(
        name=name, description="FLIM encoder + decoder: class probabilities per pixel (napari-expertloop)",
        kind=KIND, readme=(f"# {name}\n\nA FLIM network from napari-expertloop ({KIND.docs_url}): "
                           "convolutional encoder "
                "whose filters were computed from an expert's markers (no backpropagation), marker-based "
                f"normalisation inside the network, and a {dec['kind']} decoder. Input: the image "
                f"({net.encoder.in_channels} channel(s), raw intensities: no preprocessing). Output: the "
                f"probability of each of the {len(names)} classes ({', '.join(names)}) per pixel.\n"),
        kwargs={"encoder": enc, "decoder": dec},
        input_channels=[f"channel{i}" for i in range(net.encoder.in_channels)],
        output_channels=names, min_size=16,
        tags=["flim", "segmentation", "few-labels", "napari-expertloop", "2d"],
        config={"workflow": "flim", "encoder": enc, "decoder": dec}, authors=authors, license=license)
    return write_package(probability_module(net), info, x[None], probs[None], output)


def import_flim_model(source: str | Path):
    """A FLIM network (eval mode) from a package written by :func:`export_flim_model`."""
    net = KIND.rebuild(source).net
    for p in net.encoder.parameters():
        p.requires_grad_(False)
    return net
