"""Which predictions to accept and which to send to the annotator.

Every strategy maps calibrated likelihoods ``probs (N, K)`` of one batch to a
:class:`Split` of the batch rows:

* ``accepted``: the model's label is taken as is (self-training);
* ``queued``: "hard cases" shown to the annotator, who accepts or changes
  the predicted label;
* ``deferred``: neither; they stay unlabelled and go on to the next batch.

Strategies:

* ``threshold`` (the paper's): ``max(p) >= t`` accepted, ``< t`` queued;
* ``random`` (the paper's control): a fixed fraction ``rate`` of the batch,
  drawn at random, is queued; the rest is deferred (``accept_rest=False``,
  pure random manual labelling) or accepted (``accept_rest=True``);
* ``margin`` / ``entropy`` (budgeted uncertainty sampling): the ``budget``
  least certain samples (smallest top-1 minus top-2 margin, or highest
  entropy) are queued; of the rest, those with ``max(p) >= t`` are accepted
  and the others deferred, so no unconfident prediction becomes a label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("threshold", "random", "margin", "entropy")


@dataclass
class Split:
    accepted: np.ndarray
    queued: np.ndarray
    deferred: np.ndarray

    def __post_init__(self) -> None:
        for k in ("accepted", "queued", "deferred"):
            setattr(self, k, np.sort(np.asarray(getattr(self, k), np.int64)))


def check_threshold(t: float) -> float:
    t = float(t)
    if not 0.0 < t < 1.0:
        raise ValueError(f"the threshold t must lie in (0, 1), got {t}")
    return t


def _check_probs(probs) -> np.ndarray:
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs must be (N, K) with K >= 2, got {p.shape}")
    return p


def threshold_split(probs, t: float = 0.9) -> Split:
    """The paper's rule: accepted where ``max(p) >= t``, queued where ``< t``."""
    t = check_threshold(t)
    p = _check_probs(probs)
    conf = p.max(axis=1)
    idx = np.arange(len(p))
    return Split(idx[conf >= t], idx[conf < t], idx[:0])


def random_split(n: int, rate: float = 0.25, *, accept_rest: bool = False,
                 rng: np.random.Generator | None = None) -> Split:
    """``round(rate * n)`` rows queued at random; the rest deferred or accepted."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"rate must lie in (0, 1], got {rate}")
    rng = rng if rng is not None else np.random.default_rng()
    order = rng.permutation(n)
    k = int(round(rate * n))
    rest = order[k:]
    return Split(rest if accept_rest else rest[:0], order[:k], rest[:0] if accept_rest else rest)


def uncertainty(probs, kind: str = "margin") -> np.ndarray:
    """Higher = less certain: ``1 - (p1 - p2)`` (margin) or the entropy."""
    p = _check_probs(probs)
    if kind == "margin":
        top = np.sort(p, axis=1)[:, -2:]
        return 1.0 - (top[:, 1] - top[:, 0])
    if kind == "entropy":
        return -np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=1)
    raise ValueError("kind must be 'margin' or 'entropy'")


def budget_split(probs, budget: int, t: float = 0.9, kind: str = "margin") -> Split:
    """The ``budget`` least certain rows queued; others accepted if ``max(p) >= t``, else deferred."""
    t = check_threshold(t)
    p = _check_probs(probs)
    if budget < 0:
        raise ValueError("budget must be >= 0")
    u = uncertainty(p, kind)
    order = np.argsort(-u, kind="stable")
    queued = order[:budget]
    rest = order[budget:]
    conf = p[rest].max(axis=1)
    return Split(rest[conf >= t], queued, rest[conf < t])


def split_batch(strategy: str, probs, *, t: float = 0.9, rate: float = 0.25,
                budget: int | None = None, accept_rest: bool = False,
                rng: np.random.Generator | None = None) -> Split:
    """Dispatch on the strategy name (see the module docstring)."""
    if strategy == "threshold":
        return threshold_split(probs, t)
    if strategy == "random":
        return random_split(len(probs), rate, accept_rest=accept_rest, rng=rng)
    if strategy in ("margin", "entropy"):
        if budget is None:
            budget = int(round(rate * len(probs)))
        return budget_split(probs, budget, t, strategy)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
