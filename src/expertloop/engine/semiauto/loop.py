"""The semi-automatic labelling loop (self-training + hard-case review).

Start from a small labelled set D0 and a fixed validation set V. Each
iteration: train the model on all labels so far, calibrate it on V
(temperature scaling), predict the next unlabelled batch S, accept the
confident predictions and queue the hard cases for the annotator
(:mod:`.strategies`); after review, ``D <- D ∪ S`` and repeat until the
batches run out or the validation accuracy reaches ``target_accuracy``.

::

    loop = SemiAutoLoop(collection, ["0", "1", ...], initial_labels, make_classifier("logreg-hand"),
                        config=SemiAutoConfig(t=0.9, batch_size=200))
    proposal = run_job(loop.run_iteration())   # train + predict the next batch
    queue = loop.queue                         # the annotator works through it
    ...
    loop.apply_review()                        # accepted + reviewed labels join D

:func:`simulate` runs the loop to the end with a simulated annotator that
answers from ground truth (documented as such: for benchmarks and tests).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from expertloop.engine.config import param
from expertloop.engine.jobs import CHECKED, Job, Progress, checks_first, rescale
from expertloop.engine.semiauto.classifiers import (
    Classifier,
    Precomputed,
    calibration_report,
    softmax,
)
from expertloop.engine.semiauto.data import ImageSet
from expertloop.engine.semiauto.queue import ReviewQueue, items_from_prediction
from expertloop.engine.semiauto.strategies import (
    STRATEGIES,
    check_threshold,
    split_batch,
)


class MissingClassWarning(UserWarning):
    """A class has no initial examples: the model cannot predict it until one is labelled."""


@dataclass
class SemiAutoConfig:
    """Parameters of a semi-automatic labelling project (saved with its state)."""

    t: float = param(0.9, help="acceptance threshold on the calibrated max likelihood",
                     label="threshold t", min=0.01, max=0.99, step=0.01, flag=("-t", "--threshold"))
    batch_size: int = param(200, help="images predicted per iteration", min=1, max=100_000)
    strategy: str = param("threshold", help="which predictions go to review: threshold | random | "
                          "margin | entropy", choices=STRATEGIES)
    rate: float = param(0.25, help="random: fraction reviewed; margin/entropy: budget = rate x batch",
                        label="rate / budget fraction", min=0.01, max=1.0, step=0.05)
    budget: int | None = param(None, help="margin/entropy: items reviewed per batch (None: rate x batch)",
                               min=1, max=100_000, widget=False)
    accept_rest: bool = False      # random: accept the non-queued predictions too
    val_fraction: float = param(0.3, help="validation share of the initial labels when no validation "
                                "set is given", label="validation fraction", min=0.0, max=0.9,
                                step=0.05, cli=False, fixed=True)
    target_accuracy: float | None = None
    calibrate: bool = True
    seed: int = param(0, help="random seed", min=0, max=2**31 - 1, widget=False)

    def check(self) -> SemiAutoConfig:
        check_threshold(self.t)
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; choose one of {STRATEGIES}")
        if not 0.0 < self.rate <= 1.0:
            raise ValueError("rate must lie in (0, 1]")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError("val_fraction must lie in [0, 1)")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ValueError("target_accuracy must lie in (0, 1]")
        return self


@dataclass
class Proposal:
    """One predicted batch: rows, calibrated predictions and the split."""

    iteration: int
    batch: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    accepted: np.ndarray   # collection indices
    queued: np.ndarray
    deferred: np.ndarray
    seconds_predict: float = 0.0
    probabilities: np.ndarray | None = None  # (len(batch), K) calibrated, batch order


@dataclass
class LoopState:
    labels: np.ndarray
    source: np.ndarray
    confidence: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)


def _stratified_val(labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    val = []
    for k in np.unique(labels[labels >= 0]):
        idx = rng.permutation(np.flatnonzero(labels == k))
        n = int(np.floor(fraction * len(idx)))
        if len(idx) - n < 1:
            n = len(idx) - 1
        val.extend(idx[:max(n, 0)])
    return np.sort(np.asarray(val, np.int64))


class SemiAutoLoop:
    """State and steps of the loop; see the module docstring.

    Parameters
    ----------
    collection : ImageSet
        The images to label.
    class_names : sequence of str
        At least two classes.
    initial_labels : array (N,)
        Class index per image, -1 for unlabelled (the initial set D0).
    classifier : Classifier
        E.g. ``make_classifier("logreg-hand")``.
    config : SemiAutoConfig, optional
        Threshold, batch size, strategy, ... (saved with the state).
    val_indices, val_labels : optional
        A validation set; default: ``config.val_fraction`` of the initial labels.
    storage : optional
        Where the state, queue and decisions are saved (a project folder).
    allow_missing_classes : bool
        Accept classes without an initial example (with a warning).
    """

    def __init__(self, collection: ImageSet, class_names, initial_labels, classifier: Classifier, *,
                 config: SemiAutoConfig | None = None, val_indices=None, val_labels=None,
                 storage=None, allow_missing_classes: bool = False) -> None:
        self.collection = collection
        self.class_names = list(class_names)
        k = len(self.class_names)
        if k < 2:
            raise ValueError("give at least two classes")
        self.config = (config or SemiAutoConfig()).check()
        self.classifier = classifier
        self.storage = storage
        n = len(collection)
        labels = np.asarray(initial_labels, np.int64).copy()
        if labels.shape != (n,):
            raise ValueError(f"initial labels must have one entry per image ({n}), got {labels.shape}")
        if labels.max(initial=-1) >= k or labels.min(initial=0) < -1:
            raise ValueError(f"labels must be -1 (unlabelled) or 0..{k - 1}")
        self.rng = np.random.default_rng(self.config.seed)
        source = np.full(n, "", dtype=object)
        if val_indices is not None:
            vi = np.asarray(val_indices, np.int64)
            vl = np.asarray(val_labels, np.int64) if val_labels is not None else labels[vi]
            if len(vl) != len(vi) or (vl < 0).any():
                raise ValueError("every validation image needs a label")
            labels[vi] = vl
        else:
            vi = _stratified_val(labels, self.config.val_fraction, self.rng)
        if len(vi) == 0:
            raise ValueError("no validation set: label more initial images or give one")
        source[labels >= 0] = "initial"
        source[vi] = "validation"
        self.val_idx = vi
        train = (labels >= 0) & (source == "initial")
        counts = np.bincount(labels[train], minlength=k)
        missing = [self.class_names[c] for c in range(k) if counts[c] == 0]
        if len(missing) == k or (k - len(missing)) < 2:
            raise ValueError("the initial labels need examples of at least two classes "
                             f"(outside the validation set); classes without examples: {missing}")
        if missing:
            msg = (f"no initial examples of class(es) {missing}: the model cannot predict them "
                   "until the annotator labels some in the review queue")
            if not allow_missing_classes:
                raise ValueError(msg + " (allow_missing_classes=True to go on anyway)")
            warnings.warn(msg, MissingClassWarning, stacklevel=2)
        self.state = LoopState(labels, source, np.full(n, np.nan))
        pool = np.flatnonzero(labels < 0)
        self.pool = list(self.rng.permutation(pool))
        self.iteration = 0
        self.proposal: Proposal | None = None
        self.queue: ReviewQueue | None = None
        self._x = None
        self._trained_at = -1
        self.temperature = 1.0
        self.last_eval: dict[str, Any] = {}
        self.manual_total = int(train.sum())  # the initial labels were made by hand

    # ------------------------------------------------------------ queries
    @property
    def labels(self) -> np.ndarray:
        return self.state.labels

    @property
    def train_idx(self) -> np.ndarray:
        s = self.state
        return np.flatnonzero((s.labels >= 0) & (s.source != "validation"))

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.state.history

    @property
    def done(self) -> bool:
        if self.proposal is not None:
            return False
        ta = self.config.target_accuracy
        if ta is not None and self.last_eval.get("val_acc", 0.0) >= ta:
            return True
        return not self.pool

    # --------------------------------------------------------------- steps
    def prepare(self) -> Job[None]:
        """Job: the classifier's input for every image (once)."""
        if self._x is None:
            self._x = yield from self.classifier.prepare(self.collection.images)

    def train(self) -> Job[dict]:
        """Job: fit on all labels so far, calibrate and score on V."""
        yield from rescale(self.prepare(), 0, 30, 100)
        t0 = time.perf_counter()
        tr = self.train_idx
        yield from rescale(self.classifier.fit(self._x[tr], self.labels[tr], len(self.class_names)), 30, 85, 100)
        logits = yield from rescale(self.classifier.logits(self._x[self.val_idx]), 85, 95, 100)
        yv = self.labels[self.val_idx]
        ev: dict[str, Any] = {"n_labelled": int(len(tr)),
                              "val_acc": float(np.mean(logits.argmax(1) == yv))}
        if self.config.calibrate:
            rep = calibration_report(logits, yv, seed=self.config.seed)
            self.temperature = rep["temperature"]
            ev.update(rep)
        else:
            self.temperature = 1.0
        ev["seconds_train"] = round(time.perf_counter() - t0, 3)
        self.last_eval = ev
        self._trained_at = self.iteration
        yield Progress(100, 100, f"trained on {len(tr)}: validation accuracy {ev['val_acc']:.3f}")
        return ev

    def predict(self, indices) -> Job[np.ndarray]:
        """Job: calibrated likelihoods ``(len(indices), K)``."""
        yield from self.prepare()
        logits = yield from self.classifier.logits(self._x[np.asarray(indices, np.int64)])
        return softmax(logits, self.temperature)

    def run_iteration(self) -> Job[Proposal | None]:
        """Job: (re)train if needed, predict the next batch, split it and fill the queue.

        An open proposal must be applied (:meth:`apply_review`) before the next iteration.

        Returns
        -------
        Job
            Returns the :class:`Proposal`, or None when no batch is left or the
            target accuracy was reached.
        """
        if self.proposal is not None:
            raise RuntimeError("review and apply the open batch first")
        if self._trained_at != self.iteration or self._x is None:
            yield from rescale(self.train(), 0, 70, 100)
        if self.done:
            return None
        t0 = time.perf_counter()
        cfg = self.config
        batch = np.asarray(self.pool[:cfg.batch_size], np.int64)
        probs = yield from rescale(self.predict(batch), 70, 95, 100)
        pred, conf = probs.argmax(1), probs.max(1)
        split = split_batch(cfg.strategy, probs, t=cfg.t, rate=cfg.rate, budget=cfg.budget,
                            accept_rest=cfg.accept_rest, rng=self.rng)
        self.iteration += 1
        p = Proposal(self.iteration, batch, pred, conf, batch[split.accepted], batch[split.queued],
                     batch[split.deferred], round(time.perf_counter() - t0, 3), probs)
        self.proposal = p
        pos = {int(i): j for j, i in enumerate(batch)}
        qrows = [pos[int(i)] for i in p.queued]
        items = items_from_prediction(p.queued, self.collection.names, pred[qrows], conf[qrows],
                                      self.collection.paths)
        self.queue = ReviewQueue(items, self.class_names, storage=self.storage, queue_id=self.iteration)
        self.save()
        yield Progress(100, 100, f"batch {self.iteration}: {len(p.accepted)} accepted, "
                       f"{len(p.queued)} to review, {len(p.deferred)} deferred")
        return p

    def apply_review(self, decisions: dict[int, int] | None = None) -> dict[str, Any]:
        """Merge the batch: accepted predictions + the annotator's decisions join D.

        Queued items left undecided stay unlabelled.

        Parameters
        ----------
        decisions : dict, optional
            ``{image index: class index}``; default: the review queue's.

        Returns
        -------
        dict
            The iteration's record (also in :attr:`history`).
        """
        p = self.proposal
        if p is None:
            raise RuntimeError("no open batch to apply")
        if decisions is None:
            decisions = self.queue.decisions() if self.queue is not None else {}
        s = self.state
        pos = {int(i): j for j, i in enumerate(p.batch)}
        for i in p.accepted:
            s.labels[i], s.source[i], s.confidence[i] = p.predicted[pos[int(i)]], "auto", p.confidence[pos[int(i)]]
        corrected = 0
        queued = set(int(i) for i in p.queued)
        for i, k in decisions.items():
            if int(i) not in queued:
                raise ValueError(f"image {i} was not queued for review in this batch")
            s.labels[i], s.source[i], s.confidence[i] = int(k), "manual", np.nan
            corrected += int(k) != int(p.predicted[pos[int(i)]])
        reviewed = len(decisions)
        done = set(int(i) for i in p.accepted) | set(int(i) for i in decisions)
        # the batch leaves the pool; undecided queued and deferred items stay unlabelled
        batch_set = set(int(i) for i in p.batch)
        self.pool = [i for i in self.pool if int(i) not in batch_set]
        self.manual_total += reviewed
        rec = {**self.last_eval, "iteration": p.iteration, "batch": int(len(p.batch)),
               "accepted": int(len(p.accepted)), "queued": int(len(p.queued)), "reviewed": reviewed,
               "corrected": int(corrected), "deferred": int(len(p.batch) - len(done)),
               "manual_fraction": reviewed / len(p.batch) if len(p.batch) else 0.0,
               "auto_errors": None, "manual_total": int(self.manual_total),
               "seconds_predict": p.seconds_predict}
        s.history.append(rec)
        self.proposal = None
        self.queue = None
        if self.storage is not None:
            self.storage.save_queue({})
        self.save()
        return rec

    def finish(self) -> Job[dict]:
        """Job: final training on all labels and its validation score.

        Returns
        -------
        Job
            Returns the evaluation record.
        """
        if self._trained_at != self.iteration:
            yield from self.train()
        return dict(self.last_eval)

    def predict_rest(self) -> Job[None]:
        """Job: label the still unlabelled images with the model (source ``"model"``)."""
        rest = np.flatnonzero(self.labels < 0)
        if len(rest):
            probs = yield from self.predict(rest)
            self.state.labels[rest] = probs.argmax(1)
            self.state.source[rest] = "model"
            self.state.confidence[rest] = probs.max(1)

    def export_csv(self, path) -> Any:
        from expertloop.engine.semiauto.data import write_labels_csv

        s = self.state
        return write_labels_csv(path, self.collection.names, s.labels, self.class_names,
                                list(s.source), s.confidence)

    # --------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        s = self.state
        p = self.proposal
        return {
            "format": "expertloop-semiauto", "version": 1,
            "class_names": self.class_names, "names": self.collection.names,
            "classifier": getattr(self.classifier, "key", None),  # its CLASSIFIERS name, when made by one
            "config": asdict(self.config), "labels": s.labels.tolist(),
            "source": [str(v) for v in s.source],
            "confidence": [None if np.isnan(c) else float(c) for c in s.confidence],
            "history": s.history, "pool": [int(i) for i in self.pool],
            "iteration": self.iteration, "val_idx": self.val_idx.tolist(),
            "manual_total": self.manual_total, "temperature": self.temperature,
            "proposal": None if p is None else {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                                for k, v in asdict(p).items()},
        }

    def save(self) -> None:
        if self.storage is not None:
            self.storage.save_state(self.to_dict())

    @classmethod
    def restore(cls, storage, collection: ImageSet, classifier: Classifier,
                annotator: str = "") -> SemiAutoLoop:
        """The loop saved in ``storage`` (the model is retrained on the next step).

        Parameters
        ----------
        storage : FolderQueueStorage
            The project's storage.
        collection : ImageSet
            The same images as when it was saved.
        classifier : Classifier
        annotator : str
            Who reviews from now on.

        Returns
        -------
        SemiAutoLoop
        """
        d = storage.load_state()
        if not d or d.get("format") != "expertloop-semiauto":
            raise ValueError(f"{storage}: no semi-automatic labelling project saved there")
        if list(d["names"]) != list(collection.names):
            raise ValueError("the images differ from those the project was made with")
        labels = np.asarray(d["labels"], np.int64)
        loop = cls.__new__(cls)
        loop.collection, loop.class_names, loop.classifier, loop.storage = collection, d["class_names"], classifier, storage
        loop.config = SemiAutoConfig(**d["config"]).check()
        loop.rng = np.random.default_rng(loop.config.seed + int(d["iteration"]))
        conf = np.array([np.nan if c is None else c for c in d["confidence"]], float)
        loop.state = LoopState(labels, np.array(d["source"], dtype=object), conf, list(d["history"]))
        loop.pool, loop.iteration = list(d["pool"]), int(d["iteration"])
        loop.val_idx = np.asarray(d["val_idx"], np.int64)
        loop.manual_total, loop.temperature = int(d["manual_total"]), float(d["temperature"])
        loop._x, loop._trained_at, loop.last_eval = None, -1, {}
        pd = d.get("proposal")
        if pd is not None:
            ints = ("batch", "predicted", "accepted", "queued", "deferred")
            pd = {k: (np.asarray(v, np.int64 if k in ints else np.float64) if isinstance(v, list) else v)
                  for k, v in pd.items()}
        loop.proposal = None if pd is None else Proposal(**pd)
        loop.queue = ReviewQueue.restore(storage, annotator=annotator) if pd is not None else None
        return loop


# ------------------------------------------------------------ simulation
class SimulatedAnnotator:
    """Answers every queued item from ground truth (benchmarks/tests only)."""

    def __init__(self, truth) -> None:
        self.truth = np.asarray(truth, np.int64)

    def review(self, queue: ReviewQueue) -> None:
        while queue.current is not None:
            it = queue.current
            k = int(self.truth[it.index])
            if k == it.predicted:
                queue.accept()
            else:
                queue.set_label(k)


def simulate(loop: SemiAutoLoop, truth, *, max_iterations: int | None = None) -> Job[list[dict]]:
    """Job: run the loop to the end with a :class:`SimulatedAnnotator`.

    Parameters
    ----------
    loop : SemiAutoLoop
    truth : array (N,)
        The true class of every image (the simulated annotator answers with it).
    max_iterations : int, optional

    Returns
    -------
    Job
        Returns the history: each record also gets ``auto_errors`` (accepted
        predictions that disagree with the truth), and a final record
        (``"final": True``) holds the last model's validation accuracy.
    """
    annotator = SimulatedAnnotator(truth)
    truth = annotator.truth
    n_batches = -(-len(loop.pool) // loop.config.batch_size) + 1
    step = 0
    while not loop.done and (max_iterations is None or step < max_iterations):
        p = yield from rescale(loop.run_iteration(), step, step + 1, n_batches)
        if p is None:
            break
        annotator.review(loop.queue)
        rec = loop.apply_review()
        rec["auto_errors"] = int(np.sum(truth[p.accepted] != p.predicted[np.isin(p.batch, p.accepted)]))
        step += 1
    ev = yield from rescale(loop.finish(), n_batches - 1, n_batches, n_batches)
    s = loop.state
    lab = s.labels >= 0
    final = {**ev, "final": True, "iteration": loop.iteration, "manual_total": loop.manual_total,
             "label_errors": int(np.sum((truth != s.labels) & lab & (s.source != "validation")))}
    loop.state.history.append(final)
    return loop.history


@checks_first
def random_baseline(loop: SemiAutoLoop, classifier: Classifier,
                    rate: float = SemiAutoConfig.rate) -> Job[list[dict]]:
    """Job: what random sampling at ``rate`` would have given on the images labelled so far.

    A simulation for comparison plots: the labels the loop holds now
    (initial, reviewed and accepted) stand in for the ground truth, with the
    same D0, V and batch size.

    Parameters
    ----------
    loop : SemiAutoLoop
    classifier : Classifier
        A fresh classifier of the same kind.
    rate : float
        Fraction of each batch reviewed.

    Returns
    -------
    Job
        Returns the simulated history.
    """
    from dataclasses import replace

    s = loop.state
    known = np.flatnonzero(s.labels >= 0)
    truth = s.labels[known]
    src = s.source[known]
    init = np.where(src == "initial", truth, -1)
    val = np.flatnonzero(src == "validation")
    if (init >= 0).sum() == len(known) - len(val):
        raise ValueError("nothing labelled beyond D0 and V yet: run and review an iteration first")
    yield CHECKED
    x = loop._x[known] if loop._x is not None else None
    sub = ImageSet(loop.collection.images[known], [loop.collection.names[i] for i in known])
    clf = Precomputed(classifier, x) if x is not None else classifier
    sim = SemiAutoLoop(sub, loop.class_names, init, clf, config=replace(loop.config, strategy="random", rate=rate),
                       val_indices=val, val_labels=truth[val], allow_missing_classes=True)
    return (yield from simulate(sim, truth))
