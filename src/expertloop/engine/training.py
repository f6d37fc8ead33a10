"""Training loops shared by the workflows, as jobs.

Two levels:

* :func:`train_loop`: any model, any batches, any loss; yields progress per
  batch, validates per epoch, stops cleanly at a yield when cancelled;
* :func:`fit_classifier`: the common case of a classifier on numpy arrays
  with cross-entropy (optionally class-balanced), mini-batches and
  augmentation.

::

    from expertloop.engine import jobs, training
    hist = jobs.run_job(training.fit_classifier(net, x, y, epochs=5))
    probs = jobs.run_job(training.predict_proba(net, x_test))

The model is moved to the chosen device (:func:`expertloop.engine.device.select_device`)
and stays there; batches are moved to the model's device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch
from expertloop.engine.device import select_device
from expertloop.engine.jobs import Job, Progress
from expertloop.engine.seed import seed_everything


@dataclass
class History:
    """Per-epoch records: ``{"epoch", "loss", **validate(model)}``."""

    epochs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.epochs[-1] if self.epochs else {}

    def series(self, key: str) -> list[Any]:
        return [e.get(key) for e in self.epochs]


def make_optimizer(params, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0):
    torch = get_torch()
    if not isinstance(optimizer, str):
        return optimizer
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")


def model_device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return get_torch().device("cpu")


def train_loop(
    model,
    batches: Callable[[int], Iterable[Any]],
    loss_fn: Callable[[Any, Any], Any],
    *,
    epochs: int,
    optimizer="adam",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    params=None,
    validate: Callable[[Any], dict[str, Any]] | None = None,
    device=None,
    desc: str = "training",
    batches_per_epoch: int | None = None,
) -> Job[History]:
    """Job: train ``model`` in place and return its :class:`History`.

    ``batches(epoch)`` returns the epoch's batches (anything ``loss_fn``
    understands); ``loss_fn(model, batch)`` returns a scalar tensor (move the
    batch to :func:`model_device` inside it). ``params`` restricts what is
    optimised (default: all trainable parameters). ``validate(model)`` runs
    after each epoch in eval mode without gradients and its dict joins the
    history. ``batches_per_epoch`` makes the progress total exact.
    """
    torch = get_torch()
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    model.to(select_device(device))
    opt = make_optimizer(
        model.parameters() if params is None else params, optimizer, lr, momentum, weight_decay
    )
    hist = History()
    total = epochs * batches_per_epoch if batches_per_epoch else None
    step = 0
    for epoch in range(epochs):
        model.train()
        losses = []
        for batch in batches(epoch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{desc}: the loss became {loss.item()} in epoch {epoch + 1}; "
                    "try a lower learning rate"
                )
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            yield Progress(step, total, f"{desc}: epoch {epoch + 1}/{epochs}, loss {losses[-1]:.4f}")
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan")}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                record.update(validate(model))
        hist.epochs.append(record)
        extra = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "epoch" and isinstance(v, float))
        yield Progress(step, total, f"{desc}: epoch {epoch + 1}/{epochs} done ({extra})")
    model.eval()
    return hist


def balanced_class_weight(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Weights ``N / (K * count_k)`` (0 for absent classes), as scikit-learn's "balanced"."""
    y = np.asarray(y, np.int64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes, np.float64)
    w[present] = len(y) / (present.sum() * counts[present])
    return w.astype(np.float32)


def _check_xy(x, y):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim < 2 or len(x) != len(y):
        raise ValueError(f"x must be (N, ...) and y (N,), got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError("no training samples")
    if y.min() < 0:
        raise ValueError("class labels must be 0..K-1")
    return x.astype(np.float32, copy=False), y.astype(np.int64, copy=False)


def fit_classifier(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer="adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    class_weight=None,
    n_classes: int | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    augment: Callable[[Any], Any] | None = None,
    params=None,
    seed: int | None = 0,
    device=None,
    desc: str = "training",
) -> Job[History]:
    """Job: train a classifier ``model`` (logits out) with cross-entropy.

    ``x`` float32 ``(N, C, ...)``, ``y`` int ``(N,)`` in ``0..K-1``.
    ``class_weight``: None, ``"balanced"`` or an array of K weights.
    ``val=(x_val, y_val)`` adds ``val_loss`` and ``val_acc`` per epoch.
    ``augment`` maps a batch tensor (on the device) to an augmented one.
    """
    torch = get_torch()
    x, y = _check_xy(x, y)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    k = int(n_classes or (int(y.max()) + 1))
    rng = seed_everything(seed) if seed is not None else np.random.default_rng()
    dev = select_device(device)
    model.to(dev)
    if class_weight is None:
        weight = None
    elif isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError("class_weight must be None, 'balanced' or an array")
        weight = torch.as_tensor(balanced_class_weight(y, k), device=dev)
    else:
        weight = torch.as_tensor(np.asarray(class_weight, np.float32), device=dev)
    criterion = torch.nn.CrossEntropyLoss(weight=weight)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    n_batches = -(-len(x) // batch_size)

    def batches(_epoch):
        order = torch.from_numpy(rng.permutation(len(x)))
        for i in range(n_batches):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield xt[idx], yt[idx]

    def loss_fn(net, batch):
        xb, yb = batch
        d = model_device(net)
        xb, yb = xb.to(d), yb.to(d)
        if augment is not None:
            xb = augment(xb)
        return criterion(net(xb), yb)

    validate = None
    if val is not None:
        xv, yv = _check_xy(*val)

        def validate(net):
            d = model_device(net)
            logits = torch.cat([
                net(torch.from_numpy(xv[i:i + 256]).to(d)).float().cpu()
                for i in range(0, len(xv), 256)
            ])
            yvt = torch.from_numpy(yv)
            return {
                "val_loss": float(torch.nn.functional.cross_entropy(logits, yvt)),
                "val_acc": float((logits.argmax(1) == yvt).float().mean()),
            }

    return (yield from train_loop(
        model, batches, loss_fn, epochs=epochs, optimizer=optimizer, lr=lr,
        momentum=momentum, weight_decay=weight_decay, params=params,
        validate=validate, device=dev, desc=desc, batches_per_epoch=n_batches,
    ))


def predict_logits(model, x: np.ndarray, *, batch_size: int = 256, device=None,
                   desc: str = "predicting") -> Job[np.ndarray]:
    """Job: the model's raw outputs for ``x`` in batches, as float32 numpy.

    ``device`` moves the model first; by default it stays where it is.
    """
    torch = get_torch()
    x = np.asarray(x, np.float32)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if device is not None:
        model.to(select_device(device))
    d = model_device(model)
    model.eval()
    outs = []
    n = -(-len(x) // batch_size)
    with torch.inference_mode():
        for i in range(n):
            xb = torch.from_numpy(np.ascontiguousarray(x[i * batch_size:(i + 1) * batch_size])).to(d)
            outs.append(model(xb).float().cpu().numpy())
            yield Progress(i + 1, n, f"{desc}: batch {i + 1}/{n}")
    if not outs:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(outs)


def predict_proba(model, x: np.ndarray, *, batch_size: int = 256, temperature: float = 1.0,
                  device=None, desc: str = "predicting") -> Job[np.ndarray]:
    """Job: softmax class probabilities ``(N, K)`` (logits divided by ``temperature``)."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    logits = yield from predict_logits(model, x, batch_size=batch_size, device=device, desc=desc)
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
