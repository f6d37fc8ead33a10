"""Classifiers that give class likelihoods, and their calibration.

The loop is classifier-agnostic: anything with the :class:`Classifier`
interface works. Two ship:

* :class:`SklearnClassifier`: logistic regression (or an SVM with
  probabilities) on hand-made features (pixels + HOG) or pooled CNN
  embeddings (:func:`expertloop.engine.features.embed_images`);
* :class:`CNNClassifier`: a torchvision MobileNetV2 / ResNet-18 fine-tuned on
  the images (ImageNet weights through torchvision's weights API when
  available, random initialisation otherwise, with a warning).

Each classifier turns images into its input once (``prepare``), then
``fit``/``logits`` work on rows of that input, so features are never
recomputed between iterations. Probabilities are calibrated by temperature
scaling (:func:`fit_temperature`) on the validation set, because the
acceptance threshold depends on them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from expertloop.engine.jobs import Job, Progress

ABSENT_LOGIT = -30.0  # logit given to classes the model never saw


@runtime_checkable
class Classifier(Protocol):
    """What the loop needs from a model (all long steps are jobs)."""

    name: str

    def prepare(self, images: np.ndarray) -> Job[Any]:
        """Model input for all images (features, tensors...), indexable by rows."""

    def fit(self, x: Any, y: np.ndarray, n_classes: int) -> Job[None]:
        """Train on rows ``x`` with labels ``y`` in ``0..n_classes-1``."""

    def logits(self, x: Any) -> Job[np.ndarray]:
        """Uncalibrated scores ``(N, n_classes)``; softmax gives likelihoods."""


# ------------------------------------------------------------ features
def to_float(images: np.ndarray) -> np.ndarray:
    """Images as float32 in about [0, 1] (integer dtypes by their range)."""
    a = np.asarray(images)
    if np.issubdtype(a.dtype, np.integer):
        top = 255.0 if a.max(initial=0) <= 255 else float(np.iinfo(a.dtype).max)
        return a.astype(np.float32) / top
    a = a.astype(np.float32)
    lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
    return (a - lo) / (hi - lo) if hi > 1.0 or lo < 0.0 else a


def _grad_histograms(grey: np.ndarray, cell: int = 4, bins: int = 8) -> np.ndarray:
    """HOG-like features of a stack ``(N, H, W)``: per-cell histograms of gradient orientation."""
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.hypot(gx, gy)
    ori = np.mod(np.arctan2(gy, gx), np.pi)                     # unsigned orientation
    b = np.minimum((ori / np.pi * bins).astype(np.int64), bins - 1)
    n, h, w = grey.shape
    ch, cw = h // cell, w // cell
    onehot = np.zeros((n, h, w, bins), np.float32)
    np.put_along_axis(onehot, b[..., None], mag[..., None].astype(np.float32), axis=3)
    hist = onehot[:, :ch * cell, :cw * cell].reshape(n, ch, cell, cw, cell, bins).sum(axis=(2, 4))
    hist = hist.reshape(n, -1)
    return hist / (np.linalg.norm(hist, axis=1, keepdims=True) + 1e-6)


def hand_features(images: np.ndarray, size: int = 16, chunk: int = 512) -> Job[np.ndarray]:
    """Job: hand-made features per image, vectorised over the stack.

    Pixels at ``size``×``size``, HOG-like gradient-orientation histograms
    (4×4-pixel cells, 8 orientations) and an 8-bin intensity histogram per
    channel.
    """
    from skimage.transform import resize

    x = to_float(images)
    n = len(x)
    rgb = x.ndim == 4
    out = []
    for s in range(0, n, chunk):
        xb = x[s:s + chunk]
        small = resize(xb, (len(xb), size, size) + xb.shape[3:], anti_aliasing=True, order=1)
        grey = small.mean(axis=-1) if rgb else small
        hog = _grad_histograms(grey.astype(np.float32))
        chans = xb.reshape(len(xb), -1, xb.shape[-1]) if rgb else xb.reshape(len(xb), -1, 1)
        edges = np.minimum((chans.clip(0, 1) * 8).astype(np.int64), 7)
        hist = np.stack([np.stack([np.bincount(e, minlength=8) for e in edges[..., c]])
                         for c in range(chans.shape[-1])], axis=1).reshape(len(xb), -1) / chans.shape[1]
        out.append(np.concatenate([small.reshape(len(xb), -1), hog, hist], axis=1).astype(np.float32))
        yield Progress(min(s + chunk, n), n, f"hand-made features {min(s + chunk, n)}/{n}")
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _to_uint8_list(images: np.ndarray) -> list[np.ndarray]:
    return list((to_float(images).clip(0, 1) * 255).astype(np.uint8))


class SklearnClassifier:
    """Logistic regression (``"logreg"``) or SVM (``"svm"``) on features.

    ``features``: ``"hand"`` (pixels + HOG + colour histogram, fast) or an
    embedder name (``"mobilenet_v2"``, ``"resnet18"``, ``"resnet50"``) for
    pooled CNN features (ImageNet weights when available).
    """

    def __init__(self, model: str = "logreg", features: str = "hand", *, C: float = 1.0,
                 embed_size: int = 64, pretrained: bool | str = "auto", seed: int = 0,
                 device=None) -> None:
        if model not in ("logreg", "svm"):
            raise ValueError("model must be 'logreg' or 'svm'")
        self.model, self.features, self.C = model, features, C
        self.embed_size, self.pretrained, self.seed, self.device = embed_size, pretrained, seed, device
        self.name = f"{model} on {features} features"
        self._est = None
        self._scaler = None
        self._classes = None
        self._k = 0

    def prepare(self, images):
        if self.features == "hand":
            return (yield from hand_features(images))
        from expertloop.engine.features import embed_images

        return (yield from embed_images(_to_uint8_list(images), self.features, size=self.embed_size,
                                        pretrained=self.pretrained, seed=self.seed, device=self.device))

    def fit(self, x, y, n_classes):
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import SVC
        from threadpoolctl import threadpool_limits

        y = np.asarray(y, np.int64)
        if len(np.unique(y)) < 2:
            raise ValueError("training needs examples of at least two classes")
        yield Progress(0, None, f"fitting {self.name} on {len(y)} samples")
        # one BLAS thread: these matrices are small, and several threads fighting
        # over busy cores make lbfgs ~10x slower
        with threadpool_limits(1):
            self._scaler = StandardScaler().fit(x)
            xs = self._scaler.transform(x)
            if self.model == "logreg":
                est = LogisticRegression(C=self.C, max_iter=500, class_weight="balanced")
            else:
                est = SVC(C=self.C, probability=True, class_weight="balanced", random_state=self.seed)
            est.fit(xs, y)
        self._est, self._classes, self._k = est, est.classes_, int(n_classes)
        yield Progress(1, 1, f"fitted {self.name}")

    def logits(self, x):
        from threadpoolctl import threadpool_limits

        if self._est is None:
            raise RuntimeError("the classifier is not trained yet")
        yield Progress(0, None, "predicting")
        with threadpool_limits(1):
            xs = self._scaler.transform(x)
            if self.model == "logreg":
                d = self._est.decision_function(xs)
                if d.ndim == 1:  # binary: P(class 1) = sigmoid(d)
                    d = np.stack([np.zeros_like(d), d], axis=1)
            else:
                d = np.log(np.clip(self._est.predict_proba(xs), 1e-12, 1.0))
        out = np.full((len(xs), self._k), ABSENT_LOGIT, np.float32)
        out[:, self._classes] = d
        return out


class CNNClassifier:
    """A torchvision CNN fine-tuned on the images (input resized to ``size``).

    ``arch``: ``"mobilenet_v2"`` (ImageNet weights available offline) or
    ``"resnet18"``. ``finetune="last"`` trains the last blocks and the new
    head only (cheap on a CPU); ``"all"`` trains every layer. ``warm_start`` continues from the previous iteration's
    weights (cheaper) instead of restarting from the initial weights.
    """

    ARCHS = {
        "mobilenet_v2": "MobileNet_V2_Weights.IMAGENET1K_V1",
        "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    }

    def __init__(self, arch: str = "mobilenet_v2", *, size: int = 64, epochs: int = 5,
                 batch_size: int = 32, lr: float = 1e-3, pretrained: bool | str = "auto",
                 warm_start: bool = True, finetune: str = "last", seed: int = 0, device=None) -> None:
        if arch not in self.ARCHS:
            raise ValueError(f"arch must be one of {sorted(self.ARCHS)}")
        if finetune not in ("last", "all"):
            raise ValueError("finetune must be 'last' (last blocks + head) or 'all'")
        self.finetune = finetune
        if arch not in self.ARCHS:
            raise ValueError(f"arch must be one of {sorted(self.ARCHS)}")
        self.arch, self.size, self.epochs, self.batch_size, self.lr = arch, size, epochs, batch_size, lr
        self.pretrained, self.warm_start, self.seed, self.device = pretrained, warm_start, seed, device
        self.name = f"{arch} CNN"
        self.net = None
        self.used_pretrained = None
        self._k = 0

    def prepare(self, images):
        from expertloop.engine.features import images_to_batch

        imgs = _to_uint8_list(images)
        out = []
        for i in range(0, len(imgs), 256):
            out.append(images_to_batch(imgs[i:i + 256], self.size, "dtype"))
            yield Progress(min(i + 256, len(imgs)), len(imgs), "preparing CNN input")
        return np.concatenate(out) if out else np.zeros((0, 3, self.size, self.size), np.float32)

    def _build(self, n_classes):
        from expertloop.engine.backend import get_torch
        from expertloop.engine.features import load_torchvision_model
        from expertloop.engine.seed import seed_everything

        torch = get_torch()
        seed_everything(self.seed)
        net, used = load_torchvision_model(self.arch, self.ARCHS[self.arch], self.pretrained)
        if self.arch == "mobilenet_v2":
            net.classifier[-1] = torch.nn.Linear(net.classifier[-1].in_features, n_classes)
        else:
            net.fc = torch.nn.Linear(net.fc.in_features, n_classes)
        self.used_pretrained = used
        if self.finetune == "last":  # train the last blocks and the head only (much cheaper on a CPU)
            last = net.features[-4:] if self.arch == "mobilenet_v2" else net.layer4
            head = net.classifier if self.arch == "mobilenet_v2" else net.fc
            for p in net.parameters():
                p.requires_grad = False
            for m in (last, head):
                for p in m.parameters():
                    p.requires_grad = True
        return net

    def fit(self, x, y, n_classes):
        from expertloop.engine.training import fit_classifier

        y = np.asarray(y, np.int64)
        if self.net is None or not self.warm_start or self._k != n_classes:
            yield Progress(0, None, f"building {self.arch}")
            self.net = self._build(n_classes)
            self._k = n_classes
        yield from fit_classifier(self.net, x, y, epochs=self.epochs, batch_size=self.batch_size,
                                  lr=self.lr, class_weight="balanced", n_classes=n_classes,
                                  seed=self.seed, device=self.device, desc=f"training {self.arch}")

    def logits(self, x):
        from expertloop.engine.training import predict_logits

        if self.net is None:
            raise RuntimeError("the classifier is not trained yet")
        return (yield from predict_logits(self.net, x, batch_size=128))


#: the classifier a new project uses (widget and command line)
DEFAULT_CLASSIFIER = "logreg-hand"

CLASSIFIERS = {
    "logreg-hand": lambda **kw: SklearnClassifier("logreg", "hand", **kw),
    "svm-hand": lambda **kw: SklearnClassifier("svm", "hand", **kw),
    "logreg-resnet18": lambda **kw: SklearnClassifier("logreg", "resnet18", **kw),
    "logreg-mobilenet_v2": lambda **kw: SklearnClassifier("logreg", "mobilenet_v2", **kw),
    "cnn-mobilenet_v2": lambda **kw: CNNClassifier("mobilenet_v2", **kw),
    "cnn-resnet18": lambda **kw: CNNClassifier("resnet18", **kw),
}


def make_classifier(name: str, **kwargs) -> Classifier:
    """A classifier from :data:`CLASSIFIERS` by name.

    Parameters
    ----------
    name : str
        E.g. ``"logreg-hand"`` (:data:`DEFAULT_CLASSIFIER`) or ``"cnn-resnet18"``.
    **kwargs
        Passed to the classifier (e.g. ``device``).

    Returns
    -------
    Classifier
    """
    if name not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; choose one of {sorted(CLASSIFIERS)}")
    clf = CLASSIFIERS[name](**kwargs)
    clf.key = name  # saved with a project, so that reopening it shows (and uses) the same one
    return clf


# --------------------------------------------------------- calibration
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(logits, y, t):
    p = softmax(logits, t)
    return -float(np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0, got {logits.shape} and {y.shape}")
    res = minimize_scalar(lambda lt: _nll(logits, y, float(np.exp(lt))), bounds=(-4.0, 4.0), method="bounded")
    return float(np.exp(res.x))


def calibration_report(logits: np.ndarray, y: np.ndarray, n_bins: int = 10, seed: int = 0) -> dict:
    """Temperature on all of ``(logits, y)`` + honest ECE before/after (2-fold cross-fitting).

    The ECE "after" is measured on each half with the temperature fitted on
    the other half, so it is a held-out figure.
    """
    from expertloop.engine.metrics import expected_calibration_error as ece

    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    t_all = fit_temperature(logits, y)
    before = ece(softmax(logits), y, n_bins)
    if len(y) >= 4:
        order = np.random.default_rng(seed).permutation(len(y))
        a, b = order[: len(y) // 2], order[len(y) // 2:]
        pa = softmax(logits[a], fit_temperature(logits[b], y[b]))
        pb = softmax(logits[b], fit_temperature(logits[a], y[a]))
        after = ece(np.concatenate([pa, pb]), np.concatenate([y[a], y[b]]), n_bins)
    else:
        after = ece(softmax(logits, t_all), y, n_bins)
    return {"temperature": t_all, "ece_before": float(before), "ece_after": float(after)}


class Precomputed:
    """A classifier whose input is already prepared (``prepare`` returns ``x``).

    Lets several loops on the same images share one feature computation.
    """

    def __init__(self, classifier: Classifier, x) -> None:
        self.classifier, self._x = classifier, x
        self.name = classifier.name

    def prepare(self, images):
        if len(images) != len(self._x):
            raise ValueError(f"{len(images)} images but {len(self._x)} prepared rows")
        yield Progress(1, 1, "features ready")
        return self._x

    def fit(self, x, y, n_classes):
        return self.classifier.fit(x, y, n_classes)

    def logits(self, x):
        return self.classifier.logits(x)
