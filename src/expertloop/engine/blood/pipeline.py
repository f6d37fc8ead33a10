"""The whole pipeline: predict an image, train from annotated images."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from expertloop.engine.blood.model import (
    DETECTOR_BACKBONES,
    AbnormalClassifier,
    BloodModel,
    BloodSample,
    detect,
    region_features,
    train_detector,
    train_type_heads,
    type_probabilities,
)
from expertloop.engine.blood.regions import as_boxes
from expertloop.engine.config import param
from expertloop.engine.features import EMBEDDERS
from expertloop.engine.jobs import CHECKED, Job, Progress, checks_first, rescale


@dataclass
class BloodResult:
    """Regions found on one image, with per-type and abnormal probabilities."""

    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1
    scores: np.ndarray  # (N,) detector confidence
    labels: list[str]  # detector class per region
    type_probs: np.ndarray  # (N, T) independent probabilities
    abnormal: np.ndarray  # (N,) P(abnormal)
    type_names: list[str] = field(default_factory=list)
    image_shape: tuple = ()
    name: str = ""
    #: the types whose heads were trained (None: all); the others are never predicted
    trained_types: list[str] | None = None
    #: whether ``abnormal`` means anything (see :attr:`BloodModel.abnormal_trained`)
    abnormal_trained: bool = True

    def __len__(self) -> int:
        return len(self.boxes)

    def visible(self, score_threshold: float = BloodModel.score_threshold) -> np.ndarray:
        return self.scores >= score_threshold

    @property
    def untrained_types(self) -> list[str]:
        """Types whose heads were never trained: their probabilities mean nothing."""
        if self.trained_types is None:
            return []
        return [t for t in self.type_names if t not in self.trained_types]

    def predicted_types(self, type_threshold: float = BloodModel.type_threshold) -> list[list[str]]:
        """Trained types whose probability reaches ``type_threshold``, per region (multi-label)."""
        skip = set(self.untrained_types)
        return [[t for t, p in zip(self.type_names, row) if p >= type_threshold and t not in skip]
                for row in self.type_probs]

    def abnormal_flags(self, type_threshold: float = BloodModel.type_threshold, abnormal_threshold: float | None = None) -> np.ndarray:
        """Per region: abnormal (P(abnormal) reaches ``abnormal_threshold``, by
        default the type threshold); all False when nothing abnormal was trained."""
        thr = type_threshold if abnormal_threshold is None else abnormal_threshold
        if not self.abnormal_trained:
            return np.zeros(len(self), bool)
        return self.abnormal >= thr

    def table(self, score_threshold: float = 0.0, type_threshold: float = BloodModel.type_threshold,
              abnormal_threshold: float | None = None) -> dict[str, np.ndarray]:
        """Columns per visible region (for a napari features table or CSV)."""
        m = self.visible(score_threshold)
        types = self.predicted_types(type_threshold)
        cols = {
            "region": np.arange(len(self))[m],
            "x0": self.boxes[m, 0], "y0": self.boxes[m, 1], "x1": self.boxes[m, 2], "y1": self.boxes[m, 3],
            "score": self.scores[m], "class": np.array(self.labels, dtype=object)[m] if len(self) else np.zeros(0, object),
            "types": np.array(["+".join(t) for t in types], dtype=object)[m] if len(self) else np.zeros(0, object),
        }
        for j, t in enumerate(self.type_names):
            cols[f"p_{t}"] = self.type_probs[m, j]
        cols["abnormal_score"] = self.abnormal[m]
        cols["abnormal"] = self.abnormal_flags(type_threshold, abnormal_threshold)[m]
        return cols

    def summary(self, score_threshold: float = BloodModel.score_threshold,
                type_threshold: float = BloodModel.type_threshold,
                abnormal_threshold: float | None = None) -> dict:
        """Image-level counts of the visible regions: regions, multi-type
        regions, regions per trained type, abnormal regions (the same
        thresholds as :meth:`table`, so the counts match its rows)."""
        m = self.visible(score_threshold)
        types = [t for t, k in zip(self.predicted_types(type_threshold), m) if k]
        skip = set(self.untrained_types)
        return {
            "regions": int(m.sum()),
            "per_class": {c: int(sum(1 for lab, k in zip(self.labels, m) if k and lab == c))
                          for c in dict.fromkeys(self.labels)},
            "per_type": {t: int(sum(t in ts for ts in types)) for t in self.type_names if t not in skip},
            "multi_type_regions": int(sum(len(ts) > 1 for ts in types)),
            "abnormal_regions": int(self.abnormal_flags(type_threshold, abnormal_threshold)[m].sum()),
            "untrained_types": list(self.untrained_types),
            "abnormal_trained": bool(self.abnormal_trained),
        }


def classify_regions(model: BloodModel, image, boxes) -> Job[tuple[np.ndarray, np.ndarray]]:
    """Job: ``(type_probs, abnormal)`` for given region boxes on ``image``."""
    feats = yield from region_features(model, image, boxes)
    probs = type_probabilities(model, feats)
    return probs, model.abnormal_scores(probs)


def predict_image(model: BloodModel, image, *, score_threshold: float | None = None, name: str = "",
                  device=None) -> Job[BloodResult]:
    """Job: detect regions and classify each.

    Parameters
    ----------
    model : BloodModel
    image : array
    score_threshold : float, optional
        Keep regions down to this detector score; by default the model's
        ``candidate_floor`` (low, so the shown ``score_threshold`` can be raised
        or lowered later without re-running).

    Returns
    -------
    BloodResult
    """
    img = np.asarray(image)
    floor = model.candidate_floor if score_threshold is None else float(score_threshold)
    det = yield from rescale(detect(model, img, score_threshold=floor, device=device), 0, 60, 100)
    probs, abn = yield from rescale(classify_regions(model, img, det["boxes"]), 60, 100, 100)
    yield Progress(100, 100, f"{len(det['boxes'])} regions")
    return BloodResult(det["boxes"], det["scores"], det["labels"], probs, abn, list(model.type_names),
                       tuple(img.shape[:2]), name, list(model.trained_types), model.abnormal_trained)


def predict_images(model: BloodModel, images: Sequence, *, names: Sequence[str] | None = None,
                   score_threshold: float | None = None, device=None) -> Job[list[BloodResult]]:
    """Job: :func:`predict_image` over several images (a stack or a folder's files).

    Parameters
    ----------
    model : BloodModel
    images : sequence
        Arrays, or callables returning one (read lazily, one at a time).
    names : sequence of str, optional
        The images' names in the results (default: their index).
    score_threshold : float, optional
        The detector's floor (default: the model's ``candidate_floor``).
    device : str, optional

    Returns
    -------
    Job
        Returns one :class:`BloodResult` per image.
    """
    out = []
    n = len(images)
    for i, im in enumerate(images):
        nm = names[i] if names else str(i)
        arr = im() if callable(im) else im
        res = yield from rescale(predict_image(model, arr, score_threshold=score_threshold, name=nm,
                                               device=device), i * 100, (i + 1) * 100, n * 100)
        out.append(res)
    return out


def image_names(files: Sequence) -> list[str]:
    """The name written for each image in the blood CSV/COCO tables: the file
    name, or, where two inputs share a file name (``x/img.png``, ``y/img.png``),
    the path relative to the folder all inputs have in common, so no two rows
    of different images can be told apart only by their order."""
    import os
    from pathlib import Path

    names = [Path(f).name for f in files]
    if len(set(names)) == len(names):
        return names
    full = [Path(f).resolve() for f in files]
    root = Path(os.path.commonpath([p.parent for p in full]))
    return [p.relative_to(root).as_posix() for p in full]


@dataclass
class FolderPrediction:
    """What :func:`predict_folder` did: the batch report (one outcome per
    image) and the merged tables it wrote."""

    report: Any  # expertloop.engine.batch.BatchReport
    written: list = field(default_factory=list)  # paths of regions.csv / regions_coco.json

    def summary(self) -> str:
        return self.report.summary()


@checks_first
def predict_folder(model, files: Sequence, out_dir, *, thresholds: dict | None = None,
                   formats: Sequence[str] = ("csv", "coco"), device=None, skip_existing: bool = False,
                   client=None, scheduler: str | None = None, workers: int | None = None,
                   processes: bool = True, scheduler_timeout: float = 10.0) -> Job[FolderPrediction]:
    """Job: detect and classify cells in many images: what ``expertloop blood
    predict`` and the widget's folder batch both run.

    The images run through :func:`expertloop.engine.batch.run_batch` (the
    :func:`~expertloop.engine.batch_tasks.blood_predict` step): each image's
    regions go to ``out_dir/per_image/<name>.regions.csv`` and ``.coco.json``
    as soon as it is done; ``out_dir/regions.csv`` and
    ``out_dir/regions_coco.json`` are merged from them at the end. A failed
    image is listed in the report and does not stop the others.

    Parameters
    ----------
    model : BloodModel or path
        A model in memory is saved (a snapshot, in ``out_dir``, removed at the
        end) so the workers can load it; a path is loaded by each worker.
    files : sequence of paths
        The images (see :func:`~expertloop.engine.batch.expand_inputs` for folders and globs).
    out_dir : path
        Created if needed.
    thresholds : dict, optional
        ``candidate_floor``, ``score_threshold``, ``type_threshold`` to use
        (absent ones: the model's). For a model in memory the default is
        its :meth:`~BloodModel.thresholds`.
    formats : sequence of {"csv", "coco"}
        The merged tables to write.
    device, skip_existing, client, scheduler, workers, processes, scheduler_timeout
        Where and how the images run: see :func:`~expertloop.engine.batch.run_batch`
        (``workers=0``: one after another in this process).

    Returns
    -------
    Job
        Returns a :class:`FolderPrediction`.
    """
    import uuid
    from pathlib import Path

    from expertloop.engine.batch import check_output_folder, run_batch
    from expertloop.engine.batch_tasks import OUTPUTS, blood_predict
    from expertloop.engine.blood.model import THRESHOLDS, save_blood_model
    from expertloop.io.blood_formats import merge_coco, merge_csv

    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no images to detect in")
    bad = sorted(set(formats) - {"csv", "coco"})
    if bad:
        raise ValueError(f"unknown formats {bad}: choose csv and/or coco")
    in_memory = isinstance(model, BloodModel)
    thresholds = {**(model.thresholds() if in_memory else {}), **(thresholds or {})}
    unknown = sorted(set(thresholds) - set(THRESHOLDS))
    if unknown:
        raise ValueError(f"unknown thresholds {unknown}; choose among {THRESHOLDS}")
    out = check_output_folder(out_dir)
    params = {"model": None if in_memory else str(model), "device": device, "thresholds": thresholds,
              "display_names": dict(zip(map(str, files), image_names(files)))}
    snapshot = out / f".model-{uuid.uuid4().hex[:10]}" if in_memory else None
    job = run_batch(blood_predict, files, out / "per_image", OUTPUTS["blood"], params,
                    skip_existing=skip_existing, client=client, scheduler=scheduler, workers=workers,
                    processes=processes, scheduler_timeout=scheduler_timeout)
    yield CHECKED
    try:
        if snapshot is not None:
            yield Progress(0, len(files), "saving the model for the workers")
            params["model"] = str(save_blood_model(snapshot, model))
        report = yield from job
    finally:
        job.close()
        if snapshot is not None:
            for p in (snapshot.with_suffix(".pt"), snapshot.with_suffix(".json")):
                p.unlink(missing_ok=True)
    ok = [o for o in report.outcomes if o.ok]
    written = []
    if "csv" in formats:
        written.append(merge_csv([o.outputs[0] for o in ok], out / "regions.csv"))
    if "coco" in formats:
        written.append(merge_coco([o.outputs[1] for o in ok], out / "regions_coco.json"))
    return FolderPrediction(report, written)


@dataclass
class BloodTraining:
    """Training parameters of a blood model (the widget's and ``blood train``'s)."""

    detector: str = param(BloodModel.det_backbone, help="detector backbone of a new model",
                          label="new: detector", choices=tuple(DETECTOR_BACKBONES))
    embedder: str = param(BloodModel.embedder_name, help="feature network of the type heads of a new model",
                          label="new: features", choices=tuple(EMBEDDERS))
    det_epochs: int = param(20, help="detector fine-tuning epochs (0: train the type heads only)",
                            label="detector epochs", min=0, max=1000)
    head_epochs: int = param(60, help="type-head training epochs", label="type-head epochs", min=1, max=5000)
    min_size: int = param(BloodModel.min_size, help="shorter image side the detector works at (longer: 4/3 of it)",
                          min=64, max=4096, unit="px", widget=False)
    time_limit: float | None = param(None, help="seconds of detector training at most (None: no limit)",
                                     min=1.0, max=1e6, unit="s", widget=False)


def train_blood_model(model: BloodModel, samples: Sequence[BloodSample], *,
                      det_epochs: int = BloodTraining.det_epochs,
                      head_epochs: int = BloodTraining.head_epochs, batch_size: int = 2, lr: float = 0.005,
                      train_detector_too: bool = True, fit_abnormal: bool = True, seed: int | None = 0,
                      time_limit: float | None = None, device=None) -> Job[dict]:
    """Job: train (fine-tune) detector, per-type heads and abnormal classifier.

    The heads learn from the annotated regions (ground-truth boxes) with a
    type set; regions without types only train the detector.

    Parameters
    ----------
    model : BloodModel
        Trained in place.
    samples : sequence of BloodSample
        Images with boxes, detector labels and type sets.
    det_epochs, head_epochs : int
        Detector and type-head epochs (defaults: :class:`BloodTraining`'s).
    batch_size, lr : int, float
        Detector batch size and learning rate.
    train_detector_too : bool
        False: train the heads only.
    fit_abnormal : bool
        Fit the abnormal classifier on the heads' outputs.
    seed : int, optional
    time_limit : float, optional
        Seconds of detector training at most.
    device : str, optional

    Returns
    -------
    Job
        Returns the training history ``{"detector": losses, "heads": losses}``.
    """
    samples = [s.checked() for s in samples]
    if not any(len(s.boxes) for s in samples):
        raise ValueError("the annotations hold no boxes (nothing to train on)")
    hist: dict = {"detector": [], "heads": []}
    if train_detector_too and det_epochs > 0:
        hist["detector"] = yield from rescale(
            train_detector(model, samples, epochs=det_epochs, batch_size=batch_size, lr=lr, seed=seed,
                           time_limit=time_limit, device=device), 0, 70, 100)
    feats, sets = [], []
    for i, s in enumerate(samples):
        keep = [k for k, t in enumerate(s.types) if t]
        if keep:
            f = yield from rescale(region_features(model, s.image, s.boxes[keep], device=device),
                                   70 + 20 * i // len(samples), 70 + 20 * (i + 1) // len(samples), 100)
            feats.append(f)
            sets.extend(s.types[k] for k in keep)
    if sets:
        x = np.concatenate(feats)
        hist["heads"] = yield from rescale(train_type_heads(model, x, sets, epochs=head_epochs, seed=seed,
                                                            device=device), 90, 98, 100)
        if fit_abnormal:
            probs = type_probabilities(model, x)
            y = [bool(set(ts) & set(model.abnormal_types)) for ts in sets]
            try:
                model.abnormal = AbnormalClassifier.fit(probs, y, seed=seed)
            except ValueError as exc:
                warnings.warn(f"abnormal classifier not trained ({exc}); the abnormal score is the "
                              "highest abnormal-type probability", UserWarning, stacklevel=2)
    elif model.type_names:
        warnings.warn("no region has a cell type: only the detector was trained", UserWarning, stacklevel=2)
    yield Progress(100, 100, "trained")
    return hist


def parse_types(value) -> frozenset:
    """A region's type set from a table cell: ``"Echinocyte+Granular"`` (or , ;
    separated) -> ``frozenset({"Echinocyte", "Granular"})``; empty/None/NaN -> no type."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return frozenset()
    return frozenset(t.strip() for t in re.split(r"[+,;]", str(value)) if t.strip())


def sample_from_rectangles(image, rectangles, *, types=None, classes=None,
                           det_classes: Sequence[str] = ("cell",), name: str = "") -> BloodSample:
    """A training sample from drawn rectangles (e.g. a napari Shapes layer's data and features).

    Parameters
    ----------
    image : array (H, W[, 3])
    rectangles : sequence of arrays (n_vertices, >= 2)
        Each shape's vertices, the last two columns (y, x); its bounding box is used.
    types : sequence, optional
        Per shape, its types as text (see :func:`parse_types`); None: no types.
    classes : sequence of str, optional
        Per shape, its detector class. None: the only detector class, or, with
        several, the shape's single type when that is a detector class.
    det_classes : sequence of str
        The detector's classes.
    name : str

    Returns
    -------
    BloodSample
    """
    if not len(rectangles):
        raise ValueError(f"{name or 'the annotations'}: no shapes")
    boxes = np.array([[s[:, -1].min(), s[:, -2].min(), s[:, -1].max(), s[:, -2].max()]
                      for s in map(np.asarray, rectangles)])
    n = len(boxes)
    type_sets = [parse_types(v) for v in types] if types is not None else [frozenset()] * n
    det_classes = list(det_classes)
    if classes is not None:
        labels = [str(c) for c in classes]
    elif len(det_classes) == 1:
        labels = [det_classes[0]] * n
    else:
        labels = [next(iter(t)) if len(t) == 1 and next(iter(t)) in det_classes else None for t in type_sets]
        if None in labels:
            raise ValueError(f"the detector has several classes {det_classes}: give each shape a 'class' feature")
    return BloodSample(np.asarray(image), boxes, labels, type_sets, name)


def samples_from_instances(image, instances, cell_types, *, name: str = "", connectivity: int = 2,
                           label: str = "cell") -> BloodSample:
    """A training sample from an instance mask: one region per connected component
    (the paper's BFS), with the set of its cells' types."""
    from expertloop.engine.blood.regions import mask_to_boxes

    r = mask_to_boxes(instances, connectivity=connectivity, cell_types=cell_types)
    return BloodSample(np.asarray(image), as_boxes(r.boxes), [label] * len(r), list(r.types), name)
