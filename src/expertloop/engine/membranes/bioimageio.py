"""Membrane networks as bioimage.io model packages (optional extra ``[bioimageio]``).

:func:`export_membrane_model` writes a bioimage.io model package (a zip,
format 0.5) for a membrane network: the fully convolutional
P(membrane) network (reflect padding, dense evaluation, softmax) in two weight
formats, **TorchScript** and **PyTorch state dict** (architecture:
:func:`membrane_probability_net` of this module, so ``bioimageio.core`` can
rebuild it where expertloop is installed), ``zero_mean_unit_variance``
preprocessing over ``y, x`` (the per-image z-score the plugin uses), a test
input and the plugin's own output for it, a cover image, a README and the
paper the method follows.

:func:`import_membrane_model` reads a package back into a membrane network
(for the widget, ``membranes predict`` and ``membranes loop
--source-model`` after ``expertloop membranes import``). Only packages whose
state-dict architecture is :func:`membrane_probability_net` are compatible;
others, and files that are not valid packages, raise
:class:`BioimageioError` with the reason.

``bioimageio.spec`` is imported only inside the functions (torch through the
engine backend); the package id and licence are chosen by the caller.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch
from expertloop.engine.membranes.net import NetConfig, build_net, predict_dense

ARCHITECTURE = "membrane_probability_net"
MODULE = "expertloop.engine.membranes.bioimageio"
INPUT, OUTPUT = "raw", "membrane_probability"
CITATION = ("Active learning based transfer learning for membrane segmentation "
            "(ConvNet pixel classifier, transfer, expert-guided regions)")
DOCS_URL = "https://github.com/napari-expertloop/napari-expertloop/blob/main/docs/membranes.md"


class BioimageioError(ValueError):
    """A bioimage.io package that cannot be written or read as a membrane model."""


def _require_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise BioimageioError("bioimage.io support needs the bioimageio extra: "
                              "pip install 'napari-expertloop[bioimageio]'") from exc


def membrane_probability_net(window: int, channels: list[int], hidden: list[int], dropout: float = 0.5):
    """The network of a package: image ``(B, 1, H, W)`` (z-scored) ->
    P(membrane) ``(B, 1, H, W)``. Its ``net`` is a :func:`build_net` network."""
    config = NetConfig(window=int(window), channels=tuple(channels), hidden=tuple(hidden), dropout=float(dropout))
    return _probability_class()(build_net(config, seed=None))


def _probability_class():
    torch = get_torch()
    F = torch.nn.functional

    class MembraneProbability(torch.nn.Module):
        """Reflect-pad by the window, dense logits, softmax: one P(membrane) per pixel."""

        def __init__(self, net) -> None:
            super().__init__()
            self.net = net
            w = int(net.config.window)
            self.pad = (w // 2, w - 1 - w // 2, w // 2, w - 1 - w // 2)

        def forward(self, x):
            x = F.pad(x, self.pad, mode="reflect")
            return torch.softmax(self.net(x, dense=True), 1)[:, 1:2]

    return MembraneProbability


def _cover(image: np.ndarray, prob: np.ndarray, path: Path) -> Path:
    """Input and P(membrane) side by side (2:1), 8-bit PNG."""
    import imageio.v3 as iio

    lo, hi = np.percentile(image, [1, 99])
    a = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    iio.imwrite(path, (np.concatenate([a, prob], 1) * 255).astype(np.uint8))
    return path


def export_membrane_model(model, output: str | Path, test_image: Any, *, name: str = "expertloop membranes",
                          description: str | None = None, authors: tuple[str, ...] = ("napari-expertloop user",),
                          license: str = "BSD-3-Clause") -> Path:
    """Write ``output`` (a ``.zip`` bioimage.io package) for a membrane network.

    ``test_image`` (2D, at least one window in size) becomes the test input;
    the test output is :func:`predict_dense` of the plugin on it, so a package
    that passes ``bioimageio.core``'s test reproduces the plugin. Returns the
    path written.
    """
    _require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bm

    from expertloop.engine.jobs import run_job

    torch = get_torch()
    img = np.asarray(test_image, np.float32)
    if img.ndim != 2:
        raise BioimageioError(f"the test image must be 2D, got shape {img.shape}")
    cfg = model.config
    model = model.cpu().eval()
    expected = run_job(predict_dense(model, img))
    wrapper = _probability_class()(model).eval()
    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise BioimageioError(f"{out}: a bioimage.io package is a .zip file")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "test_input.npy", img[None, None])
        np.save(d / "test_output.npy", expected[None, None].astype(np.float32))
        torch.save(wrapper.state_dict(), d / "weights.pt")
        example = torch.from_numpy(img[None, None].copy())
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is what bioimage.io runs
            traced = torch.jit.trace(wrapper, (example - example.mean()) / example.std())
        traced.save(str(d / "weights_torchscript.pt"))
        _cover(img, expected, d / "cover.png")
        (d / "README.md").write_text(
            f"# {name}\n\nMembrane probability for electron-microscopy images, from "
            "[napari-expertloop](https://github.com/napari-expertloop/napari-expertloop)'s membrane "
            f"active-learning workflow ({DOCS_URL}).\n\nA {cfg.window}x{cfg.window} window classifier "
            "(3 conv + 3 fully connected layers) run as a fully convolutional network: each output pixel "
            "is the probability that the pixel is membrane, from the window centred on it (reflect "
            "padding at the borders). Input: one grey image, z-scored per image (the preprocessing "
            "below). Output: P(membrane) in [0, 1], the same size as the input.\n", encoding="utf-8")
        space = [bm.SpaceInputAxis(id=bm.AxisId(a), size=bm.ParameterizedSize(min=cfg.window, step=1))
                 for a in ("y", "x")]
        inp = bm.InputTensorDescr(
            id=bm.TensorId(INPUT), description="grey electron-microscopy image",
            axes=[bm.BatchAxis(), bm.ChannelAxis(channel_names=[bm.Identifier("em")]), *space],
            test_tensor=bm.FileDescr(source=d / "test_input.npy"),
            preprocessing=[bm.ZeroMeanUnitVarianceDescr(
                kwargs=bm.ZeroMeanUnitVarianceKwargs(axes=[bm.AxisId("y"), bm.AxisId("x")]))])
        outp = bm.OutputTensorDescr(
            id=bm.TensorId(OUTPUT), description="P(membrane) per pixel",
            axes=[bm.BatchAxis(), bm.ChannelAxis(channel_names=[bm.Identifier("membrane")]),
                  *[bm.SpaceOutputAxis(id=bm.AxisId(a), size=bm.SizeReference(
                      tensor_id=bm.TensorId(INPUT), axis_id=bm.AxisId(a))) for a in ("y", "x")]],
            test_tensor=bm.FileDescr(source=d / "test_output.npy"))
        kwargs = {"window": int(cfg.window), "channels": list(cfg.channels), "hidden": list(cfg.hidden),
                  "dropout": float(cfg.dropout)}
        version = bm.Version(torch.__version__.split("+")[0])
        weights = bm.WeightsDescr(
            pytorch_state_dict=bm.PytorchStateDictWeightsDescr(
                source=d / "weights.pt", pytorch_version=version,
                architecture=bm.ArchitectureFromLibraryDescr(
                    callable=bm.Identifier(ARCHITECTURE), import_from=MODULE, kwargs=kwargs)),
            torchscript=bm.TorchscriptWeightsDescr(source=d / "weights_torchscript.pt", pytorch_version=version,
                                                  parent="pytorch_state_dict"))
        descr = bm.ModelDescr(
            name=name,
            description=description or "Membrane probability for EM images (napari-expertloop, membranes)",
            authors=[bm.Author(name=a) for a in authors],
            cite=[bm.CiteEntry(text=CITATION, url=DOCS_URL)],
            license=bm.LicenseId(license),
            documentation=bm.FileDescr(source=d / "README.md"),
            covers=[bm.FileDescr(source=d / "cover.png")],
            tags=["membrane-segmentation", "electron-microscopy", "active-learning", "transfer-learning",
                  "napari-expertloop", "2d"],
            inputs=[inp], outputs=[outp], weights=weights,
            config={"expertloop": {"workflow": "membranes", "net": cfg.to_dict()}},
        )
        if out.exists():
            out.unlink()
        save_bioimageio_package(descr, output_path=out)
    return out


def load_package(source: str | Path):
    """The validated model description of a package, or a clear error."""
    _require_spec()
    from bioimageio.spec import InvalidDescr, load_model_description

    p = Path(source)
    if not p.exists():
        raise BioimageioError(f"{p} not found")
    try:
        descr = load_model_description(p, perform_io_checks=True)
    except Exception as exc:  # a corrupt zip, not YAML, ...: the library's own exceptions vary
        raise BioimageioError(f"{p} is not a readable bioimage.io package: {exc}") from exc
    if isinstance(descr, InvalidDescr):
        errors = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in descr.validation_summary.errors[:5])
        raise BioimageioError(f"{p} is not a valid bioimage.io model: {errors}")
    return descr


def import_membrane_model(source: str | Path):
    """A membrane network (eval mode) from a compatible bioimage.io package."""
    descr = load_package(source)
    sd = getattr(descr.weights, "pytorch_state_dict", None)
    arch = getattr(sd, "architecture", None)
    if sd is None or getattr(arch, "callable", None) != ARCHITECTURE or getattr(arch, "import_from", None) != MODULE:
        raise BioimageioError(
            f"{source} is not an expertloop membrane model: it needs pytorch_state_dict weights with the "
            f"architecture {MODULE}:{ARCHITECTURE} (packages written by 'expertloop membranes export')")
    if [str(t.id) for t in descr.inputs] != [INPUT] or [str(t.id) for t in descr.outputs] != [OUTPUT]:
        raise BioimageioError(f"{source}: expected one input '{INPUT}' and one output '{OUTPUT}'")
    torch = get_torch()
    try:
        wrapper = membrane_probability_net(**dict(arch.kwargs))
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "weights.pt"
            local.write_bytes(sd.get_reader().read())
            state = torch.load(local, map_location="cpu", weights_only=True)
        wrapper.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError, OSError) as exc:
        raise BioimageioError(f"{source}: the weights do not fit a membrane network: {exc}") from exc
    net = wrapper.net.eval()
    net.transferred = ()
    return net
