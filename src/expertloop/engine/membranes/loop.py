"""The active-learning loop and its project folder.

A :class:`MembraneProject` keeps everything one target domain needs in a
folder, so a session can stop and resume (widget or script)::

    project.json          configuration, round, scores, current proposal
    target/image_NN.tif   target images (the pool the regions come from)
    target/labels_NN.tif  their labels: 0 unlabelled, 1 membrane, 2 not membrane
    validation/image_NN.tif, validation/truth_NN.tif   held-out images + truth (1/2)
    models/source.*       source-domain network
    models/target.*       current target network; models/round_NNN.* one per round
    journal.jsonl         one durable record per step (crash-safe)
    abundance.npz         cached abundance of the target windows
    proposal_prob.tif     P(membrane) of the pending proposal's image

A round: :meth:`MembraneProject.propose` (dense prediction of every target
image → uncertainty → region search with the cached abundance), the expert
corrects the labels inside the region (:func:`prefill_region` pre-fills them
with the prediction; :func:`simulated_expert` copies ground truth instead),
:meth:`MembraneProject.accept` merges them, :meth:`MembraneProject.retrain`
fine-tunes and scores the network on the validation images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.config import apply_values, param, validate
from expertloop.engine.jobs import CHECKED, Job, Progress, checks_first, rescale
from expertloop.engine.membranes import net as _net
from expertloop.engine.membranes import region as _region

PROJECT_FILE = "project.json"
PROJECT_VERSION = 2  # 2: the network's parameters nested under config['net']


@dataclass
class MembraneConfig:
    """Parameters of a membrane active-learning project (saved in project.json).

    Every parameter's default, range and help live here (see
    :mod:`expertloop.engine.config`); the widget's controls and the
    ``expertloop membranes loop`` flags are made from them. Parameters marked
    *fixed* (the architecture, what is transferred, the abundance clustering)
    cannot change once the project exists; the others may change between
    rounds (:meth:`MembraneProject.update_config`).
    """

    net: _net.NetConfig = field(default_factory=_net.NetConfig)
    k: int = param(3, help="layers copied from the source network", label="layers transferred",
                   min=0, max=6, fixed=True)
    mode: str = param("fine-tuned", help="copied layers are fine-tuned or kept frozen", label="transfer",
                      choices=("fine-tuned", "frozen"), fixed=True)
    lam: float = param(0.8, help="weight of the uncertainty against the abundance in the region objective",
                       label="λ (uncertainty weight)", min=0.0, max=1.0, step=0.05)
    max_windows: int = param(6, help="region size limit in windows (6 x 64² px ≈ the paper's 22k pixels)",
                             label="max windows per region", min=1, max=100)
    n_seeds: int = param(16, help="seed windows tried by the region search", min=1, max=1000,
                         widget=False)
    n_clusters: int | None = param(None, help="abundance clusters (None: sqrt(windows / 2))",
                                   min=2, max=1000, fixed=True, widget=False)
    downsample: int = param(4, help="downsampling of the windows before the abundance clustering",
                            min=1, max=16, fixed=True, widget=False)
    strategy: str = param("objective", help="region choice: the paper's objective or random regions "
                          "of the same size (control)", choices=("objective", "random"), cli=False)
    source_epochs: int = param(10, help="epochs of source-domain training", min=1, max=500)
    target_epochs: int = param(10, help="epochs of target training after the transfer (round 0)",
                               min=1, max=500)
    sampling: str = param("labels", help="target training pixels: class-balanced (the paper) or "
                          "in the proportions the expert labelled them", choices=("balanced", "labels"),
                          widget=False)
    ema: float = param(0.98, help="target training ends with the moving average of the weights "
                       "(decay per step; 0: the last step's weights)", min=0.0, max=0.999, widget=False)
    mc_samples: int = param(0, help="Monte Carlo dropout passes for the uncertainty of a proposal "
                            "(0: one deterministic pass)", min=0, max=64, widget=False)
    round_epochs: int = param(5, help="epochs of fine-tuning after each accepted region", min=1, max=500)
    samples_per_epoch: int = param(4096, help="windows drawn per epoch", min=64, max=1_000_000,
                                   step=64, widget=False)
    batch_size: int = param(64, help="windows per training batch", min=1, max=4096, widget=False)
    optimizer: str = param("adam", help="optimizer (the paper: sgd with lr 1e-2, momentum 0.9)",
                           choices=("adam", "sgd"), widget=False)
    lr: float = param(1e-3, help="learning rate", min=1e-6, max=1.0, widget=False)
    tile: int = param(256, help="tile side of the dense prediction (memory use; results do not depend on it)",
                      min=32, max=8192, unit="px", widget=False)
    seed: int = param(0, help="random seed", min=0, max=2**31 - 1, widget=False)
    device: str | None = param(None, help="cpu, cuda or mps (None: automatic)", widget=False)

    def __post_init__(self) -> None:
        if isinstance(self.net, dict):
            self.net = _net.NetConfig.from_dict(self.net)
        validate(self)

    @property
    def window(self) -> int:
        """The window side (the network's)."""
        return self.net.window

    def net_config(self) -> _net.NetConfig:
        return self.net

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["net"] = self.net.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MembraneConfig:
        """From :meth:`to_dict`'s form, or the flat form of version-1 project
        files (``window``, ``channels``, ``hidden``, ``dropout`` at the top)."""
        d = dict(d)
        flat = {k: d.pop(k) for k in ("window", "channels", "hidden", "dropout") if k in d}
        if "net" not in d and flat:
            d["net"] = _net.NetConfig(**flat)
        elif isinstance(d.get("net"), dict):
            d["net"] = _net.NetConfig.from_dict(d["net"])
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# ----------------------------------------------------------------- label helpers
def prefill_region(labels: Any, prob: Any, mask: Any) -> np.ndarray:
    """Pre-fill a region with the current prediction, so the expert only corrects mistakes.

    Parameters
    ----------
    labels : array (H, W)
        The image's labels (0 unlabelled, 1 membrane, 2 not membrane).
    prob : array (H, W)
        P(membrane) of the current network.
    mask : bool array (H, W)
        The region (e.g. ``project.proposal.mask(shape)``).

    Returns
    -------
    numpy.ndarray
        A copy of ``labels`` whose unlabelled pixels inside ``mask`` hold the
        prediction (1 where ``prob > 0.5``, else 2).
    """
    lab = np.array(labels, np.uint8, copy=True)
    m = np.asarray(mask, bool) & (lab == _net.UNLABELLED)
    pred = np.where(np.asarray(prob) > 0.5, _net.MEMBRANE, _net.BACKGROUND).astype(np.uint8)
    lab[m] = pred[m]
    return lab


def simulated_expert(labels: Any, truth: Any, mask: Any) -> np.ndarray:
    """A simulated expert: copies the ground truth inside ``mask``.

    Parameters
    ----------
    labels : array (H, W)
        The image's current labels.
    truth : array (H, W)
        Ground truth as 1 (membrane) / 2 (not), e.g. from :func:`membrane_labels`.
    mask : bool array (H, W)
        The region the expert labels.

    Returns
    -------
    numpy.ndarray
        A copy of ``labels`` with ``truth`` inside ``mask``.
    """
    lab = np.array(labels, np.uint8, copy=True)
    t = np.asarray(truth)
    if t.shape != lab.shape:
        raise ValueError(f"truth {t.shape} and labels {lab.shape} differ in shape")
    m = np.asarray(mask, bool)
    lab[m] = t[m]
    return lab


def f_score(prob_maps: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> dict[str, float]:
    """Pixel precision, recall and F-score of ``P > 0.5`` against the truth.

    Parameters
    ----------
    prob_maps : sequence of arrays
        P(membrane) per image.
    truths : sequence of arrays
        Truth per image: 1 membrane, 2 not, 0 ignored.

    Returns
    -------
    dict
        ``{"f1", "precision", "recall"}``, pooled over all images.
    """
    from expertloop.engine.metrics import binary_scores

    preds, trues = [], []
    for p, t in zip(prob_maps, truths):
        t = np.asarray(t)
        keep = t != _net.UNLABELLED
        preds.append(np.asarray(p)[keep] > 0.5)
        trues.append(t[keep] == _net.MEMBRANE)
    s = binary_scores(np.concatenate(preds), np.concatenate(trues))
    return {"f1": s["f1"], "precision": s["precision"], "recall": s["recall"]}


def _write(path: Path, data: np.ndarray) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tifffile.imwrite(tmp, np.ascontiguousarray(data))
    os.replace(tmp, path)


def _read(path: Path) -> np.ndarray:
    import tifffile

    if not path.exists():
        raise FileNotFoundError(f"project file {path} is missing")
    return tifffile.imread(path)


# ----------------------------------------------------------------- the project
class MembraneProject:
    """A membrane active-learning project stored in ``folder`` (see module doc)."""

    def __init__(self, folder: str | os.PathLike, state: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.state = state
        self.config = MembraneConfig.from_dict(state["config"])
        n_t, n_v = state["n_target"], state["n_validation"]
        self.target_images = [_read(self.folder / "target" / f"image_{i:02d}.tif") for i in range(n_t)]
        self.target_labels = [_read(self.folder / "target" / f"labels_{i:02d}.tif") for i in range(n_t)]
        self.val_images = [_read(self.folder / "validation" / f"image_{i:02d}.tif") for i in range(n_v)]
        self.val_truths = [_read(self.folder / "validation" / f"truth_{i:02d}.tif") for i in range(n_v)]
        self._model = None
        self._abundance = None

    # ------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        target_images: Sequence[Any],
        target_labels: Sequence[Any] | None = None,
        *,
        validation_images: Sequence[Any] = (),
        validation_truths: Sequence[Any] = (),
        config: MembraneConfig | None = None,
    ) -> MembraneProject:
        """Start a project in ``folder`` (which must not hold one yet).

        Parameters
        ----------
        folder : path
            The project folder (created).
        target_images : sequence of 2D arrays
            The target domain's images: the pool regions are proposed from.
        target_labels : sequence of 2D arrays, optional
            Their first labels, 0 unlabelled / 1 membrane / 2 not (None: none yet).
        validation_images, validation_truths : sequences of 2D arrays, optional
            Held-out images and their 1/2 truth (see :func:`membrane_labels`),
            scored after every training.
        config : MembraneConfig, optional
            The parameters (default: ``MembraneConfig()``), saved in ``project.json``.

        Returns
        -------
        MembraneProject
        """
        folder = Path(folder)
        if (folder / PROJECT_FILE).exists():
            raise FileExistsError(f"{folder} already holds a membrane project: open it instead")
        config = config or MembraneConfig()
        imgs = [_net.as_image(im, "target image") for im in target_images]
        if not imgs:
            raise ValueError("a project needs at least one target image")
        if len({im.dtype for im in imgs}) > 1:
            raise ValueError("all target images must have the same dtype")
        for im in imgs:
            _net.check_window_fits(im, config.window, "target image")
        labs = ([np.zeros(im.shape, np.uint8) for im in imgs] if target_labels is None
                else [_net.check_labels(lab, im, "target labels") for lab, im in zip(target_labels, imgs)])
        if len(labs) != len(imgs):
            raise ValueError(f"{len(imgs)} target images but {len(labs)} label images")
        vimgs = [_net.as_image(im, "validation image") for im in validation_images]
        vtru = [_net.check_labels(t, im, "validation truth") for t, im in zip(validation_truths, vimgs)]
        if len(vimgs) != len(vtru):
            raise ValueError(f"{len(vimgs)} validation images but {len(vtru)} truth images")
        for im in vimgs:
            _net.check_window_fits(im, config.window, "validation image")
        folder.mkdir(parents=True, exist_ok=True)
        for i, (im, lab) in enumerate(zip(imgs, labs)):
            _write(folder / "target" / f"image_{i:02d}.tif", im)
            _write(folder / "target" / f"labels_{i:02d}.tif", lab)
        for i, (im, t) in enumerate(zip(vimgs, vtru)):
            _write(folder / "validation" / f"image_{i:02d}.tif", im)
            _write(folder / "validation" / f"truth_{i:02d}.tif", t)
        state = {"format": "expertloop-membranes-project", "version": PROJECT_VERSION,
                 "config": config.to_dict(), "n_target": len(imgs), "n_validation": len(vimgs),
                 "round": -1, "scores": [], "proposal": None, "regions": [], "stage": "created"}
        project = cls(folder, state)
        project.save()
        project.log({"event": "created", "n_target": len(imgs), "n_validation": len(vimgs)})
        return project

    @classmethod
    def open(cls, folder: str | os.PathLike) -> MembraneProject:
        """Open the project saved in ``folder`` (images, labels, config, round, scores, proposal).

        Parameters
        ----------
        folder : path
            A folder made by :meth:`create`.

        Returns
        -------
        MembraneProject
        """
        folder = Path(folder)
        path = folder / PROJECT_FILE
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not a membrane project (no {PROJECT_FILE})")
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if state.get("format") != "expertloop-membranes-project":
            raise ValueError(f"{path} is not a membrane project file")
        if int(state.get("version", 0)) > PROJECT_VERSION:
            raise ValueError(f"{path} was written by a newer expertloop")
        return cls(folder, state)

    def update_config(self, values: dict[str, Any], *, source: str = "user") -> dict[str, tuple[Any, Any]]:
        """Change some parameters of the project; the change is saved and journalled.

        Parameters
        ----------
        values : dict
            ``{name: value}`` of :class:`MembraneConfig` parameters (None values are skipped).
        source : str
            Who asked (recorded in the journal), e.g. "widget" or "command line".

        Returns
        -------
        dict
            ``{name: (old, new)}`` of what changed.

        Raises
        ------
        FixedParameterError
            For a parameter fixed at creation (architecture, transfer, abundance).
        """
        config, changes = apply_values(self.config, values)
        if changes:
            self.config = config
            self.state["config"] = config.to_dict()
            self.save()
            self.log({"event": "config changed", "source": source,
                      "changes": {k: {"from": a, "to": b} for k, (a, b) in changes.items()}})
        return changes

    def save(self) -> None:
        path = self.folder / PROJECT_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state, indent=2), encoding="utf-8")
        os.replace(tmp, path)

    def log(self, record: dict[str, Any]) -> None:
        from expertloop.io.journal import Journal

        Journal(self.folder / "journal.jsonl").append(record)

    # ------------------------------------------------------------- properties
    @property
    def round(self) -> int:
        """-1 before the first target model, then 0 (transfer) and 1, 2, ... (rounds)."""
        return int(self.state["round"])

    @property
    def scores(self) -> list[dict[str, Any]]:
        return list(self.state["scores"])

    @property
    def proposal(self) -> _region.Region | None:
        p = self.state.get("proposal")
        return None if p is None else _region.Region.from_dict(p)

    @property
    def has_source(self) -> bool:
        return (self.folder / "models" / "source.json").exists()

    @property
    def has_target(self) -> bool:
        """A target network exists (after the transfer step)."""
        return (self.folder / "models" / "target.json").exists()

    @property
    def model(self):
        """The current target network (loaded lazily), or None before transfer."""
        if self._model is None and (self.folder / "models" / "target.json").exists():
            from expertloop.engine.device import select_device

            self._model, _ = _net.load_net(self.folder / "models" / "target")
            # on the project's device, so a resumed project predicts where it trains
            self._model.to(select_device(self.config.device))
        return self._model

    def source_model(self):
        if not self.has_source:
            raise FileNotFoundError("the project has no source model yet: train or load one")
        return _net.load_net(self.folder / "models" / "source")[0]

    # ------------------------------------------------------------- steps
    def set_source_model(self, model) -> None:
        """Use an existing (e.g. loaded) source network; architecture must match."""
        cfg = self.config.net_config()
        if model.config != cfg:
            raise ValueError(f"the source network {model.config} differs from the project's {cfg}")
        _net.save_net(self.folder / "models" / "source", model, kind="source")
        self.state["stage"] = "source"
        self.save()
        self.log({"event": "source model set"})

    @checks_first
    def train_source(self, images: Sequence[Any], labels: Sequence[Any]) -> Job[Any]:
        """Job: train the source-domain network.

        Parameters
        ----------
        images : sequence of 2D arrays
            Source-domain images (same dtype as the target images).
        labels : sequence of 2D arrays
            Their labels, 0 unlabelled / 1 membrane / 2 not.

        Returns
        -------
        Job
            Returns the trained network (also saved as the project's source model).
        """
        _net.check_domains(images, self.target_images)
        yield CHECKED
        c = self.config
        model = _net.build_net(c.net_config(), seed=c.seed)
        hist = yield from _net.train_net(
            model, images, labels, epochs=c.source_epochs, samples_per_epoch=c.samples_per_epoch,
            batch_size=c.batch_size, optimizer=c.optimizer, lr=c.lr, seed=c.seed, device=c.device,
            desc="source training")
        self.set_source_model(model)
        self.log({"event": "source trained", "history": hist.epochs})
        return model

    @checks_first
    def transfer(self) -> Job[dict[str, Any]]:
        """Job: round 0. Copy the first ``k`` layers of the source network into a
        new target network, train it on the target labels, score it.

        Returns
        -------
        Job
            Returns the round's record (``round``, ``labelled_pixels``, ``loss``
            and, with validation images, ``f1``, ``precision``, ``recall``).
        """
        if not self.has_source:
            raise FileNotFoundError("the project has no source model yet: train or load one")
        self._labelled()  # raises when there is nothing to train on
        yield CHECKED
        c = self.config
        src = self.source_model()
        model = _net.transfer(src, c.k, c.mode, seed=c.seed)
        return (yield from self._train_and_score(model, c.target_epochs, round_=0, desc="transfer"))

    def _labelled(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        pairs = [(im, lab) for im, lab in zip(self.target_images, self.target_labels) if lab.any()]
        if not pairs:
            raise ValueError("no target image has labels yet: label a few membranes (1) and "
                             "non-membrane pixels (2) first")
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def _train_and_score(self, model, epochs: int, *, round_: int, desc: str) -> Job[dict[str, Any]]:
        c = self.config
        imgs, labs = self._labelled()
        hist = yield from rescale(_net.train_net(
            model, imgs, labs, epochs=epochs, samples_per_epoch=c.samples_per_epoch,
            batch_size=c.batch_size, optimizer=c.optimizer, lr=c.lr, seed=c.seed + round_,
            device=c.device, desc=desc, sampling=c.sampling, ema=c.ema), 0, 80, 100)
        score = yield from rescale(self.evaluate(model), 80, 100, 100)
        _net.save_net(self.folder / "models" / f"round_{round_:03d}", model, kind="target",
                      extra={"round": round_})
        _net.save_net(self.folder / "models" / "target", model, kind="target", extra={"round": round_})
        self._model = model
        n_labelled = int(sum(np.count_nonzero(lab) for lab in self.target_labels))
        record = {"round": round_, "labelled_pixels": n_labelled, "loss": hist.last.get("loss"), **score}
        self.state["scores"] = [s for s in self.state["scores"] if s["round"] < round_] + [record]
        self.state["round"] = round_
        self.state["stage"] = "trained"
        self.save()
        self.log({"event": "trained", **record})
        return record

    def evaluate(self, model=None) -> Job[dict[str, float]]:
        """Job: F-score of the network on the validation images (empty dict if none)."""
        model = model or self.model
        if not self.val_images:
            return {}
        probs = []
        n = len(self.val_images)
        for i, im in enumerate(self.val_images):
            probs.append((yield from rescale(
                _net.predict_dense(model, im, tile=self.config.tile, desc="validation"),
                100 * i / n, 100 * (i + 1) / n, 100)))
        return f_score(probs, self.val_truths)

    def abundance(self) -> _region.Abundance:
        """Abundance of the target windows (computed once, cached in the folder)."""
        if self._abundance is None:
            path = self.folder / "abundance.npz"
            c = self.config
            if path.exists():
                z = np.load(path)
                n = len(self.target_images)
                self._abundance = _region.Abundance(
                    scores=[z[f"scores_{i}"] for i in range(n)],
                    clusters=[z[f"clusters_{i}"] for i in range(n)],
                    fractions=z["fractions"], window=int(z["window"]))
            else:
                a = _region.abundance(self.target_images, c.window, n_clusters=c.n_clusters,
                                      downsample=c.downsample)
                arrays = {f"scores_{i}": s for i, s in enumerate(a.scores)}
                arrays.update({f"clusters_{i}": s for i, s in enumerate(a.clusters)})
                tmp = path.with_name("abundance.tmp.npz")
                np.savez(tmp, fractions=a.fractions, window=a.window, **arrays)
                os.replace(tmp, path)
                self._abundance = a
        return self._abundance

    def free_windows(self) -> list[np.ndarray]:
        """Per target image, the grid windows without any labelled pixel."""
        w = self.config.window
        return [~_region.windows(lab > 0, w).any(axis=(2, 3)) for lab in self.target_labels]

    @checks_first
    def propose(self, *, strategy: str | None = None, n_windows: int | None = None) -> Job[dict[str, Any]]:
        """Job: propose the next region for the expert.

        Predicts every target image, searches the region (or draws a random
        one) and stores it as the current proposal.

        Parameters
        ----------
        strategy : {"objective", "random"}, optional
            Default: the config's.
        n_windows : int, optional
            Region size limit; default: the config's ``max_windows``.

        Returns
        -------
        Job
            Returns ``{"region", "prob", "uncertainty", "search_seconds"}`` for
            the region's image.
        """
        import time

        if not self.has_target:
            raise RuntimeError("no target network yet: run the transfer step first")
        c = self.config
        strategy = strategy or c.strategy
        if strategy not in ("objective", "random"):
            raise ValueError(f"strategy must be 'objective' or 'random', got {strategy!r}")
        yield CHECKED
        model = self.model
        if c.mc_samples:
            from expertloop.engine.seed import seed_everything

            seed_everything(c.seed + 2000 + max(self.round, 0))  # the same dropout masks on a rerun
        free = self.free_windows()
        probs = []
        n = len(self.target_images)
        for i, im in enumerate(self.target_images):
            if free[i].any():
                probs.append((yield from rescale(
                    _net.predict_dense(model, im, tile=c.tile, desc=f"target image {i + 1}/{n}",
                                       mc_samples=c.mc_samples),
                    90 * i / n, 90 * (i + 1) / n, 100)))
            else:
                probs.append(None)
        yield Progress(90, 100, "abundance of target windows")
        ab = self.abundance()
        yield Progress(95, 100, "searching the region")
        t0 = time.perf_counter()
        if strategy == "random":
            rng = np.random.default_rng(c.seed + 1000 + max(self.round, 0))
            reg = _region.random_region([f.shape for f in free], n_windows or c.max_windows, c.window,
                                        rng, allowed=free)
        else:
            f_maps = [(_region.window_uncertainty(p, c.window) if p is not None
                       else np.zeros(fr.shape)) for p, fr in zip(probs, free)]
            limit = n_windows or c.max_windows
            reg = _region.propose_region(f_maps, _region.bounded_abundance(ab.scores, limit), c.window,
                                         lam=c.lam, max_windows=limit,
                                         allowed=free, n_seeds=c.n_seeds)
        search_s = time.perf_counter() - t0
        reg.info["search_seconds"] = search_s
        prob = probs[reg.image]
        _write(self.folder / "proposal_prob.tif", prob.astype(np.float32))  # to resume the round
        self.state["proposal"] = reg.to_dict()
        self.state["stage"] = "proposed"
        self.save()
        self.log({"event": "proposed", "round": self.round + 1, **reg.to_dict()})
        return {"region": reg, "prob": prob, "uncertainty": _region.uncertainty_map(prob),
                "search_seconds": search_s}

    def proposal_prob(self) -> np.ndarray | None:
        """P(membrane) of the proposal's image when it was proposed (None if no proposal)."""
        if self.proposal is None or not (self.folder / "proposal_prob.tif").exists():
            return None
        return _read(self.folder / "proposal_prob.tif")

    def accept(self, labels: Any) -> int:
        """Merge the expert's labels of the proposal's image, inside the region only.

        Parameters
        ----------
        labels : array (H, W)
            The corrected labels of the proposal's image (pixels left 0 stay unlabelled).

        Returns
        -------
        int
            The number of labelled pixels taken.
        """
        reg = self.proposal
        if reg is None:
            raise RuntimeError("there is no proposed region to accept")
        cur = self.target_labels[reg.image]
        lab = _net.check_labels(labels, cur, "corrected labels")
        mask = reg.mask(cur.shape) & (lab > 0)
        if not mask.any():
            raise ValueError("the region holds no labels: label membranes (1) and the rest (2) inside it")
        new = cur.copy()
        new[mask] = lab[mask]
        _write(self.folder / "target" / f"labels_{reg.image:02d}.tif", new)
        self.target_labels[reg.image] = new
        self.state["regions"].append(reg.to_dict())
        self.state["proposal"] = None
        self.state["stage"] = "accepted"
        self.save()
        self.log({"event": "accepted", "image": reg.image, "pixels": int(mask.sum())})
        return int(mask.sum())

    @checks_first
    def retrain(self) -> Job[dict[str, Any]]:
        """Job: fine-tune the current network on all target labels and score it (the next round).

        Returns
        -------
        Job
            Returns the round's record, as :meth:`transfer`.
        """
        if not self.has_target:
            raise RuntimeError("no target network yet: run the transfer step first")
        self._labelled()
        yield CHECKED
        model = self.model
        r = self.round + 1
        return (yield from self._train_and_score(model, self.config.round_epochs, round_=r,
                                                 desc=f"round {r}"))


@checks_first
def simulated_round(project: MembraneProject, truths: Sequence[Any], *, strategy: str | None = None
                    ) -> Job[dict[str, Any]]:
    """Job: one round with a simulated expert: propose, copy the truth inside the region, retrain.

    Parameters
    ----------
    project : MembraneProject
    truths : sequence of 2D arrays
        1/2 truth per target image.
    strategy : {"objective", "random", "none"}, optional
        None: the project's; "none": no region, retrain on the labels already
        there (the no-active-learning control).

    Returns
    -------
    Job
        Returns the round's record, with ``region`` (a dict, or None for "none").
    """
    if len(truths) != len(project.target_images):
        raise ValueError(f"need one truth per target image ({len(project.target_images)}), got {len(truths)}")
    if strategy not in (None, "objective", "random", "none"):
        raise ValueError(f"strategy must be 'objective', 'random' or 'none', got {strategy!r}")
    yield CHECKED
    region = None
    if strategy != "none":
        out = yield from rescale(project.propose(strategy=strategy), 0, 50, 100)
        reg = out["region"]
        t = np.asarray(truths[reg.image])
        project.accept(simulated_expert(project.target_labels[reg.image], t, reg.mask(t.shape)))
        region = reg.to_dict()
    rec = yield from rescale(project.retrain(), 0 if strategy == "none" else 50, 100, 100)
    return dict(rec, region=region)


@checks_first
def run_simulated_rounds(project: MembraneProject, truths: Sequence[Any], rounds: int,
                         *, strategy: str | None = None) -> Job[list[dict[str, Any]]]:
    """Job: ``rounds`` rounds of :func:`simulated_round` (the one round loop
    the command line, the benchmark and scripts share).

    Parameters
    ----------
    project : MembraneProject
    truths : sequence of 2D arrays
        1/2 truth per target image.
    rounds : int
        How many rounds to run.
    strategy : {"objective", "random", "none"}, optional
        As in :func:`simulated_round`.

    Returns
    -------
    Job
        Returns the list of the rounds' records.
    """
    if len(truths) != len(project.target_images):
        raise ValueError(f"need one truth per target image ({len(project.target_images)}), got {len(truths)}")
    yield CHECKED
    records = []
    for r in range(rounds):
        records.append((yield from rescale(simulated_round(project, truths, strategy=strategy),
                                           100 * r / rounds, 100 * (r + 1) / rounds, 100)))
    return records
