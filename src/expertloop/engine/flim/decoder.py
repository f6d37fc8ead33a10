"""Decoders on a frozen FLIM encoder, and segmentation.

Two decoders:

* ``"pixel"`` (:func:`fit_pixel_head`): a light per-pixel head, a 1×1
  convolution on every layer's feature maps upsampled to the image size,
  fitted as a logistic regression (scikit-learn, class-balanced) on the
  marker pixels: no backpropagation, under a second;
* ``"unet"`` (:func:`train_decoder`): the small symmetric decoder of the
  paper's sU-Net (upsample, concatenate the encoder's skip output, 3×3
  convolution + ReLU per level, then a 1×1 classifier) trained by
  backpropagation with the mean of cross-entropy and soft Dice, Adam, batch
  size 1 and linear learning-rate decay, with the encoder frozen.

Both give a :class:`FlimNet` (encoder + decoder; ``forward`` returns logits
at the input size) whose :func:`segment` output is a class map ``1..K`` in
the markers' classes (a Labels layer).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch
from expertloop.engine.flim.encoder import (
    WORKFLOW,
    as_channels_first,
    build_encoder,
    encoder_from_state,
    encoder_metadata,
)
from expertloop.engine.flim.params import FlimFit
from expertloop.engine.jobs import Job, Progress


def _classes():
    torch = get_torch()
    nn = torch.nn
    F = torch.nn.functional

    def up(x, size):
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        return x if tuple(x.shape[2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode=mode,
                                                                         align_corners=False)

    class PixelHead(nn.Module):
        def __init__(self, in_channels: int, n_classes: int, ndim: int):
            super().__init__()
            conv = nn.Conv2d if ndim == 2 else nn.Conv3d
            self.classifier = conv(in_channels, n_classes, 1)

        def forward(self, feats, x):
            return self.classifier(torch.cat([up(f, x.shape[2:]) for f in feats], dim=1))

    class SymmetricDecoder(nn.Module):
        def __init__(self, enc_channels: Sequence[int], n_classes: int, ndim: int, width: int = 16,
                     in_channels: int = 1):
            super().__init__()
            conv = nn.Conv2d if ndim == 2 else nn.Conv3d
            chans = list(enc_channels)
            self.blocks = nn.ModuleList()
            c = chans[-1]
            for skip in reversed(chans[:-1]):
                self.blocks.append(conv(c + skip, width, 3, padding=1))
                c = width
            self.final = conv(c + in_channels, width, 3, padding=1)  # + the input (finest skip)
            self.classifier = conv(width, n_classes, 1)

        def forward(self, feats, x):
            h = feats[-1]
            for block, skip in zip(self.blocks, reversed(feats[:-1])):
                h = F.relu(block(torch.cat([up(h, skip.shape[2:]), skip], dim=1)))
            h = F.relu(self.final(torch.cat([up(h, x.shape[2:]), x], dim=1)))
            return self.classifier(h)

    class FlimNet(nn.Module):
        """Encoder + decoder; ``forward(x)`` returns logits ``(B, K, *spatial)``."""

        def __init__(self, encoder, decoder, kind: str, classes: Sequence[int]):
            super().__init__()
            self.encoder, self.decoder, self.kind = encoder, decoder, kind
            self.classes = [int(c) for c in classes]

        def forward(self, x):
            return self.decoder(self.encoder.forward_all(x), self.encoder.layers[0].normalise(x))

    return PixelHead, SymmetricDecoder, FlimNet


def build_network(encoder, classes: Sequence[int], kind: str = "unet", width: int = 16):
    """An untrained decoder of ``kind`` (``"pixel"`` or ``"unet"``) on ``encoder``.

    Parameters
    ----------
    encoder : FlimEncoder
        From :func:`fit_encoder` (kept fixed).
    classes : sequence of int
        The class values it predicts (e.g. ``[1, 2]``: background, object).
    kind : str
        ``"pixel"`` (per-pixel logistic head) or ``"unet"`` (symmetric decoder).
    width : int
        Channels of the U-Net decoder.

    Returns
    -------
    FlimNet
        Encoder + decoder, for :func:`train_decoder`, :func:`segment` and
        :func:`save_network`.
    """
    PixelHead, SymmetricDecoder, FlimNet = _classes()
    nd = encoder.spec.ndim
    if kind == "pixel":
        dec = PixelHead(sum(encoder.out_channels), len(classes), nd)
    elif kind == "unet":
        dec = SymmetricDecoder(encoder.out_channels, len(classes), nd, width, encoder.in_channels)
    else:
        raise ValueError(f"unknown decoder {kind!r}; use 'pixel' or 'unet'")
    from expertloop.engine.training import model_device

    return FlimNet(encoder, dec.to(model_device(encoder)), kind, classes)


def _check_labels(images, labels, ndim):
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label arrays")
    xs, ys = [], []
    for i, (img, lab) in enumerate(zip(images, labels)):
        a = as_channels_first(img, ndim)
        y = np.asarray(lab)
        if y.shape != a.shape[1:]:
            raise ValueError(f"image {i}: labels of shape {y.shape} do not match the image of shape {a.shape[1:]}")
        if (y > 0).any():
            xs.append(a)
            ys.append(y.astype(np.int64))
    if not ys:
        raise ValueError("no labelled pixels: draw markers (or give masks) of at least two classes")
    classes = np.unique(np.concatenate([np.unique(y[y > 0]) for y in ys]))
    if len(classes) < 2:
        raise ValueError(f"labels of one class only (class {int(classes[0])}): need at least two classes")
    return xs, ys, [int(c) for c in classes]


def fit_pixel_head(encoder, images, labels, *, max_samples: int = 20000, seed: int | None = 0) -> Job:
    """Job: a :class:`FlimNet` with the per-pixel logistic head fitted on labelled pixels.

    Parameters
    ----------
    encoder : FlimEncoder
        From :func:`fit_encoder`.
    images, labels : sequences of arrays
        Images and their labels (0 unlabelled, 1..K classes; markers work).
    max_samples : int
        Labelled pixels sampled for the fit.
    seed : int, optional

    Returns
    -------
    Job
        Returns the network (kind "pixel").
    """
    from sklearn.linear_model import LogisticRegression

    torch = get_torch()
    xs, ys, classes = _check_labels(images, labels, encoder.spec.ndim)
    net = build_network(encoder, classes, "pixel")
    rng = np.random.default_rng(seed)
    feats, targets = [], []
    dev = next(encoder.parameters()).device
    with torch.no_grad():
        for i, (x, y) in enumerate(zip(xs, ys)):
            outs = encoder.forward_all(torch.from_numpy(x)[None].to(dev))
            size = x.shape[1:]
            coords = np.argwhere(y > 0)
            f = torch.cat([_up(o, size) for o in outs], 1)[0]  # (C, *sp)
            f = f[(slice(None),) + tuple(torch.as_tensor(coords.T))].T.cpu().numpy()
            feats.append(f)
            targets.append(y[tuple(coords.T)])
            yield Progress(i + 1, len(xs) + 1, f"features of image {i + 1}/{len(xs)}")
    X, Y = np.concatenate(feats), np.concatenate(targets)
    if len(X) > max_samples:
        keep = rng.choice(len(X), max_samples, replace=False)
        X, Y = X[keep], Y[keep]
    mu, sd = X.mean(0), X.std(0) + 1e-6
    clf = LogisticRegression(max_iter=300, class_weight="balanced", C=1.0)
    clf.fit((X - mu) / sd, Y)
    coef = clf.coef_ / sd  # fold the standardisation into the 1x1 conv
    icpt = clf.intercept_ - (clf.coef_ * (mu / sd)).sum(1)
    if len(classes) == 2:  # binary logistic regression: logits (0, z)
        coef = np.concatenate([np.zeros_like(coef), coef])
        icpt = np.concatenate([[0.0], icpt])
    conv = net.decoder.classifier
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(coef.reshape(conv.weight.shape)).to(conv.weight))
        conv.bias.copy_(torch.from_numpy(icpt).to(conv.bias))
    yield Progress(len(xs) + 1, len(xs) + 1, "pixel head fitted")
    return net.eval()


def _up(x, size):
    torch = get_torch()
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return x if tuple(x.shape[2:]) == tuple(size) else torch.nn.functional.interpolate(
        x, size=tuple(size), mode=mode, align_corners=False)


def ce_dice_loss(logits, target):
    """Mean of cross-entropy and soft Dice over labelled pixels (target -1 = ignore)."""
    torch = get_torch()
    F = torch.nn.functional
    ce = F.cross_entropy(logits, target, ignore_index=-1)
    valid = (target >= 0).unsqueeze(1)
    probs = logits.softmax(1) * valid
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).movedim(-1, 1) * valid
    dims = tuple(d for d in range(probs.ndim) if d != 1)
    inter = (probs * onehot).sum(dims)
    den = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (den + 1.0)
    return 0.5 * ce + 0.5 * (1 - dice.mean())


def train_decoder(
    net,
    images,
    labels,
    *,
    steps: int = FlimFit.steps,
    lr: float = 2.5e-3,
    train_encoder: bool = False,
    seed: int | None = 0,
    validate=None,
    validate_every: int = 0,
) -> Job:
    """Job: train ``net``'s decoder (and the encoder if ``train_encoder``) by backprop.

    ``labels``: per image, 0 = unlabelled (ignored), 1..K = the net's
    classes (dense masks as ``mask + 1`` or sparse markers). One image per
    step, Adam with linear decay,
    loss :func:`ce_dice_loss`. With the encoder frozen its outputs are
    computed once. ``validate(net)`` (every ``validate_every`` steps) returns
    a dict logged in the history; a key ``"stop": True`` ends training.

    Parameters
    ----------
    net : FlimNet
        From :func:`build_network`.
    images, labels : sequences of arrays
        As above.
    steps, lr : int, float
        Training steps (default: :class:`FlimFit`'s) and learning rate.
    train_encoder : bool
        Also fine-tune the encoder.
    seed : int, optional
    validate, validate_every
        Optional validation callback and its period (steps).

    Returns
    -------
    Job
        Returns the history (list of dicts).
    """
    from expertloop.engine.seed import seed_everything

    torch = get_torch()
    if steps < 1:
        raise ValueError("steps must be at least 1")
    rng = seed_everything(seed)
    xs, ys, classes = _check_labels(images, labels, net.encoder.spec.ndim)
    extra = sorted(set(classes) - set(net.classes))
    if extra:
        raise ValueError(f"labels have classes {extra} the network does not know ({net.classes})")
    lut = {c: i for i, c in enumerate(net.classes)}
    dev = next(net.parameters()).device
    tx = [torch.from_numpy(x)[None].to(dev) for x in xs]
    ty = []
    for y in ys:
        t = np.full(y.shape, -1, np.int64)
        for c, i in lut.items():
            t[y == c] = i
        ty.append(torch.from_numpy(t)[None].to(dev))
    for p in net.encoder.parameters():
        p.requires_grad_(bool(train_encoder))
    cached = None
    if not train_encoder:
        net.encoder.eval()
        with torch.no_grad():
            cached = [(net.encoder.forward_all(x), net.encoder.layers[0].normalise(x)) for x in tx]
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / steps))
    history: list[dict[str, Any]] = []
    try:
        for step in range(steps):
            net.train()
            if not train_encoder:
                net.encoder.eval()
            i = int(rng.integers(len(tx)))
            opt.zero_grad(set_to_none=True)
            if cached is not None:
                logits = net.decoder(*cached[i])
            else:
                logits = net(tx[i])
            loss = ce_dice_loss(logits, ty[i])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at step {step + 1}; lower the learning rate")
            loss.backward()
            opt.step()
            sched.step()
            rec = {"step": step + 1, "loss": float(loss.detach())}
            if validate is not None and validate_every and (step + 1) % validate_every == 0:
                net.eval()
                rec.update(validate(net))
            history.append(rec)
            yield Progress(step + 1, steps, f"training decoder: step {step + 1}/{steps}, loss {rec['loss']:.4f}")
            if rec.get("stop"):
                break
    finally:
        for p in net.encoder.parameters():
            p.requires_grad_(False)
        net.eval()
    return history


def predict(net, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(class_map, probabilities)``: classes in ``net.classes`` (1..K), probs ``(K, *spatial)``."""
    torch = get_torch()
    x = as_channels_first(image, net.encoder.spec.ndim)
    if x.shape[0] != net.encoder.in_channels:
        raise ValueError(f"the network expects {net.encoder.in_channels} channel(s), the image has {x.shape[0]}")
    dev = next(net.parameters()).device
    net.eval()
    with torch.no_grad():
        probs = net(torch.from_numpy(x)[None].to(dev)).softmax(1)[0].cpu().numpy()
    lut = np.asarray(net.classes, np.int32)
    return lut[probs.argmax(0)], probs


def receptive_halo(net) -> int:
    """A halo (input pixels, a multiple of the encoder's total stride) that
    covers the network's receptive field: encoder convolutions and pooling,
    the decoder's 3x3 convolutions and its upsampling, each at its level's
    stride."""
    r, s = 0, 1
    for lay in net.encoder.spec.layers:
        r += s * lay.dilation * (lay.kernel_size // 2)
        if lay.pool != "none":
            r += s * (lay.pool_size // 2)
        s *= lay.stride
    strides = [1] + net.encoder.spec.strides
    r += sum(2 * st for st in strides) + 2  # decoder 3x3 convolutions + interpolation, each level
    return -(-r // s) * s


def predict_blocks(net, image: Any, *, tile: int = 512, out=None, probs_out=None,
                   desc: str = "FLIM segmentation") -> Job:
    """Job: :func:`predict` block by block (the engine's one tiler,
    :func:`expertloop.engine.tiling.iter_tiles`), for images bigger than memory.

    ``image`` (``(*spatial)`` or ``(C, *spatial)``) may be a numpy, dask or
    zarr array; the last two axes are tiled (a 3D network sees whole Z), each
    tile read with a :func:`receptive_halo` halo (clipped at the image border,
    where the network sees the same border as on the whole image) and its core
    written into ``out`` (int32 class map; default a new numpy array, give a
    zarr array to keep it on disk) and, if given, ``probs_out`` ``(K, *spatial)``.
    Tiles and halos are multiples of the encoder's total stride so the pooling
    grids line up: the result equals :func:`predict` on the whole image
    (to float rounding) when each tiled side is a multiple of that stride (or
    the stride is 1); on other sizes the whole-image upsampling uses the scale
    ``m/n`` instead of the stride's, so values differ by sub-pixel
    interpolation. Returns ``out``.
    """
    from expertloop.engine.tiling import count_tiles, iter_tiles, to_numpy

    torch = get_torch()
    nd = net.encoder.spec.ndim
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        image = np.asarray(image)
    if len(image.shape) not in (nd, nd + 1):
        raise ValueError(f"a {nd}D network needs {nd}D images (optionally with a leading channel axis), "
                         f"got shape {tuple(image.shape)}")
    spatial = tuple(int(n) for n in image.shape[-nd:])
    stride = net.encoder.spec.strides[-1]
    if tile < 1:
        raise ValueError("tile must be at least 1")
    tile = max(stride, (tile // stride) * stride)
    halo = receptive_halo(net)
    lut = np.asarray(net.classes, np.int32)
    if out is None:
        out = np.empty(spatial, np.int32)
    if tuple(out.shape) != spatial:
        raise ValueError(f"out has shape {tuple(out.shape)}, the image {spatial}")
    if probs_out is not None and tuple(probs_out.shape) != (len(lut),) + spatial:
        raise ValueError(f"probs_out has shape {tuple(probs_out.shape)}, expected {(len(lut),) + spatial}")
    dev = next(net.parameters()).device
    net.eval()
    total = count_tiles(spatial[-2:], tile)
    with torch.no_grad():
        for i, t in enumerate(iter_tiles(spatial[-2:], tile, halo)):
            x = as_channels_first(to_numpy(image[(..., *t.read)]), nd)
            if x.shape[0] != net.encoder.in_channels:
                raise ValueError(f"the network expects {net.encoder.in_channels} channel(s), "
                                 f"the image has {x.shape[0]}")
            probs = net(torch.from_numpy(x)[None].to(dev)).softmax(1)[0].cpu().numpy()
            core = probs[(..., *t.core)]
            out[(..., *t.write)] = lut[core.argmax(0)]
            if probs_out is not None:
                probs_out[(..., *t.write)] = core
            yield Progress(i + 1, total, f"{desc}: tile {i + 1}/{total}")
    return out


def segment(net, images) -> Job:
    """Job: class maps of several images.

    Parameters
    ----------
    net : FlimNet
    images : sequence of arrays

    Returns
    -------
    Job
        Returns a list of int32 class maps (classes ``net.classes``).
    """
    out = []
    for i, img in enumerate(images):
        out.append(predict(net, img)[0])
        yield Progress(i + 1, len(images), f"segmenting image {i + 1}/{len(images)}")
    return out


def save_network(path, net, *, class_names: Sequence[str] = (), extra: Mapping | None = None):
    """Save encoder + decoder (workflow ``flim``, kind ``network``).

    Parameters
    ----------
    path : path
        The ``.pt`` file (with its ``.json``).
    net : FlimNet
    class_names : sequence of str
        Optional names of the classes.
    extra : mapping, optional
        More metadata for the JSON sidecar.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from expertloop.engine.persistence import save_model

    dec = {"kind": net.kind, "classes": net.classes}
    if net.kind == "unet":
        dec["width"] = int(net.decoder.final.out_channels)
    return save_model(path, net, workflow=WORKFLOW, class_names=class_names,
                      input_spec={"ndim": net.encoder.spec.ndim, "channels": net.encoder.in_channels},
                      extra={"kind": "network", "encoder": encoder_metadata(net.encoder), "decoder": dec,
                             **dict(extra or {})})


def load_network(path):
    """Load a network saved by :func:`save_network`.

    Parameters
    ----------
    path : path
        The ``.pt`` file.

    Returns
    -------
    FlimNet
    """
    from expertloop.engine.persistence import (
        Field,
        ModelFileError,
        check_fields,
        load_model,
    )

    bundle = load_model(path, workflow=WORKFLOW)
    extra = bundle.metadata.get("extra", {})
    if extra.get("kind") != "network":
        raise ModelFileError(f"{path} holds a FLIM {extra.get('kind', 'model')}, not an encoder + decoder network")
    extra = check_fields(extra, {"encoder": Field(dict), "decoder": Field(dict)}, f"{path}: extra")
    d = check_fields(extra["decoder"], {"classes": Field(list, max_len=1000), "kind": Field(str, max_len=20),
                                        "width": Field(int, 1, 1024, required=False)}, f"{path}: extra.decoder")
    enc = encoder_from_state(extra["encoder"], bundle.state, "encoder.")
    try:
        net = build_network(enc, d["classes"], d["kind"], d.get("width", 16))
    except ValueError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    try:
        net.decoder.load_state_dict({k[8:]: v for k, v in bundle.state.items() if k.startswith("decoder.")})
    except RuntimeError as exc:
        raise ModelFileError(f"decoder weights do not fit: {exc}") from exc
    return net.eval()


def random_encoder_like(spec, in_channels: int, out_channels: Sequence[int], seed: int | None = 0):
    """The same architecture with random (Kaiming) filters: the backprop baseline's start."""
    from expertloop.engine.seed import seed_everything

    torch = get_torch()
    seed_everything(seed)
    enc = build_encoder(spec, in_channels, out_channels)
    for lay in enc.layers:
        torch.nn.init.kaiming_normal_(lay.conv.weight, nonlinearity="relu")
        torch.nn.init.zeros_(lay.conv.bias)
    return enc
