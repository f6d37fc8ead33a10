"""The membrane pixel classifier: one set of weights, two ways to run it.

* **window mode** (``model(x)`` with ``x`` of shape ``(N, 1, w, w)``): the
  paper's patch classifier, 3 × (conv → ReLU → 2×2 max-pool, stride 2), then
  three fully connected layers (dropout after the first two), 2 logits out;
* **dense mode** (``model(x, dense=True)``): the same weights run as a fully
  convolutional network. Stride-2 pooling becomes stride-1 pooling and every
  later layer is dilated by the pooling factor so far ("filter rarefaction"),
  so the logit at output pixel ``(y, x)`` is exactly the window-mode logit of
  the ``w × w`` window whose top-left corner is ``(y, x)``. With the image
  padded by ``w // 2`` before and ``w - 1 - w // 2`` after, the output pixel
  ``p`` is the classification of the window centred on ``p`` (centre at index
  ``w // 2`` as in :func:`expertloop.engine.patches.extract_patches`).

:func:`predict_dense` evaluates a whole image tile by tile (each tile reads a
halo of ``w - 1`` pixels), so images larger than memory allows work and the
result does not depend on the tile size. Images are normalised per image
(zero mean, unit standard deviation over the whole image) before both modes.

Labels everywhere in this workflow: ``0`` = unlabelled, ``1`` = membrane,
``2`` = not membrane (see :func:`membrane_labels` for ground-truth masks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch
from expertloop.engine.config import param
from expertloop.engine.device import select_device
from expertloop.engine.jobs import Job, Progress, rescale
from expertloop.engine.seed import seed_everything
from expertloop.engine.tiling import (
    count_tiles,
    iter_mean_std,
    iter_tiles,
    mean_std,
    read_window,
)

WORKFLOW = "membranes"
CLASS_NAMES = ("not membrane", "membrane")
LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2", "fc3")
UNLABELLED, MEMBRANE, BACKGROUND = 0, 1, 2


# ----------------------------------------------------------------- architecture
def conv_kernels(window: int) -> tuple[int, int, int] | None:
    """Kernel sizes of the three conv layers that make every pooling exact.

    After each conv (valid padding) the size must be even so that the 2×2,
    stride-2 pooling drops no pixel; larger kernels are preferred. ``None``
    when no choice in 5..2 works for this window size.
    """
    def search(size: int, depth: int) -> tuple[int, ...] | None:
        if depth == 3:
            return ()
        for k in (5, 4, 3, 2):
            out = size - k + 1
            if out >= 2 and out % 2 == 0:
                rest = search(out // 2, depth + 1)
                if rest is not None:
                    return (k,) + rest
        return None

    found = search(int(window), 0)
    return None if found is None else tuple(found)  # type: ignore[return-value]


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a membrane network (saved in the model's metadata).

    ``channels`` may be given as one number ``c``: the conv layers then get
    ``(c, 2c, 2c)`` channels; ``hidden`` left None becomes ``(4c, 4c)`` with
    ``c`` the first conv layer's channels.
    """

    window: int = param(64, help="side of the square window each pixel is classified from",
                        min=16, max=128, step=8, unit="px", fixed=True)
    channels: tuple[int, int, int] = param(
        (16, 32, 32), help="conv1 channels (conv2 and conv3: twice as many, hidden layers: 4x)",
        label="conv channels", min=2, max=128, type=int, view=lambda c: c[0], fixed=True)
    hidden: tuple[int, int] | None = None
    dropout: float = param(0.5, help="dropout after the first two fully connected layers",
                           min=0.0, max=0.95, step=0.05, fixed=True, widget=False)

    def __post_init__(self) -> None:
        if conv_kernels(self.window) is None:
            raise ValueError(
                f"window size {self.window} is not supported: it must be at least 16 "
                "and let three conv + 2x2 pooling stages divide it exactly (e.g. 16, 24, 32, 48, 64)"
            )
        ch = self.channels
        if isinstance(ch, (int, np.integer)):
            ch = (int(ch), 2 * int(ch), 2 * int(ch))
        object.__setattr__(self, "channels", tuple(int(c) for c in ch))
        hidden = (4 * self.channels[0],) * 2 if self.hidden is None else self.hidden
        object.__setattr__(self, "hidden", tuple(int(c) for c in hidden))
        if len(self.channels) != 3 or len(self.hidden) != 2 or min(self.channels + self.hidden) < 1:
            raise ValueError("channels must be 3 positive numbers and hidden 2 positive numbers")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")

    @property
    def kernels(self) -> tuple[int, int, int]:
        return conv_kernels(self.window)  # type: ignore[return-value]

    @property
    def fc_kernel(self) -> int:
        size = self.window
        for k in self.kernels:
            size = (size - k + 1) // 2
        return size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["channels"], d["hidden"] = list(self.channels), list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        kw = {"dropout": float(d["dropout"])} if "dropout" in d else {}
        return cls(window=int(d["window"]), channels=tuple(d["channels"]), hidden=tuple(d["hidden"]), **kw)


@lru_cache(maxsize=1)
def _module_class():
    torch = get_torch()
    nn, F = torch.nn, torch.nn.functional

    class MembraneNet(nn.Module):
        """Patch classifier that also runs densely (see the module docstring)."""

        def __init__(self, config: NetConfig) -> None:
            super().__init__()
            self.config = config
            c_in = 1
            for name, k, c in zip(LAYERS[:3], config.kernels, config.channels):
                setattr(self, name, nn.Conv2d(c_in, c, k))
                c_in = c
            h1, h2 = config.hidden
            self.fc1 = nn.Conv2d(c_in, h1, config.fc_kernel)  # an FC layer written as a conv
            self.fc2 = nn.Conv2d(h1, h2, 1)
            self.fc3 = nn.Conv2d(h2, 2, 1)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):  # He initialisation, as in the paper
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            # a small last layer starts at chance-level loss instead of large random logits
            nn.init.normal_(self.fc3.weight, std=0.01)

        def forward(self, x, dense: bool = False):
            p = self.config.dropout
            d = 1
            for name in LAYERS[:3]:
                conv = getattr(self, name)
                if dense:
                    x = F.relu(F.conv2d(x, conv.weight, conv.bias, dilation=d))
                    x = F.max_pool2d(x, 2, stride=1, dilation=d)
                    d *= 2
                else:
                    x = F.max_pool2d(F.relu(conv(x)), 2, stride=2)
            x = F.relu(F.conv2d(x, self.fc1.weight, self.fc1.bias, dilation=d if dense else 1))
            x = F.dropout(x, p, self.training)
            x = F.dropout(F.relu(self.fc2(x)), p, self.training)
            x = self.fc3(x)
            return x if dense else x.flatten(1)

    return MembraneNet


def build_net(config: NetConfig | None = None, *, seed: int | None = 0):
    """A new randomly initialised (He) membrane network."""
    if seed is not None:
        seed_everything(seed)
    return _module_class()(config or NetConfig())


def layer_names(k: int) -> tuple[str, ...]:
    if not 0 <= k <= len(LAYERS):
        raise ValueError(f"k must be between 0 and {len(LAYERS)}, got {k}")
    return LAYERS[:k]


# ----------------------------------------------------------------- images and labels
def as_image(image: Any, what: str = "image") -> np.ndarray:
    """Check a 2D grayscale image and return it as a numpy array."""
    img = np.asarray(image)
    if img.ndim != 2:
        raise ValueError(f"{what} must be a 2D grayscale image, got shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise ValueError(f"{what} has a non-numeric dtype {img.dtype}")
    return img


def lazy_image(image: Any, what: str = "image"):
    """Check a 2D grayscale image, leaving a dask or zarr array unread."""
    img = image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)
    if len(img.shape) != 2:
        raise ValueError(f"{what} must be a 2D grayscale image, got shape {tuple(img.shape)}")
    if not (np.issubdtype(img.dtype, np.number) or img.dtype == bool):
        raise ValueError(f"{what} has a non-numeric dtype {img.dtype}")
    return img


def normalise(image: Any, stats: tuple[float, float] | None = None) -> np.ndarray:
    """Per-image z-score as float32 (a constant image becomes zeros), with the
    image's :func:`~expertloop.engine.tiling.mean_std` unless ``stats`` are given."""
    img = as_image(image).astype(np.float32)
    mean, std = mean_std(img) if stats is None else stats
    return (img - mean) / (std if std > 0 else 1.0)


def check_window_fits(image: np.ndarray, window: int, what: str = "image") -> None:
    if min(image.shape) < window:
        raise ValueError(
            f"{what} of shape {image.shape} is smaller than the {window}x{window} window"
        )


def pad_for_window(image: np.ndarray, window: int) -> np.ndarray:
    """Reflect-pad so that every pixel has a full window centred on it."""
    b = window // 2
    return np.pad(image, ((b, window - 1 - b), (b, window - 1 - b)), mode="reflect")


def cut_windows(padded: np.ndarray, coords: np.ndarray, window: int) -> np.ndarray:
    """Windows ``(N, w, w)`` centred on ``coords`` (pixel coordinates of the
    unpadded image) from an image padded by :func:`pad_for_window`."""
    view = np.lib.stride_tricks.sliding_window_view(padded, (window, window))
    c = np.asarray(coords, np.int64).reshape(-1, 2)
    return view[c[:, 0], c[:, 1]]


def membrane_labels(mask: Any, membrane_value: int | float) -> np.ndarray:
    """Dense ground truth → workflow labels (1 membrane, 2 not membrane).

    Parameters
    ----------
    mask : array
        A dense membrane mask.
    membrane_value : number
        The value that marks membranes in ``mask``: explicit because data sets
        disagree (ISBI 2012 marks membranes with 0, the VNC stack with 255).

    Returns
    -------
    numpy.ndarray
        uint8 labels, 1 where ``mask == membrane_value``, 2 elsewhere.

    Raises
    ------
    ValueError
        When no pixel has the value, or the mask holds a single class.
    """
    m = np.asarray(mask)
    is_mem = m == membrane_value
    n = is_mem.size
    if not is_mem.any():
        raise ValueError(f"no pixel has the membrane value {membrane_value} (values: {np.unique(m)[:10]})")
    if is_mem.all():
        raise ValueError("the mask has one class only: every pixel is membrane")
    frac = is_mem.sum() / n
    if frac > 0.5:
        import warnings

        warnings.warn(
            f"{frac:.0%} of the pixels are marked membrane (value {membrane_value}); membranes are "
            "usually the minority: is the label polarity inverted?",
            stacklevel=2,
        )
    return np.where(is_mem, MEMBRANE, BACKGROUND).astype(np.uint8)


def check_labels(labels: Any, image: np.ndarray, what: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != image.shape:
        raise ValueError(f"{what} shape {lab.shape} differs from its image shape {image.shape}")
    bad = np.setdiff1d(np.unique(lab), [UNLABELLED, MEMBRANE, BACKGROUND])
    if bad.size:
        raise ValueError(
            f"{what} contain values {bad[:5].tolist()}: use 0 = unlabelled, 1 = membrane, 2 = not membrane"
        )
    return lab.astype(np.uint8, copy=False)


def check_domains(source: Sequence[Any], target: Sequence[Any]) -> None:
    """Source and target images must be 2D images of the same dtype."""
    s = [as_image(im, "source image") for im in source]
    t = [as_image(im, "target image") for im in target]
    if not s or not t:
        raise ValueError("need at least one source and one target image")
    sd, td = {a.dtype for a in s}, {a.dtype for a in t}
    if len(sd | td) > 1:
        raise ValueError(
            f"source images are {sorted(map(str, sd))} but target images are {sorted(map(str, td))}: "
            "convert both domains to the same dtype (the network sees per-image normalised "
            "intensities, but mixing 8-bit and 16-bit data usually means a conversion is missing)"
        )


SAMPLINGS = ("labels", "balanced")


def balanced_samples(labels_list: Sequence[np.ndarray], rng: np.random.Generator,
                     sampling: str = "balanced") -> np.ndarray:
    """Training pixels as ``(N, 4)`` rows ``(image, y, x, class)`` with class
    1 = membrane, 0 = not membrane.

    ``sampling="balanced"`` is the paper's class-balanced sample: all membrane
    pixels plus as many random non-membrane pixels. ``"labels"`` keeps every
    labelled pixel, so the classes come in the proportion the expert labelled
    them (what a pixel classifier such as a random forest sees).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    mem, bg = [], []
    for i, lab in enumerate(labels_list):
        for val, out in ((MEMBRANE, mem), (BACKGROUND, bg)):
            yy, xx = np.nonzero(lab == val)
            out.append(np.stack([np.full_like(yy, i), yy, xx], 1))
    mem_a = np.concatenate(mem) if mem else np.zeros((0, 3), np.int64)
    bg_a = np.concatenate(bg) if bg else np.zeros((0, 3), np.int64)
    if len(mem_a) == 0 or len(bg_a) == 0:
        which = "membrane" if len(mem_a) == 0 else "not-membrane"
        raise ValueError(
            f"the labels have one class only: no {which} pixel is labelled "
            "(label some pixels 1 = membrane and some 2 = not membrane)"
        )
    if sampling == "balanced":
        n = len(mem_a)
        bg_a = bg_a[rng.choice(len(bg_a), size=n, replace=len(bg_a) < n)]
    rows = np.concatenate([
        np.concatenate([mem_a, np.ones((len(mem_a), 1), mem_a.dtype)], 1),
        np.concatenate([bg_a, np.zeros((len(bg_a), 1), bg_a.dtype)], 1),
    ])
    return rows.astype(np.int64)


# ----------------------------------------------------------------- training
def train_net(
    model,
    images: Sequence[Any],
    labels: Sequence[Any],
    *,
    epochs: int = 5,
    samples_per_epoch: int = 4096,
    batch_size: int = 64,
    optimizer: str = "adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    seed: int | None = 0,
    device=None,
    desc: str = "training",
    augment: bool = True,
    sampling: str = "balanced",
    ema: float = 0.0,
) -> Job[Any]:
    """Job: train ``model`` in place on windows around labelled pixels.

    Each epoch draws ``samples_per_epoch`` windows from the labelled pixels
    (:func:`balanced_samples`: class-balanced, the paper's choice, or
    ``sampling="labels"``: in the labels' own class proportions), each window under a random symmetry of
    the square when ``augment`` (:func:`dihedral`: membranes have no
    preferred orientation; with few target labels this is worth about +0.04
    F-score on the VNC stack); Adam (default: it learns in far fewer
    steps than the paper's SGD, lr 1e-2, momentum 0.9, which is
    ``optimizer="sgd", lr=1e-2``).
    Frozen layers (``requires_grad=False``) are not optimised.
    ``ema`` in (0, 1): the network ends with the exponential moving average
    of its weights over the optimisation steps (decay ``ema`` per step;
    Polyak averaging), which varies far less from run to run than the last
    step's weights when a few labels are trained for a few epochs.
    Returns the :class:`~expertloop.engine.training.History`.
    """
    from expertloop.engine.training import model_device, train_loop

    torch = get_torch()
    w = model.config.window
    imgs = [as_image(im) for im in images]
    if len(imgs) != len(labels) or not imgs:
        raise ValueError(f"need as many label images as images, got {len(imgs)} and {len(labels)}")
    labs = [check_labels(lab, im) for lab, im in zip(labels, imgs)]
    for im in imgs:
        check_window_fits(im, w)
    if samples_per_epoch < 1 or batch_size < 1:
        raise ValueError("samples_per_epoch and batch_size must be at least 1")
    rng = seed_everything(seed) if seed is not None else np.random.default_rng()
    rows = balanced_samples(labs, rng, sampling)
    # windows of odd size 2 * (w // 2) + 1 centred on the pixel, so that every symmetry of
    # the square keeps the centre; cropped to w afterwards (centre at w // 2)
    half = w // 2
    side = 2 * half + 1
    padded = [np.pad(normalise(im), half, mode="reflect") for im in imgs]
    n_per_epoch = min(samples_per_epoch, len(rows))
    n_batches = -(-n_per_epoch // batch_size)
    criterion = torch.nn.CrossEntropyLoss()
    if not 0 <= ema < 1:
        raise ValueError(f"ema must be in [0, 1), got {ema}")
    trained = [p for p in model.parameters() if p.requires_grad]
    average = [p.detach().clone() for p in trained] if ema else None

    def update_average():
        # called when the loop asks for the next batch, i.e. after each optimisation step
        with torch.no_grad():
            for a, p in zip(average, trained):
                a.mul_(ema).add_(p.detach().to(a.device), alpha=1 - ema)

    def batches(epoch):
        pick = rows[rng.choice(len(rows), size=n_per_epoch, replace=False)]
        for b in range(n_batches):
            if average is not None and (epoch or b):
                update_average()
            chunk = pick[b * batch_size:(b + 1) * batch_size]
            x = np.empty((len(chunk), 1, side, side), np.float32)
            for i in np.unique(chunk[:, 0]):
                sel = chunk[:, 0] == i
                x[sel, 0] = cut_windows(padded[i], chunk[sel, 1:3], side)
            if augment:
                x = dihedral(x, rng.integers(0, 8, len(x)))
            x = np.ascontiguousarray(x[..., :w, :w])
            yield torch.from_numpy(x), torch.from_numpy(chunk[:, 3])

    def loss_fn(net, batch):
        d = model_device(net)
        xb, yb = batch
        return criterion(net(xb.to(d)), yb.to(d))

    hist = yield from train_loop(
        model, batches, loss_fn, epochs=epochs, optimizer=optimizer, lr=lr, momentum=momentum,
        device=device, desc=desc, batches_per_epoch=n_batches,
    )
    if average is not None:
        update_average()  # the last step
        with torch.no_grad():
            for a, p in zip(average, trained):
                p.copy_(a.to(p.device))
    return hist


def dihedral(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each square window ``x[i]`` (``(N, C, s, s)``) under one of the 8
    symmetries of the square (``codes[i]``: bit 0 transposes, bits 1-2 flip
    rows / columns). For odd ``s`` the centre pixel stays in place, so a
    symmetric copy is a training window of the same centre label: membranes
    have no preferred orientation."""
    out = np.array(x, copy=True)
    c = np.asarray(codes, np.int64)
    t = (c & 1).astype(bool)
    out[t] = np.swapaxes(out[t], -1, -2)
    fr = ((c >> 1) & 1).astype(bool)
    out[fr] = out[fr][..., ::-1, :]
    fc = ((c >> 2) & 1).astype(bool)
    out[fc] = out[fc][..., :, ::-1]
    return out


def transfer(source_model, k: int = 3, mode: str = "fine-tuned", *, seed: int | None = 0):
    """A target network whose first ``k`` layers are copied from ``source_model``.

    The other layers are freshly initialised (He). ``mode="frozen"`` (the
    paper's control) keeps the copied layers fixed during training,
    ``"fine-tuned"`` trains them too. The copied layer names are in
    ``model.transferred``, the frozen ones in ``model.frozen``.
    """
    if mode not in ("frozen", "fine-tuned"):
        raise ValueError(f"mode must be 'frozen' or 'fine-tuned', got {mode!r}")
    names = layer_names(k)
    target = build_net(source_model.config, seed=seed)
    src = source_model.state_dict()
    state = target.state_dict()
    for name in names:
        for p in ("weight", "bias"):
            state[f"{name}.{p}"] = src[f"{name}.{p}"].detach().clone().cpu()
    target.load_state_dict(state)
    target.transferred = names
    target.frozen = names if mode == "frozen" else ()
    freeze(target, target.frozen)
    return target


def freeze(model, names: Sequence[str]) -> None:
    for name in names:
        for p in getattr(model, name).parameters():
            p.requires_grad_(False)
    model.frozen = tuple(names)


# ----------------------------------------------------------------- inference
def predict_windows(model, image: Any, coords: Any, *, batch_size: int = 256) -> np.ndarray:
    """P(membrane) at ``coords`` ``(N, 2)``, each from its own window (window mode)."""
    from expertloop.engine.training import model_device

    torch = get_torch()
    w = model.config.window
    img = as_image(image)
    check_window_fits(img, w)
    padded = pad_for_window(normalise(img), w)
    c = np.asarray(coords, np.int64).reshape(-1, 2)
    model.eval()
    d = model_device(model)
    out = []
    with torch.inference_mode():
        for i in range(0, len(c), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(cut_windows(padded, c[i:i + batch_size], w)))
            out.append(torch.softmax(model(x[:, None].to(d)).float(), 1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def predict_dense(model, image: Any, *, tile: int = 256, device=None, out=None,
                  desc: str = "membrane probability", mc_samples: int = 0) -> Job[np.ndarray]:
    """Job: P(membrane) for every pixel (float32, the image's shape), by the
    fully convolutional evaluation, tile by tile with a ``w - 1`` pixel halo.

    Block-wise: ``image`` may be a numpy, dask or zarr array; each tile's
    window is read from it (reflected at the border, as ``np.pad``) and its
    core written into ``out`` (default: a new numpy array; give a zarr array
    of the image's shape to keep the result on disk), so an image bigger than
    memory needs one tile in memory. The z-score uses the image's mean and
    standard deviation, read in a first pass. The result is the same (to
    float rounding) for any ``tile`` and any source chunking.

    ``mc_samples > 0``: Monte Carlo dropout (Gal & Ghahramani): the mean
    P(membrane) of that many passes with the network's dropout left on, an
    estimate of the posterior predictive probability that is less sure where
    the weights are poorly determined by the labels (random: the result then
    depends on the torch seed and the tile size).
    """
    from expertloop.engine.training import model_device

    torch = get_torch()
    if tile < 1:
        raise ValueError("tile must be at least 1")
    if mc_samples < 0:
        raise ValueError("mc_samples must be 0 (no dropout at prediction) or more")
    w = model.config.window
    img = lazy_image(image)
    check_window_fits(img, w)
    if out is None:
        out = np.empty(img.shape, np.float32)
    elif tuple(out.shape) != tuple(img.shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, the image {tuple(img.shape)}")
    if device is not None:
        model.to(select_device(device))
    d = model_device(model)
    model.eval()
    mean, std = yield from rescale(iter_mean_std(img), 0, 5, 100)
    std = std if std > 0 else 1.0
    b = w // 2
    total = count_tiles(img.shape, tile)
    with torch.inference_mode():
        for i, t in enumerate(iter_tiles(img.shape, tile)):
            ys, xs = t.write
            block = read_window(img, (ys.start - b, xs.start - b), (ys.stop + w - 1 - b, xs.stop + w - 1 - b))
            block = (block.astype(np.float32) - mean) / std  # tile + halo, normalised
            x = torch.from_numpy(np.ascontiguousarray(block, np.float32))[None, None].to(d)
            if mc_samples:
                model.train()  # dropout on (the network has no batch norm)
                try:
                    p = sum(torch.softmax(model(x, dense=True).float(), 1)[0, 1] for _ in range(mc_samples))
                finally:
                    model.eval()
                out[ys, xs] = (p / mc_samples).cpu().numpy()
            else:
                logits = model(x, dense=True).float()
                out[ys, xs] = torch.softmax(logits, 1)[0, 1].cpu().numpy()
            yield Progress(5 + (95 * (i + 1)) // total, 100, f"{desc}: tile {i + 1}/{total}")
    return out


def predict_per_window(model, image: Any, *, batch_size: int = 512,
                       desc: str = "per-window prediction") -> Job[np.ndarray]:
    """Job: the same map as :func:`predict_dense`, one window per pixel (slow;
    the reference the FCN is checked against and benchmarked with)."""
    img = as_image(image)
    h, wd = img.shape
    yy, xx = np.mgrid[0:h, 0:wd]
    coords = np.stack([yy.ravel(), xx.ravel()], 1)
    out = np.empty(h * wd, np.float32)
    step = batch_size * 8
    n = math.ceil(len(coords) / step)
    for i in range(n):
        sl = slice(i * step, (i + 1) * step)
        out[sl] = predict_windows(model, img, coords[sl], batch_size=batch_size)
        yield Progress(i + 1, n, f"{desc}: {min((i + 1) * step, len(coords))}/{len(coords)} pixels")
    return out.reshape(h, wd)


# ----------------------------------------------------------------- model files
def save_net(path, model, *, kind: str, extra: dict[str, Any] | None = None):
    """Save with :func:`expertloop.engine.persistence.save_model` (workflow 'membranes')."""
    from expertloop.engine.persistence import save_model

    info = {"kind": kind, "transferred": list(getattr(model, "transferred", ())),
            "frozen": list(getattr(model, "frozen", ()))}
    info.update(extra or {})
    return save_model(
        path, model, workflow=WORKFLOW, class_names=CLASS_NAMES,
        input_spec={"net": model.config.to_dict(), "channels": 1,
                    "normalisation": "per-image z-score", "window_centre": "w // 2"},
        extra=info,
    )


def load_net(path):
    """Load a membrane network saved by :func:`save_net` (weights-only, checked)."""
    from expertloop.engine.persistence import (
        Field,
        ModelFileError,
        check_fields,
        load_model,
    )

    bundle = load_model(path, workflow=WORKFLOW)
    net = check_fields(bundle.input_spec, {"net": Field(dict)}, f"{path}: input_spec")["net"]
    check_fields(net, {"window": Field(int, 16, 1024), "channels": Field(list, 1, 4096, item=int, max_len=3),
                       "hidden": Field(list, 1, 65536, item=int, max_len=2),
                       "dropout": Field(float, 0, 1, required=False)}, f"{path}: input_spec.net")
    try:
        config = NetConfig.from_dict(net)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: the metadata does not describe a membrane network ({exc})") from exc
    model = build_net(config, seed=None)
    try:
        model.load_state_dict(bundle.state)
    except (RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{path}: weights do not fit the saved architecture: {exc}") from exc
    extra = check_fields(bundle.metadata.get("extra", {}), {
        "transferred": Field(list, item=str, required=False), "frozen": Field(list, item=str, required=False)},
        f"{path}: extra")
    model.transferred = tuple(extra.get("transferred", ()))
    try:
        freeze(model, extra.get("frozen", ()))
    except AttributeError as exc:
        raise ModelFileError(f"{path}: the metadata freezes a layer the network does not have ({exc})") from exc
    model.eval()
    return model, bundle.metadata
