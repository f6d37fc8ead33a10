"""FLIM encoders: convolutional filters estimated from markers, no backpropagation.

For each layer, in order:

1. take the ``k×k`` (``k×k×k`` in 3D) patches, all channels, centred at the
   marker pixels of the layer's input (markers are mapped to the layer's
   resolution when earlier layers pooled with a stride);
2. marker-based z-score normalisation: the mean and standard deviation of
   each input channel over those patches become buffers of the layer, which
   normalises its whole input with them;
3. per marker class, k-means of the normalised patches; the cluster centres,
   scaled to unit norm, are the filters (``filters_per_class × K`` in all);
4. bias (a constant, 0 by default), ReLU, pooling (max / average / none).

The encoder is a plain ``torch.nn.Module`` (:class:`FlimEncoder`, built by
:func:`build_encoder`), so it runs on any device and is saved through
:mod:`expertloop.engine.persistence` (:func:`save_encoder`, :func:`load_encoder`).
The architecture is a small spec (dict, JSON or YAML)::

    {"ndim": 2, "layers": [
        {"kernel_size": 3, "filters_per_class": 8, "dilation": 1,
         "pool": "max", "pool_size": 3, "pool_stride": 2},
        {"kernel_size": 3, "filters_per_class": 8}]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch
from expertloop.engine.flim.markers import Markers, extract_markers, marker_classes
from expertloop.engine.jobs import Job, Progress

WORKFLOW = "flim"
POOLS = ("max", "avg", "none")


@dataclass
class LayerSpec:
    kernel_size: int = 3
    filters_per_class: int = 8
    dilation: int = 1
    pool: str = "max"
    pool_size: int = 3
    pool_stride: int = 1
    bias: float = 0.0

    def check(self, i: int) -> None:
        where = f"layer {i + 1}"
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"{where}: kernel_size must be an odd number >= 1, got {self.kernel_size}")
        if self.filters_per_class < 1:
            raise ValueError(f"{where}: filters_per_class must be >= 1")
        if self.dilation < 1:
            raise ValueError(f"{where}: dilation must be >= 1")
        if self.pool not in POOLS:
            raise ValueError(f"{where}: pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool != "none" and (self.pool_size < 1 or self.pool_size % 2 == 0):
            raise ValueError(f"{where}: pool_size must be an odd number >= 1, got {self.pool_size}")
        if self.pool_stride < 1:
            raise ValueError(f"{where}: pool_stride must be >= 1")

    @property
    def stride(self) -> int:
        return 1 if self.pool == "none" else self.pool_stride


@dataclass
class EncoderSpec:
    """Architecture of a FLIM encoder (see the module docstring)."""

    ndim: int = 2
    layers: list[LayerSpec] = field(default_factory=lambda: [LayerSpec()])

    def __post_init__(self) -> None:
        self.layers = [lay if isinstance(lay, LayerSpec) else LayerSpec(**_layer_kwargs(lay, i))
                       for i, lay in enumerate(self.layers)]
        if self.ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {self.ndim}")
        if not self.layers:
            raise ValueError("an encoder needs at least one layer")
        for i, lay in enumerate(self.layers):
            lay.check(i)

    def to_dict(self) -> dict[str, Any]:
        return {"ndim": self.ndim, "layers": [asdict(lay) for lay in self.layers]}

    @property
    def strides(self) -> list[int]:
        """Cumulative stride of each layer's output."""
        out, s = [], 1
        for lay in self.layers:
            s *= lay.stride
            out.append(s)
        return out


def _layer_kwargs(d: Any, i: int) -> dict:
    if not isinstance(d, Mapping):
        raise ValueError(f"layer {i + 1} must be a mapping of parameters, got {type(d).__name__}")
    allowed = set(LayerSpec.__dataclass_fields__)
    unknown = set(d) - allowed
    if unknown:
        raise ValueError(f"layer {i + 1}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return dict(d)


def parse_spec(spec: EncoderSpec | Mapping | str | os.PathLike | None) -> EncoderSpec:
    """An :class:`EncoderSpec` from a spec, a dict, a JSON/YAML text or file."""
    if spec is None:
        return EncoderSpec()
    if isinstance(spec, EncoderSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        text = str(spec)
        p = Path(text)
        if "\n" not in text and "{" not in text and p.suffix.lower() in (".json", ".yaml", ".yml"):
            if not p.exists():
                raise FileNotFoundError(f"encoder spec {p} not found")
            text = p.read_text(encoding="utf-8")
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                raise ValueError(f"the encoder spec is neither JSON nor YAML{where}: "
                                 f"{getattr(exc, 'problem', None) or exc}") from None
        spec = data
    if not isinstance(spec, Mapping):
        raise ValueError("an encoder spec must be a mapping with 'ndim' and 'layers'")
    unknown = set(spec) - {"ndim", "layers"}
    if unknown:
        raise ValueError(f"unknown encoder spec key(s) {sorted(unknown)}; allowed: ['layers', 'ndim']")
    return EncoderSpec(ndim=int(spec.get("ndim", 2)), layers=list(spec.get("layers", [{}])))


# ----------------------------------------------------------------- modules
def _module_classes():
    torch = get_torch()
    nn = torch.nn
    F = torch.nn.functional

    class FlimLayer(nn.Module):
        """Marker-based normalisation, convolution, bias, ReLU, pooling."""

        def __init__(self, in_channels: int, out_channels: int, spec: LayerSpec, ndim: int):
            super().__init__()
            self.spec, self.ndim = spec, ndim
            conv = nn.Conv2d if ndim == 2 else nn.Conv3d
            self.conv = conv(in_channels, out_channels, spec.kernel_size,
                             padding=spec.dilation * (spec.kernel_size // 2),
                             dilation=spec.dilation, bias=True)
            shape = (1, in_channels) + (1,) * ndim
            self.register_buffer("mean", torch.zeros(shape))
            self.register_buffer("std", torch.ones(shape))

        def normalise(self, x):
            return (x - self.mean) / self.std

        def forward(self, x):
            y = F.relu(self.conv(self.normalise(x)))
            s = self.spec
            if s.pool == "none":
                return y
            pool = {("max", 2): F.max_pool2d, ("max", 3): F.max_pool3d,
                    ("avg", 2): F.avg_pool2d, ("avg", 3): F.avg_pool3d}[(s.pool, self.ndim)]
            kw = {"count_include_pad": False} if s.pool == "avg" else {}
            return pool(y, s.pool_size, stride=s.pool_stride, padding=s.pool_size // 2, **kw)

    class FlimEncoder(nn.Module):
        """A stack of :class:`FlimLayer`; ``forward`` returns the last output,
        :meth:`forward_all` every layer's output."""

        def __init__(self, spec: EncoderSpec, in_channels: int, out_channels: Sequence[int]):
            super().__init__()
            self.spec = spec
            self.in_channels = int(in_channels)
            chans = [int(in_channels)] + [int(c) for c in out_channels]
            self.layers = nn.ModuleList(
                FlimLayer(chans[i], chans[i + 1], lay, spec.ndim) for i, lay in enumerate(spec.layers)
            )

        @property
        def out_channels(self) -> list[int]:
            return [lay.conv.out_channels for lay in self.layers]

        def forward(self, x):
            for lay in self.layers:
                x = lay(x)
            return x

        def forward_all(self, x):
            outs = []
            for lay in self.layers:
                x = lay(x)
                outs.append(x)
            return outs

    return FlimLayer, FlimEncoder


def build_encoder(spec, in_channels: int, out_channels: Sequence[int]):
    """An (unfitted) :class:`FlimEncoder` of the given architecture."""
    spec = parse_spec(spec)
    if len(out_channels) != len(spec.layers):
        raise ValueError(f"{len(out_channels)} channel counts for {len(spec.layers)} layers")
    return _module_classes()[1](spec, in_channels, out_channels)


# ----------------------------------------------------------------- inputs
def as_channels_first(image: np.ndarray, ndim: int) -> np.ndarray:
    """``(C, *spatial)`` float32 from ``(*spatial)`` or ``(C, *spatial)``."""
    a = np.asarray(image)
    if a.ndim == ndim:
        a = a[None]
    elif a.ndim != ndim + 1:
        raise ValueError(
            f"a {ndim}D encoder needs {ndim}D images (optionally with a leading channel axis), "
            f"got shape {a.shape}"
        )
    if not np.issubdtype(a.dtype, np.number) or a.dtype == bool:
        a = a.astype(np.float32)
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.all(np.isfinite(a)):
        raise ValueError("image contains NaN or infinite values")
    return a


def _patches(x, coords: np.ndarray, k: int, dilation: int):
    """``(n, C*k^d)`` patches of ``x`` ``(C, *sp)`` centred at ``coords``; NaN outside the image."""
    torch = get_torch()
    d = x.ndim - 1
    r = dilation * (k // 2)
    xp = torch.nn.functional.pad(x[None], (r,) * (2 * d), value=float("nan"))[0]
    offs = np.stack(np.meshgrid(*[np.arange(k) * dilation] * d, indexing="ij"), -1).reshape(-1, d)
    idx = coords[:, None, :] + offs[None, :, :]  # (n, k^d, d) in padded coordinates
    t = torch.as_tensor(idx, device=x.device)
    vals = xp[(slice(None),) + tuple(t[..., i] for i in range(d))]  # (C, n, k^d)
    return vals.permute(1, 0, 2).reshape(len(coords), -1)


def _scaled_coords(m: Markers, stride: int, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    if stride == 1:
        return m.coords, m.classes
    c = np.minimum(m.coords // stride, np.asarray(shape) - 1)
    # one marker per (position, class) at the coarse scale
    key = np.concatenate([c, m.classes[:, None]], axis=1)
    key, first = np.unique(key, axis=0, return_index=True)
    return c[first], m.classes[first]


@dataclass
class FitReport:
    """What :func:`fit_encoder` learnt: patches and filters per layer and class."""

    classes: list[int]
    patches_per_layer: list[dict[int, int]]
    filters_per_layer: list[int]
    seconds: float = 0.0


def _kmeans(x: np.ndarray, k: int, seed: int | None) -> np.ndarray:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # small problems: threads only add overhead
        km = KMeans(n_clusters=k, n_init=1, random_state=seed, max_iter=100)
        km.fit(x)
    return km.cluster_centers_


def fit_encoder(
    images: Sequence[np.ndarray],
    markers: Sequence[np.ndarray | Markers],
    spec=None,
    *,
    max_patches_per_class: int = 4000,
    seed: int | None = 0,
    device=None,
) -> Job:
    """Job: estimate a :class:`FlimEncoder` from markers, layer by layer.

    No gradient is computed: the whole fit runs under ``torch.no_grad()``.

    Parameters
    ----------
    images : sequence of arrays
        2D/3D images (optionally channels first).
    markers : sequence of arrays or Markers
        Label arrays of the images' spatial shape (0 unmarked, 1..K classes);
        images without markers are skipped.
    spec : EncoderSpec, dict, str or path, optional
        The architecture (see :func:`parse_spec`; e.g. ``FlimFit().spec()``).
    max_patches_per_class : int
        Patches sampled per class for k-means (speed).
    seed : int, optional
    device : str, optional

    Returns
    -------
    Job
        Returns ``(encoder, FitReport)``.
    """
    import time

    from expertloop.engine.device import select_device
    from expertloop.engine.seed import seed_everything

    torch = get_torch()
    t0 = time.perf_counter()
    spec = parse_spec(spec)
    if len(images) != len(markers):
        raise ValueError(f"{len(images)} images but {len(markers)} marker arrays")
    if not len(images):
        raise ValueError("no images to fit the encoder on")
    rng = seed_everything(seed)
    dev = select_device(device)
    xs, ms = [], []
    for i, (img, mk) in enumerate(zip(images, markers)):
        a = as_channels_first(img, spec.ndim)
        m = mk if isinstance(mk, Markers) else extract_markers(mk)
        if tuple(m.shape) != a.shape[1:]:
            raise ValueError(
                f"image {i}: markers of shape {m.shape} do not match the image of shape {a.shape[1:]}"
            )
        if len(m):
            xs.append(a)
            ms.append(m)
    if not ms:
        raise ValueError("no markers: draw scribbles of at least two classes (labels 1, 2, ...) first")
    chans = {x.shape[0] for x in xs}
    if len(chans) != 1:
        raise ValueError(f"the marked images have different channel counts {sorted(chans)}")
    classes = [int(c) for c in marker_classes(ms)]
    if len(classes) < 2:
        raise ValueError(
            f"markers of one class only (class {classes[0]}): FLIM needs scribbles of at least "
            "two classes, e.g. object (2) and background (1)"
        )
    in_ch = chans.pop()
    n_out = [lay.filters_per_class * len(classes) for lay in spec.layers]
    enc = build_encoder(spec, in_ch, n_out).to(dev).eval()
    report = FitReport(classes=classes, patches_per_layer=[], filters_per_layer=n_out)
    total = len(spec.layers) * (len(classes) + 2)
    step = 0
    with torch.no_grad():
        feats = [torch.from_numpy(x).to(dev) for x in xs]
        stride = 1
        for li, (lay_spec, layer) in enumerate(zip(spec.layers, enc.layers)):
            k, dil = lay_spec.kernel_size, lay_spec.dilation
            coords_cls = [_scaled_coords(m, stride, f.shape[1:]) for m, f in zip(ms, feats)]
            # marker-based z-score statistics over the patches (pixels inside the image)
            raw = torch.cat([_patches(f, c, k, dil) for f, (c, _) in zip(feats, coords_cls)])
            cls = np.concatenate([c for _, c in coords_cls])
            C = feats[0].shape[0]
            per_ch = raw.reshape(len(raw), C, -1).permute(1, 0, 2).reshape(C, -1)
            mean = per_ch.nanmean(dim=1)
            std = (per_ch - mean[:, None]).pow(2).nanmean(dim=1).sqrt().clamp_min(1e-6)
            shape = (1, C) + (1,) * spec.ndim
            layer.mean.copy_(mean.reshape(shape))
            layer.std.copy_(std.reshape(shape))
            # normalised patches; outside the image 0, as the conv's zero padding of its normalised input
            normed = (raw.reshape(len(raw), C, -1) - mean[None, :, None]) / std[None, :, None]
            pats = torch.nan_to_num(normed, nan=0.0).reshape(len(raw), -1).cpu().numpy().astype(np.float64)
            step += 1
            yield Progress(step, total, f"layer {li + 1}: {len(pats)} marker patches")
            filters, counts = [], {}
            f_per = lay_spec.filters_per_class
            for c in classes:
                pc = pats[cls == c]
                counts[c] = int(len(pc))
                if len(pc) < f_per:
                    raise ValueError(
                        f"layer {li + 1}: class {c} has {len(pc)} marker patches but "
                        f"{f_per} filters per class were requested: draw longer scribbles "
                        "or ask for fewer filters"
                    )
                if len(pc) > max_patches_per_class:
                    pc = pc[rng.choice(len(pc), max_patches_per_class, replace=False)]
                centres = pc if len(pc) == f_per else _kmeans(pc, f_per, None if seed is None else seed + li)
                norms = np.linalg.norm(centres, axis=1, keepdims=True)
                centres = centres / np.where(norms > 1e-12, norms, 1.0)
                filters.append(centres)
                step += 1
                yield Progress(step, total, f"layer {li + 1}: k-means of class {c}")
            w = np.concatenate(filters).reshape(layer.conv.weight.shape)
            layer.conv.weight.copy_(torch.from_numpy(w).to(layer.conv.weight))
            layer.conv.bias.fill_(float(lay_spec.bias))
            report.patches_per_layer.append(counts)
            if li + 1 < len(spec.layers):  # the last layer's output is not needed
                feats = [layer(f[None])[0] for f in feats]
            stride *= lay_spec.stride
            step += 1
            yield Progress(step, total, f"layer {li + 1} fitted ({w.shape[0]} filters)")
    for p in enc.parameters():
        p.requires_grad_(False)
    report.seconds = time.perf_counter() - t0
    return enc, report


# ----------------------------------------------------------------- inference
def encode(encoder, image: np.ndarray, *, all_layers: bool = False, device=None):
    """Feature maps of one image: ``(C, *spatial_l)`` numpy (or a list per layer)."""
    torch = get_torch()
    from expertloop.engine.training import model_device

    dev = model_device(encoder) if device is None else device
    x = torch.from_numpy(as_channels_first(image, encoder.spec.ndim)).to(dev)
    if x.shape[0] != encoder.in_channels:
        raise ValueError(f"the encoder expects {encoder.in_channels} channel(s), the image has {x.shape[0]}")
    with torch.no_grad():
        outs = encoder.forward_all(x[None])
    outs = [o[0].cpu().numpy() for o in outs]
    return outs if all_layers else outs[-1]


def upsample(maps, shape: Sequence[int]):
    """Bilinear/trilinear resize of ``(C, *sp)`` maps (numpy or tensor) to ``shape``."""
    torch = get_torch()
    t = maps if isinstance(maps, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(maps))
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return torch.nn.functional.interpolate(t[None].float(), size=tuple(shape), mode=mode, align_corners=False)[0]


def feature_stack(encoder, image: np.ndarray, *, layer: int = -1) -> np.ndarray:
    """One layer's feature maps upsampled to the image's size: ``(C, *spatial)`` float32."""
    maps = encode(encoder, image, all_layers=True)
    a = as_channels_first(image, encoder.spec.ndim)
    return upsample(maps[layer], a.shape[1:]).cpu().numpy().astype(np.float32)


# ----------------------------------------------------------------- files
def encoder_metadata(encoder) -> dict[str, Any]:
    return {"spec": encoder.spec.to_dict(), "in_channels": encoder.in_channels,
            "out_channels": encoder.out_channels}


def save_encoder(path, encoder, *, class_names: Sequence[str] = (), extra: Mapping | None = None):
    """Save through :func:`expertloop.engine.persistence.save_model` (workflow ``flim``)."""
    from expertloop.engine.persistence import save_model

    return save_model(path, encoder, workflow=WORKFLOW, class_names=class_names,
                      input_spec={"ndim": encoder.spec.ndim, "channels": encoder.in_channels},
                      extra={"kind": "encoder", **encoder_metadata(encoder), **dict(extra or {})})


def encoder_from_state(meta_extra: Mapping, state: Mapping, prefix: str = ""):
    from expertloop.engine.persistence import Field, ModelFileError, check_fields

    meta_extra = check_fields(meta_extra, {
        "spec": Field(dict), "in_channels": Field(int, 1, 1024),
        "out_channels": Field(list, 1, 4096, item=int, max_len=64)}, "FLIM encoder description")
    spec = check_fields(meta_extra["spec"], {"ndim": Field(int, 2, 3, required=False),
                                             "layers": Field(list, max_len=64, required=False)},
                        "FLIM encoder spec")
    size = Field(int, 1, 63, required=False)
    for i, lay in enumerate(spec.get("layers", [])):
        check_fields(lay, {"kernel_size": size, "pool_size": size, "dilation": Field(int, 1, 64, required=False),
                           "pool_stride": size, "filters_per_class": Field(int, 1, 1024, required=False)},
                     f"FLIM encoder layer {i + 1}")
    try:
        enc = build_encoder(meta_extra["spec"], meta_extra["in_channels"], meta_extra["out_channels"])
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        enc.load_state_dict(sub)
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelFileError(f"not a valid FLIM encoder: {type(exc).__name__}: {exc}") from exc
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


def load_encoder(path):
    """Load an encoder saved by :func:`save_encoder` (or the encoder of a saved network)."""
    from expertloop.engine.persistence import load_model

    bundle = load_model(path, workflow=WORKFLOW)
    extra = bundle.metadata.get("extra", {})
    if extra.get("kind") == "network":
        return encoder_from_state(extra["encoder"], bundle.state, "encoder.")
    return encoder_from_state(extra, bundle.state)
