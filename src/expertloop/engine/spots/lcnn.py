"""The L-CNN spot detector: labelling latency as privileged information.

1. The positives' (cleaned) latencies are clustered with a GMM (``m`` by AIC).
2. A *source* CNN learns to tell these latency clusters apart (positives only).
3. The *target* CNN (spot vs non-spot) is initialised with the source's first
   ``transfer_layers`` conv layers (0..3), its FC layer re-initialised, and
   trained on all patches with class-balanced cross-entropy.

Controls (same API, ``method``): ``"cnn"`` (conventional CNN, random init, no
source), ``"random"`` (source trained on random cluster assignment with the
same cluster sizes). ``transfer_layers`` 1/2/3 gives the depth control.

The net (the paper's Fig. 9 shape): three 3x3 conv layers with ReLU and no
pooling (a 9x9 patch becomes 3x3), then one fully connected layer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.backend import get_torch
from expertloop.engine.config import param
from expertloop.engine.jobs import Job, Progress, rescale
from expertloop.engine.spots.candidates import (
    Candidates,
    extract_candidates,
    label_candidates,
)
from expertloop.engine.spots.latency import (
    clean_latencies,
    cluster_latencies,
    random_clusters,
)

METHODS = ("lcnn", "cnn", "random")
CONV_LAYERS = ("conv1", "conv2", "conv3")
WORKFLOW = "spots"


@dataclass
class SpotConfig:
    """Parameters of candidate extraction, labelling and training (paper defaults)."""

    method: str = param("lcnn", help="lcnn: latency clusters + transfer; cnn: random init; "
                        "random: random clusters (controls)", choices=METHODS)
    transfer_layers: int = param(3, help="conv layers copied from the latency-cluster source network",
                                 label="transfer layers", min=0, max=3, flag="--transfer")
    patch_size: int = 9
    tau: float = float(np.sqrt(2))
    pixels_per_superpixel: int = 25
    compactness: float = 0.1
    m_range: tuple = (5, 9)
    latency_threshold: float = param(45.0, help="clicks slower than this are not used as latencies",
                                     label="latency cap", min=1.0, max=3600.0, unit="s",
                                     flag="--latency-cap")
    channels: tuple = (16, 32, 32)
    source_epochs: int = param(30, help="epochs of the latency-cluster source network", min=1, max=500)
    target_epochs: int = param(8, help="epochs of the spot / background network", label="epochs",
                               min=1, max=200, flag="--epochs")
    max_negatives: int | None = param(20000, help="background candidates kept per scan at most",
                                      min=100, max=10_000_000)
    batch_size: int = 128
    lr: float = 1e-3
    seed: int | None = param(0, help="random seed", min=0, max=2**31 - 1, widget=False)

    def check(self) -> SpotConfig:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if not 0 <= int(self.transfer_layers) <= 3:
            raise ValueError("transfer_layers must be 0, 1, 2 or 3")
        if self.patch_size < 7 or self.patch_size % 2 == 0:
            raise ValueError("patch_size must be odd and at least 7 (three 3x3 convolutions)")
        if len(self.channels) != 3:
            raise ValueError("channels must give three conv widths")
        return self


def build_spotnet(n_classes: int, patch_size: int = 9, channels=(16, 32, 32)):
    """Three 3x3 conv layers (ReLU, no pooling) + one FC layer; logits out."""
    torch = get_torch()
    nn = torch.nn
    c1, c2, c3 = (int(c) for c in channels)
    side = patch_size - 6
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, c1, 3)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(c1, c2, 3)), ("relu2", nn.ReLU()),
        ("conv3", nn.Conv2d(c2, c3, 3)), ("relu3", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(c3 * side * side, int(n_classes))),
    ]))


def transfer_conv_layers(source, target, n: int) -> list[str]:
    """Copy the first ``n`` conv layers (weights and biases) of ``source`` into ``target``.

    Returns the names of the copied layers. The FC layer is never copied.
    """
    torch = get_torch()
    if not 0 <= n <= len(CONV_LAYERS):
        raise ValueError("n must be 0..3")
    names = list(CONV_LAYERS[:n])
    with torch.no_grad():
        for name in names:
            s, t = getattr(source, name), getattr(target, name)
            if s.weight.shape != t.weight.shape:
                raise ValueError(f"{name}: source {tuple(s.weight.shape)} != target {tuple(t.weight.shape)}")
            t.weight.copy_(s.weight.to(t.weight.device))
            t.bias.copy_(s.bias.to(t.bias.device))
    return names


@dataclass
class TrainingSet:
    """Candidates of one annotated scan with their labels and latencies."""

    candidates: Candidates
    y: np.ndarray          # (N,) 0/1
    latency: np.ndarray    # (N,) cleaned latency of positives, NaN for negatives
    name: str = "scan"
    n_clicks: int = 0      # clicks of the scan
    unmatched_clicks: int = 0  # clicks with no candidate centre within tau (they teach nothing)

    @property
    def n_positive(self) -> int:
        return int(self.y.sum())


def prepare_scan(image, clicks: dict, config: SpotConfig | None = None, *, name: str = "scan",
                 candidates: Candidates | None = None) -> Job[TrainingSet]:
    """Job: candidates of ``image`` labelled by a click table.

    Latencies are cleaned (threshold, first click of a session) before use.

    Parameters
    ----------
    image : array (Z, Y, X) or (Y, X)
        The annotated scan.
    clicks : dict
        A click table (``read_clicks`` / ``import_csv``): ``z``, ``y``, ``x``,
        and optionally ``latency_s``, ``first_in_session``.
    config : SpotConfig, optional
        Candidate and labelling parameters (default: ``SpotConfig()``).
    name : str
        The scan's name in messages.
    candidates : Candidates, optional
        Reuse candidates already extracted from ``image``.

    Returns
    -------
    Job
        Returns a :class:`TrainingSet` (candidates, 0/1 labels, latencies).
    """
    cfg = (config or SpotConfig()).check()
    if clicks is None or len(clicks.get("z", ())) == 0:
        raise ValueError(f"{name}: the image has no clicks; click at least two spots first")
    if candidates is None:
        candidates = yield from extract_candidates(
            image, patch_size=cfg.patch_size, pixels_per_superpixel=cfg.pixels_per_superpixel,
            compactness=cfg.compactness)
    pts = np.stack([np.asarray(clicks[c], np.float64) for c in ("z", "y", "x")], axis=1)
    shape = np.asarray(candidates.shape)
    outside = ((np.round(pts) < 0) | (np.round(pts) >= shape)).any(axis=1)
    if outside.any():
        raise ValueError(f"{name}: {int(outside.sum())} click(s) lie outside the image {tuple(shape)}, "
                         f"e.g. at {pts[outside][0].tolist()}")
    lat_raw = clicks.get("latency_s")
    lat = None
    if lat_raw is not None:
        lat = clean_latencies(lat_raw, clicks.get("first_in_session"), threshold=cfg.latency_threshold)
    y, latency, nearest = label_candidates(candidates.centers, pts, tau=cfg.tau, latency=lat)
    matched = len(np.unique(nearest[nearest >= 0]))
    return TrainingSet(candidates, y, latency, name, len(pts), len(pts) - matched)


@dataclass
class SpotDetector:
    """A trained target CNN with what is needed to apply it again."""

    model: Any
    config: SpotConfig
    info: dict = field(default_factory=dict)

    def save(self, path) -> Path:
        """Save as ``path.pt`` + ``path.json`` (weights, config, info).

        Parameters
        ----------
        path : path
            Without or with the ``.pt`` suffix.

        Returns
        -------
        pathlib.Path
            The ``.pt`` file written.
        """
        from expertloop.engine.persistence import save_model

        cfg = asdict(self.config)
        cfg["m_range"] = list(cfg["m_range"])
        cfg["channels"] = list(cfg["channels"])
        return save_model(path, self.model, workflow=WORKFLOW, class_names=["background", "spot"],
                          input_spec={"patch_size": self.config.patch_size, "channels": 1,
                                      "normalisation": "tissue 0.5..99.5 percentiles -> 0..1"},
                          extra={"config": cfg, "info": _jsonable(self.info)})

    @classmethod
    def load(cls, path) -> SpotDetector:
        """Load a detector saved by :meth:`save` (checked against its schema).

        Parameters
        ----------
        path : path
            The ``.pt`` file (or its name without suffix).

        Returns
        -------
        SpotDetector
        """
        from expertloop.engine.persistence import (
            ModelFileError,
            check_fields,
            load_model,
        )

        bundle = load_model(path, workflow=WORKFLOW)
        extra = check_fields(bundle.metadata.get("extra", {}), _EXTRA_SCHEMA, f"{path}: extra")
        raw = check_fields(extra.get("config", {}), _CONFIG_SCHEMA, f"{path}: extra.config")
        known = set(SpotConfig.__dataclass_fields__)
        cfg = SpotConfig(**{k: v for k, v in raw.items() if k in known})
        cfg.m_range, cfg.channels = tuple(cfg.m_range), tuple(cfg.channels)
        try:
            cfg.check()
        except ValueError as exc:
            raise ModelFileError(f"{path}: {exc}") from exc
        net = build_spotnet(2, cfg.patch_size, cfg.channels)
        try:
            net.load_state_dict(bundle.state)
        except (RuntimeError, KeyError) as exc:
            raise ModelFileError(f"{path}: weights do not fit the spot detector ({exc})") from exc
        net.eval()
        return cls(net, cfg, dict(extra.get("info", {})))


def _schemas():
    from expertloop.engine.persistence import Field

    extra = {"config": Field(dict, required=False), "info": Field(dict, required=False)}
    config = {
        "method": Field(str, max_len=20, required=False),
        "transfer_layers": Field(int, 0, 3, required=False),
        "patch_size": Field(int, 7, 255, required=False),
        "tau": Field(float, 0, 100, required=False),
        "pixels_per_superpixel": Field(int, 1, 10_000, required=False),
        "compactness": Field(float, 0, 1000, required=False),
        "m_range": Field(list, 1, 1000, item=int, max_len=2, required=False),
        "channels": Field(list, 1, 1024, item=int, max_len=3, required=False),
        "max_negatives": Field(int, 1, 10**8, required=False, nullable=True),
        "batch_size": Field(int, 1, 65536, required=False),
        "seed": Field(int, 0, 2**32, required=False, nullable=True),
    }
    return extra, config


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[str(k)] = _jsonable(v)
        elif isinstance(v, (np.integer, np.floating)):
            out[str(k)] = v.item()
        elif isinstance(v, np.ndarray):
            out[str(k)] = v.tolist()
        else:
            out[str(k)] = v
    return {str(k): v for k, v in out.items()}


def train_spot_detector(sets, config: SpotConfig | None = None, *, device=None) -> Job[SpotDetector]:
    """Job: train a spot detector (the L-CNN, or a control).

    Parameters
    ----------
    sets : sequence of TrainingSet
        From :func:`prepare_scan`, one per annotated scan.
    config : SpotConfig, optional
        Method, transfer, epochs, ... (default: ``SpotConfig()``).
    device : str, optional
        cpu, cuda or mps (None: automatic).

    Returns
    -------
    Job
        Returns the trained :class:`SpotDetector`.
    """
    from expertloop.engine.seed import seed_everything
    from expertloop.engine.training import fit_classifier

    cfg = (config or SpotConfig()).check()
    sets = [sets] if isinstance(sets, TrainingSet) else list(sets)
    if not sets:
        raise ValueError("no training scans")
    x = np.concatenate([s.candidates.patches for s in sets])
    y = np.concatenate([s.y for s in sets])
    lat = np.concatenate([s.latency for s in sets])
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("no candidate patch lies near a click: nothing to learn "
                         f"(tau = {cfg.tau:.2f} px; are the clicks on dark spots?)")
    if n_pos == len(y):
        raise ValueError("every candidate is a spot: there are no negatives to learn from")
    rng = seed_everything(cfg.seed) if cfg.seed is not None else np.random.default_rng()
    info: dict[str, Any] = {"method": cfg.method, "n_positive": n_pos, "n_candidates": int(len(y)),
                            "n_clicks": sum(s.n_clicks for s in sets),
                            "unmatched_clicks": sum(s.unmatched_clicks for s in sets)}
    target = build_spotnet(2, cfg.patch_size, cfg.channels)
    xs = x[:, None]
    use_source = cfg.method != "cnn" and cfg.transfer_layers > 0
    if use_source:
        pos_lat = lat[y == 1]
        if not np.all(np.isfinite(pos_lat)):
            raise ValueError("the clicks have no latencies: L-CNN needs timed clicks (use method='cnn')")
        clusters = cluster_latencies(pos_lat, cfg.m_range, seed=cfg.seed)
        if cfg.method == "random":
            clusters = random_clusters(clusters, seed=cfg.seed)
        info.update(n_clusters=clusters.m, aic={str(k): v for k, v in clusters.aic.items()},
                    cluster_means_s=clusters.means.tolist(), cluster_note=clusters.note)
        yield Progress(0, 100, f"{clusters.m} latency clusters")
        if clusters.m >= 2:
            source = build_spotnet(clusters.m, cfg.patch_size, cfg.channels)
            hist = yield from rescale(fit_classifier(
                source, xs[y == 1], clusters.labels, epochs=cfg.source_epochs,
                batch_size=min(cfg.batch_size, 64), lr=cfg.lr, class_weight="balanced",
                n_classes=clusters.m, seed=cfg.seed, device=device, desc="source CNN (latency clusters)"),
                0, 40, 100)
            info["source_loss"] = hist.last.get("loss")
            target.to(next(source.parameters()).device)
            info["transferred"] = transfer_conv_layers(source, target, cfg.transfer_layers)
        else:
            info["transferred"] = []
            info["cluster_note"] = (clusters.note + "; " if clusters.note else "") + \
                "one latency cluster: nothing to transfer, target starts from random init"
    else:
        info["transferred"] = []
    # class imbalance: subsample negatives, then balanced class weights
    neg = np.flatnonzero(y == 0)
    if cfg.max_negatives is not None and len(neg) > cfg.max_negatives:
        neg = rng.choice(neg, cfg.max_negatives, replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(y == 1), neg]))
    hist = yield from rescale(fit_classifier(
        target, xs[keep], y[keep], epochs=cfg.target_epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        class_weight="balanced", n_classes=2, seed=cfg.seed, device=device,
        desc="target CNN (spot vs non-spot)"), 40 if use_source else 0, 100, 100)
    info["target_loss"] = hist.last.get("loss")
    info["transfer_layers"] = cfg.transfer_layers if use_source else 0
    # calibration: class-balanced training makes the CNN's probabilities those of a scan with as
    # many spots as non-spots; the scan's own prior (spot patches among ALL its candidates) moves
    # them back (Bayes' rule), so that 0.5 means "as likely a spot as not" on a scan like this one
    info["prior_log_odds"] = float(np.log(n_pos / (len(y) - n_pos)))
    info["calibration"] = "class-balanced training, prior-corrected to the training scans' spot fraction"
    return SpotDetector(target, cfg, info)


def calibrate(probability: np.ndarray, prior_log_odds: float | None) -> np.ndarray:
    """Balanced-training probabilities -> probabilities under the prior ``exp(prior_log_odds)``.

    ``logit(p') = logit(p) + prior_log_odds`` (the balanced training's prior
    log-odds is 0). ``None`` (detectors saved before calibration existed)
    leaves ``p`` unchanged.
    """
    p = np.asarray(probability, np.float64)
    if prior_log_odds is None or p.size == 0:
        return np.asarray(probability, np.float32)
    eps = 1e-7
    q = np.clip(p, eps, 1 - eps)
    z = np.log(q) - np.log1p(-q) + float(prior_log_odds)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def predict_patches(detector: SpotDetector, patches: np.ndarray, *, batch_size: int = 4096) -> Job[np.ndarray]:
    """Job: spot probability of each patch ``(N, p, p)``, calibrated to the
    training scans' spot fraction (:func:`calibrate`)."""
    from expertloop.engine.training import predict_proba

    p = np.asarray(patches, np.float32)
    if len(p) == 0:
        return np.zeros(0, np.float32)
    if p.shape[1:] != (detector.config.patch_size,) * 2:
        raise ValueError(f"patches of shape {p.shape[1:]} do not fit a model trained on "
                         f"{detector.config.patch_size}x{detector.config.patch_size} patches")
    probs = yield from predict_proba(detector.model, p[:, None], batch_size=batch_size,
                                     desc="spot probabilities")
    return calibrate(probs[:, 1], detector.info.get("prior_log_odds"))


@dataclass
class SpotSelection:
    """Which detections are spots: what the threshold slider and ``spots detect`` set."""

    threshold: float = param(0.5, help="spot probability at least this", min=0.0, max=1.0, step=0.01,
                             control="FloatSlider")
    join_radius: float = param(2.0, help="2D detections in adjacent slices this close (in-plane) are one spot",
                               min=0.0, max=50.0, step=0.5, unit="px", widget=False)


@dataclass
class Detection:
    """Candidates of a volume with their spot probabilities."""

    candidates: Candidates
    probability: np.ndarray

    def spots(self, threshold: float | None = None, join_radius: float | None = None) -> dict[str, np.ndarray]:
        """The 3D spots; None: :class:`SpotSelection`'s default."""
        d = SpotSelection()
        return join_spots(self.candidates.centers, self.probability,
                          d.threshold if threshold is None else threshold,
                          d.join_radius if join_radius is None else join_radius)


def detect_spots(detector: SpotDetector, image, *, candidates: Candidates | None = None) -> Job[Detection]:
    """Job: candidate patches of ``image`` and their spot probabilities.

    Parameters
    ----------
    detector : SpotDetector
    image : array (Z, Y, X) or (Y, X)
    candidates : Candidates, optional
        Reuse candidates already extracted from ``image``.

    Returns
    -------
    Job
        Returns a :class:`Detection`; ``.spots(threshold, join_radius)`` gives the 3D spots.
    """
    cfg = detector.config
    if candidates is None:
        candidates = yield from rescale(extract_candidates(
            image, patch_size=cfg.patch_size, pixels_per_superpixel=cfg.pixels_per_superpixel,
            compactness=cfg.compactness), 0, 70, 100)
    probs = yield from rescale(predict_patches(detector, candidates.patches), 70, 100, 100)
    return Detection(candidates, probs)


def join_spots(centers, probability, threshold: float, join_radius: float) -> dict[str, np.ndarray]:
    """Join 2D detections (probability >= ``threshold``) into 3D spots.

    Detections on the same or neighbouring slices (``|dz| <= 1``) whose
    in-plane distance is at most ``join_radius`` px belong to the same spot
    (connected components). Each spot: ``points`` (probability-weighted
    centre z, y, x), ``probability`` (max), ``n_slices``, ``n_patches``,
    ``z_min``, ``z_max``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    c = np.asarray(centers, np.float64).reshape(-1, 3)
    p = np.asarray(probability, np.float64).ravel()
    if len(c) != len(p):
        raise ValueError("one probability per candidate is needed")
    sel = np.flatnonzero(p >= threshold)
    empty = {"points": np.zeros((0, 3)), "probability": np.zeros(0), "n_slices": np.zeros(0, np.int64),
             "n_patches": np.zeros(0, np.int64), "z_min": np.zeros(0, np.int64), "z_max": np.zeros(0, np.int64)}
    if len(sel) == 0:
        return empty
    cs, ps = c[sel], p[sel]
    pairs = cKDTree(cs).query_pairs(r=float(np.hypot(1.0, join_radius)), output_type="ndarray")
    if len(pairs):
        d = cs[pairs[:, 0]] - cs[pairs[:, 1]]
        ok = (np.abs(d[:, 0]) <= 1) & (np.hypot(d[:, 1], d[:, 2]) <= join_radius)
        pairs = pairs[ok]
    n = len(cs)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) \
        else coo_matrix((n, n))
    k, comp = connected_components(graph, directed=False)
    w = np.bincount(comp, weights=ps, minlength=k)
    pts = np.stack([np.bincount(comp, weights=ps * cs[:, i], minlength=k) / w for i in range(3)], axis=1)
    pmax = np.full(k, -np.inf)
    np.maximum.at(pmax, comp, ps)
    zmin = np.full(k, np.iinfo(np.int64).max)
    zmax = np.full(k, np.iinfo(np.int64).min)
    np.minimum.at(zmin, comp, cs[:, 0].astype(np.int64))
    np.maximum.at(zmax, comp, cs[:, 0].astype(np.int64))
    order = np.argsort(-pmax)
    return {"points": pts[order], "probability": pmax[order], "n_slices": (zmax - zmin + 1)[order],
            "n_patches": np.bincount(comp, minlength=k)[order], "z_min": zmin[order], "z_max": zmax[order]}


_EXTRA_SCHEMA, _CONFIG_SCHEMA = _schemas()
