"""bioimage.io model packages: what the workflows' exports share (optional extra ``[bioimageio]``).

:func:`write_package` writes a format-0.5 model package (zip) for a
``(B, C, y, x) -> (B, K, y, x)`` PyTorch module: TorchScript and state-dict
weights (the state dict's architecture is a function of an expertloop module,
rebuilt by ``bioimageio.core`` where expertloop is installed), test tensors,
a cover, a README, citations. :func:`load_package` validates a package with
``bioimageio.spec``; :func:`read_state_dict` checks that a package's
architecture is the expected expertloop function and returns its weights.

Workflow modules (``engine/membranes/bioimageio.py``, ``engine/flim/bioimageio.py``)
describe their packages with a :class:`PackageKind` (architecture function,
tensor ids, docs page, citation) and wrap their network in
:func:`probability_module`; ``bioimageio.spec`` is imported only inside
functions; torch through the engine backend.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from expertloop import docs_url
from expertloop.engine.backend import get_torch


class BioimageioError(ValueError):
    """A bioimage.io package that cannot be written or read as an expertloop model."""


def require_spec():
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise BioimageioError("bioimage.io support needs the bioimageio extra: "
                              "pip install 'napari-expertloop[bioimageio]'") from exc


@dataclass(frozen=True)
class PackageKind:
    """What identifies one workflow's packages (the same for every export)."""

    factory: Any         # the architecture function (module-level, importable by bioimageio.core)
    input_id: str
    output_id: str
    what: str            # the workflow, in error messages ("membrane", "FLIM")
    docs_page: str       # docs/<page>.md
    citation: str

    @property
    def module(self) -> str:
        return self.factory.__module__

    @property
    def architecture(self) -> str:
        return self.factory.__name__

    @property
    def docs_url(self) -> str:
        return docs_url(self.docs_page)

    def rebuild(self, source: str | Path):
        """The module of a package of this kind, its weights loaded."""
        return rebuild(source, self.factory, self.module, self.architecture, self.input_id, self.output_id,
                       self.what)


@dataclass
class PackageInfo:
    """What a workflow says about one package."""

    kind: PackageKind
    name: str
    description: str
    readme: str
    kwargs: Mapping[str, Any]        # the architecture function's arguments (JSON)
    input_channels: Sequence[str]
    output_channels: Sequence[str]
    min_size: int                    # smallest y/x the network takes
    tags: Sequence[str]
    config: Mapping[str, Any]
    zero_mean_unit_variance: bool = False
    authors: Sequence[str] = field(default_factory=lambda: ("napari-expertloop user",))
    license: str = "BSD-3-Clause"


@lru_cache(maxsize=1)
def _probability_class():
    torch = get_torch()
    F = torch.nn.functional

    class Probability(torch.nn.Module):
        """``net``'s logits -> softmax over channels, optionally after reflect
        padding (so a windowed network keeps the input size) and keeping only
        some channels."""

        def __init__(self, net, pad: tuple[int, int, int, int] | None, keep: slice | None,
                     dense: bool) -> None:
            super().__init__()
            self.net = net
            self.pad, self.keep, self.dense = pad, keep, dense

        def forward(self, x):
            if self.pad is not None:
                x = F.pad(x, self.pad, mode="reflect")
            p = torch.softmax(self.net(x, dense=True) if self.dense else self.net(x), 1)
            return p if self.keep is None else p[:, self.keep]

    return Probability


def probability_module(net, *, window: int | None = None, keep: slice | None = None, dense: bool = False):
    """``net`` wrapped as a package's network: softmax of its logits.

    ``window``: reflect-pad by it first (a window classifier run densely,
    ``net(x, dense=True)`` when ``dense``); ``keep``: the output channels
    kept. The wrapped network is the attribute ``net`` (state-dict keys
    ``net.*``)."""
    pad = None if window is None else (window // 2, window - 1 - window // 2, window // 2, window - 1 - window // 2)
    return _probability_class()(net, pad, keep, dense)


def _cover(image: np.ndarray, output: np.ndarray, path: Path) -> Path:
    """Input and first output channel side by side (2:1), 8-bit PNG."""
    import imageio.v3 as iio

    def scaled(a):
        lo, hi = np.percentile(a, [1, 99])
        return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1)

    iio.imwrite(path, (np.concatenate([scaled(image), scaled(output)], 1) * 255).astype(np.uint8))
    return path


def write_package(module, info: PackageInfo, test_input: np.ndarray, test_output: np.ndarray,
                  output: str | Path) -> Path:
    """Write ``output`` (.zip). ``test_input`` ``(1, C, y, x)`` float32;
    ``test_output`` ``(1, K, y, x)``: the plugin's own result for it."""
    require_spec()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bm

    torch = get_torch()
    out = Path(output)
    if out.suffix.lower() != ".zip":
        raise BioimageioError(f"{out}: a bioimage.io package is a .zip file")
    x = np.ascontiguousarray(test_input, np.float32)
    module = module.cpu().eval()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", np.ascontiguousarray(test_output, np.float32))
        torch.save(module.state_dict(), d / "weights.pt")
        example = torch.from_numpy(x)
        if info.zero_mean_unit_variance:
            example = (example - example.mean()) / example.std()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is what bioimage.io runs
            torch.jit.trace(module, example).save(str(d / "weights_torchscript.pt"))
        _cover(x[0, 0], np.asarray(test_output)[0, -1], d / "cover.png")
        (d / "README.md").write_text(info.readme, encoding="utf-8")
        yx = [bm.SpaceInputAxis(id=bm.AxisId(a), size=bm.ParameterizedSize(min=info.min_size, step=1))
              for a in ("y", "x")]
        pre = ([bm.ZeroMeanUnitVarianceDescr(kwargs=bm.ZeroMeanUnitVarianceKwargs(
            axes=[bm.AxisId("y"), bm.AxisId("x")]))] if info.zero_mean_unit_variance else [])
        kind = info.kind
        inp = bm.InputTensorDescr(
            id=bm.TensorId(kind.input_id),
            axes=[bm.BatchAxis(), bm.ChannelAxis(channel_names=[bm.Identifier(c) for c in info.input_channels]),
                  *yx],
            test_tensor=bm.FileDescr(source=d / "test_input.npy"), preprocessing=pre)
        outp = bm.OutputTensorDescr(
            id=bm.TensorId(kind.output_id),
            axes=[bm.BatchAxis(), bm.ChannelAxis(channel_names=[bm.Identifier(c) for c in info.output_channels]),
                  *[bm.SpaceOutputAxis(id=bm.AxisId(a), size=bm.SizeReference(
                      tensor_id=bm.TensorId(kind.input_id), axis_id=bm.AxisId(a))) for a in ("y", "x")]],
            test_tensor=bm.FileDescr(source=d / "test_output.npy"))
        version = bm.Version(torch.__version__.split("+")[0])
        weights = bm.WeightsDescr(
            pytorch_state_dict=bm.PytorchStateDictWeightsDescr(
                source=d / "weights.pt", pytorch_version=version,
                architecture=bm.ArchitectureFromLibraryDescr(
                    callable=bm.Identifier(kind.architecture), import_from=kind.module, kwargs=dict(info.kwargs))),
            torchscript=bm.TorchscriptWeightsDescr(source=d / "weights_torchscript.pt", pytorch_version=version,
                                                  parent="pytorch_state_dict"))
        descr = bm.ModelDescr(
            name=info.name, description=info.description,
            authors=[bm.Author(name=a) for a in info.authors],
            cite=[bm.CiteEntry(text=kind.citation, url=kind.docs_url)],
            license=bm.LicenseId(info.license),
            documentation=bm.FileDescr(source=d / "README.md"),
            covers=[bm.FileDescr(source=d / "cover.png")],
            tags=list(info.tags), inputs=[inp], outputs=[outp], weights=weights,
            config={"expertloop": dict(info.config)})
        if out.exists():
            out.unlink()
        save_bioimageio_package(descr, output_path=out)
    return out


def load_package(source: str | Path):
    """The validated model description of a package, or a clear error."""
    require_spec()
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


def read_state_dict(source: str | Path, module: str, architecture: str, input_id: str, output_id: str,
                    what: str) -> tuple[dict, dict]:
    """``(architecture kwargs, state dict)`` of a package made by expertloop's
    ``module:architecture``, or :class:`BioimageioError` saying why not."""
    descr = load_package(source)
    sd = getattr(descr.weights, "pytorch_state_dict", None)
    arch = getattr(sd, "architecture", None)
    if sd is None or getattr(arch, "callable", None) != architecture or getattr(arch, "import_from", None) != module:
        raise BioimageioError(
            f"{source} is not an expertloop {what} model: it needs pytorch_state_dict weights with the "
            f"architecture {module}:{architecture}")
    if [str(t.id) for t in descr.inputs] != [input_id] or [str(t.id) for t in descr.outputs] != [output_id]:
        raise BioimageioError(f"{source}: expected one input '{input_id}' and one output '{output_id}'")
    torch = get_torch()
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "weights.pt"
        local.write_bytes(sd.get_reader().read())
        try:
            state = torch.load(local, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickling error of any kind: refused, never run
            raise BioimageioError(f"{source}: unreadable weights: {exc}") from exc
    return dict(arch.kwargs), state


def rebuild(source: str | Path, factory, module: str, architecture: str, input_id: str, output_id: str,
            what: str):
    """The module of a package made by ``module:architecture`` (``factory``), weights loaded."""
    kwargs, state = read_state_dict(source, module, architecture, input_id, output_id, what)
    try:
        wrapper = factory(**kwargs)
        wrapper.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise BioimageioError(f"{source}: the weights do not fit a {what} network: {exc}") from exc
    return wrapper.eval()
