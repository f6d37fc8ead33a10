"""'Blood cell detector' widget: detect, classify, review, train, export.

Thin: every computation is an engine job (``expertloop.engine.blood``) run
by the shared :class:`~expertloop.widgets._jobs.JobRunner`. The detections
become a Shapes layer of rectangles coloured by their most probable type,
with the types and probabilities as text and as the layer's features; the
score and type thresholds update the overlay, the table and the summary
live, without running the model again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    Table,
)

from expertloop.engine.blood.regions import PAPER_ABNORMAL, PAPER_TYPES
from expertloop.widgets._common import (
    ConfigControls,
    fit_dock,
    follow_layers,
    image_layer_choices,
    layer_array,
    layer_by_name,
    notify,
)
from expertloop.widgets._jobs import JobRunner

if TYPE_CHECKING:
    import napari

PALETTE = np.array([
    [0.12, 0.47, 0.71, 1], [1.0, 0.5, 0.05, 1], [0.17, 0.63, 0.17, 1], [0.84, 0.15, 0.16, 1],
    [0.58, 0.4, 0.74, 1], [0.55, 0.34, 0.29, 1], [0.89, 0.47, 0.76, 1], [0.5, 0.5, 0.5, 1],
    [0.74, 0.74, 0.13, 1], [0.09, 0.75, 0.81, 1],
])
NO_TYPE = np.array([0.85, 0.85, 0.85, 1.0])


def _names(text: str) -> list[str]:
    return [t.strip() for t in re.split(r"[,;]", text) if t.strip()]


def _annotation_choices(viewer) -> list[str]:
    from napari.layers import Labels, Shapes

    return [ly.name for ly in viewer.layers if isinstance(ly, (Shapes, Labels))]


def _plane(layer, viewer):
    """The 2D (grey or RGB) plane of ``layer`` shown now, at full resolution
    (level 0 of a multiscale layer), not read: a lazy (dask, zarr) layer is
    read by the job, in the worker thread."""
    data = layer_array(layer)[0]
    nd = data.ndim - (1 if getattr(layer, "rgb", False) else 0)
    if nd > 2:
        step = viewer.dims.current_step[-nd:-2] if viewer.dims.ndim >= nd else (0,) * (nd - 2)
        data = data[tuple(int(s) for s in step)]
    return data


class BloodWidget(Container):
    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.model = None
        self.result = None
        self._source = None
        self.layer = None
        # model
        self.model_file = FileEdit(label="model file", mode="r", filter="*.pt")
        self.load_btn = PushButton(text="Load model")
        from expertloop.engine.blood.model import BloodModel
        from expertloop.engine.blood.pipeline import BloodTraining

        # parameters from the engine's BloodTraining and BloodModel (defaults, ranges, help live there)
        new_model = ConfigControls(BloodTraining, ["detector", "embedder"])
        self.detector, self.embedder = new_model["detector"], new_model["embedder"]
        self.types = LineEdit(label="new: cell types", value=", ".join(PAPER_TYPES))
        self.abnormal_types = LineEdit(label="new: abnormal types", value=", ".join(PAPER_ABNORMAL))
        self.det_classes = LineEdit(label="new: detector classes", value="cell")
        self.pretrained = CheckBox(text="ImageNet weights (if available)", value=True)
        self.forget_btn = PushButton(text="New model (forget the one in use)", enabled=False)
        # detection
        self.image = ComboBox(label="image", choices=lambda _: image_layer_choices(viewer))
        self.detect_btn = PushButton(text="Detect cells")
        thresholds = ConfigControls(BloodModel, ["score_threshold", "type_threshold"])
        self.score, self.type_thr = thresholds["score_threshold"], thresholds["type_threshold"]
        self.summary = Label(value="no detection yet")
        self.table = Table(value={"region": []})
        # training
        self.annotations = ComboBox(label="annotations", choices=lambda _: _annotation_choices(viewer))
        self.type_feature = LineEdit(label="type feature", value="type")
        # a type for the rectangles selected in the annotation layer (the 'type feature' column)
        self.shape_type = ComboBox(label="type of selected", choices=lambda _: self._type_choices())
        self.set_type_btn = PushButton(text="Set type of selected")
        self.add_type_btn = PushButton(text="Add type to selected")
        training = ConfigControls(BloodTraining, ["det_epochs", "head_epochs"])
        self.det_epochs, self.head_epochs = training["det_epochs"], training["head_epochs"]
        self.train_btn = PushButton(text="Train / fine-tune")
        self.save_file = FileEdit(label="save model as", mode="w", filter="*.pt")
        self.save_btn = PushButton(text="Save model")
        # export
        self.export_file = FileEdit(label="export to", mode="w")
        self.csv_btn = PushButton(text="Export CSV")
        self.coco_btn = PushButton(text="Export COCO")
        # batch over a folder
        self.folder = FileEdit(label="batch folder", mode="d")
        from expertloop.engine.batch import BatchPlace

        self.batch_place = ConfigControls(BatchPlace)
        self.batch_btn = PushButton(text="Detect folder → CSV + COCO")
        self.runner = JobRunner()
        super().__init__(widgets=[
            self.model_file, self.load_btn, self.detector, self.embedder, self.types, self.abnormal_types,
            self.det_classes, self.pretrained, self.forget_btn, self.image, self.detect_btn, self.score, self.type_thr,
            self.summary, self.table, self.annotations, self.type_feature, self.shape_type, self.set_type_btn,
            self.add_type_btn, self.det_epochs, self.head_epochs,
            self.train_btn, self.save_file, self.save_btn, self.export_file, self.csv_btn, self.coco_btn,
            self.folder, *self.batch_place.widgets, self.batch_btn, self.runner,
        ])
        fit_dock(self)
        self.load_btn.changed.connect(self.load)
        self.forget_btn.changed.connect(self.forget_model)
        self.detect_btn.changed.connect(self.detect)
        self.train_btn.changed.connect(self.train)
        self.save_btn.changed.connect(self.save)
        self.csv_btn.changed.connect(self.export_csv)
        self.coco_btn.changed.connect(self.export_coco)
        self.batch_btn.changed.connect(self.detect_folder)
        self.set_type_btn.changed.connect(lambda *_: self.set_selected_type(replace=True))
        self.add_type_btn.changed.connect(lambda *_: self.set_selected_type(replace=False))
        self.types.changed.connect(self.shape_type.reset_choices)
        self.score.changed.connect(self.refresh)
        self.type_thr.changed.connect(self.refresh)
        follow_layers(viewer, self.image, self.annotations)

    # ------------------------------------------------------------ helpers
    def _new_model_kwargs(self) -> dict:
        types = _names(self.types.value)
        return dict(det_classes=_names(self.det_classes.value) or ["cell"], type_names=types,
                    abnormal_types=[t for t in _names(self.abnormal_types.value)],
                    det_backbone=self.detector.value, embedder=self.embedder.value,
                    pretrained="auto" if self.pretrained.value else False)

    @property
    def _model_controls(self) -> list:
        return [self.detector, self.embedder, self.types, self.abnormal_types, self.det_classes, self.pretrained]

    def _use_model(self, model) -> None:
        """``model`` is the one in force: the 'new:' controls show its architecture
        and types, read-only (they are fixed once a model exists), and the
        threshold sliders its thresholds."""
        self.model = model
        self.detector.value, self.embedder.value = model.det_backbone, model.embedder_name
        self.types.value = ", ".join(model.type_names)
        self.abnormal_types.value = ", ".join(model.abnormal_types)
        self.det_classes.value = ", ".join(model.det_classes)
        for c in self._model_controls:
            c.enabled = False
        self.forget_btn.enabled = True
        self.shape_type.reset_choices()
        self.score.value, self.type_thr.value = model.score_threshold, model.type_threshold

    def forget_model(self, *_) -> None:
        """Drop the model in use: the next training starts a new one from the 'new:' controls."""
        self.model = None
        for c in self._model_controls:
            c.enabled = True
        self.forget_btn.enabled = False
        self.shape_type.reset_choices()

    def _type_choices(self) -> list[str]:
        return list(self.model.type_names) if self.model is not None else _names(self.types.value)

    # ------------------------------------------------------------ type annotation
    def set_selected_type(self, replace: bool = True):
        """Give the rectangles selected in the annotation layer the type picked in
        ``type of selected`` (``replace``) or add it to their types (``A+B``),
        in the layer's ``type feature`` column, which training reads."""
        from napari.layers import Shapes

        from expertloop.engine.blood.pipeline import parse_types

        ann = layer_by_name(self._viewer, self.annotations.value)
        kind = self.shape_type.value
        feat = self.type_feature.value.strip() or "type"
        if not isinstance(ann, Shapes):
            notify("Blood cell detector", "choose a Shapes layer of rectangles as 'annotations'")
            return None
        selected = sorted(ann.selected_data)
        if not selected:
            notify("Blood cell detector", f"select rectangles in {ann.name!r} first (select tool: click or drag)")
            return None
        if not kind:
            notify("Blood cell detector", "pick a type first ('new: cell types' lists them before a model exists)")
            return None
        feats = ann.features.copy()
        values = ([("" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)) for v in feats[feat]]
                  if feat in feats else [""] * len(ann.data))
        for i in selected:
            kinds = set() if replace else set(parse_types(values[i]))
            values[i] = "+".join(sorted(kinds | {kind}))
        feats[feat] = np.array(values, dtype=object)
        ann.features = feats
        ann.feature_defaults = {**{k: v.iloc[0] for k, v in ann.feature_defaults.items()}, feat: ""}
        ann.text = {"string": "{" + feat + "}", "size": 9, "color": "yellow", "anchor": "upper_left"}
        ann.refresh_text()
        notify("Blood cell detector", f"{len(selected)} rectangle{'s' if len(selected) > 1 else ''} of "
               f"{ann.name!r}: {kind}" + ("" if replace else " added"))
        return [values[i] for i in selected]

    # ------------------------------------------------------------ model
    def load(self, *_):
        from expertloop.engine.blood.model import load_blood_model

        path = Path(str(self.model_file.value))
        if not path.name or not path.exists():
            notify("Blood cell detector", f"model file {path} not found")
            return None
        from expertloop.engine.jobs import call_job

        def done(model):
            self._use_model(model)
            notify("Blood cell detector", f"loaded {path.name}: types {', '.join(model.type_names)}")

        return self.runner.start(call_job(f"reading {path.name}", load_blood_model, path),
                                 description="loading blood model", on_result=done)

    def save(self, *_):
        from expertloop.engine.blood.model import save_blood_model

        if self.model is None:
            notify("Blood cell detector", "no model to save: train or load one first")
            return None
        path = Path(str(self.save_file.value))
        if not path.name:
            notify("Blood cell detector", "choose a file to save the model to")
            return None
        from expertloop.engine.jobs import call_job

        return self.runner.start(call_job(f"saving {path.name}", save_blood_model, path, self.model),
                                 description="saving blood model",
                                 on_result=lambda out: notify("Blood cell detector", f"model saved to {out}"))

    # ------------------------------------------------------------ detection
    def detect(self, *_):
        from expertloop.engine.blood.pipeline import predict_image

        layer = layer_by_name(self._viewer, self.image.value)
        if layer is None:
            notify("Blood cell detector", "open an image first")
            return None
        if self.model is None:
            notify("Blood cell detector", "load or train a model first")
            return None
        plane = _plane(layer, self._viewer)
        self._source = layer
        job = predict_image(self.model, plane, name=layer.name)
        return self.runner.start(job, description="detecting blood cells", on_result=self._show,
                                 on_error=self._clear_result)

    def _clear_result(self, exc: BaseException) -> None:
        """A failed detection: drop the previous overlay, table and summary, so
        that nothing on screen looks like the result of this image."""
        self.result = None
        if self.layer is not None and self.layer in self._viewer.layers:
            self._viewer.layers.remove(self.layer)
        self.layer = None
        self.summary.value = "detection failed: no result shown (see the error message)"
        self.table.value = {"region": []}

    def _show(self, result) -> None:
        self.result = result
        name = f"{result.name} cells"
        layer = self._source
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)
        self.layer = self._viewer.add_shapes(
            name=name, ndim=2, edge_width=2, face_color="transparent",
            scale=tuple(layer.scale[-2:]) if layer is not None else (1, 1),
            translate=tuple(layer.translate[-2:]) if layer is not None else (0, 0),
            metadata={"blood_result": True},
            text={"string": "{label}", "size": 8, "color": "yellow", "anchor": "upper_left"},
        )
        self.refresh()

    def refresh(self, *_) -> None:
        """Apply the thresholds to the overlay, the table and the summary (and
        to the model, so they are saved with it and used by the folder batch)."""
        if self.model is not None:
            self.model.set_thresholds(score_threshold=float(self.score.value),
                                      type_threshold=float(self.type_thr.value))
        res = self.result
        if res is None or self.layer is None or self.layer not in self._viewer.layers:
            return
        thr, tthr = float(self.score.value), float(self.type_thr.value)
        tab = res.table(thr, tthr)
        idx = tab["region"]
        rects = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
                 for x0, y0, x1, y1 in res.boxes[idx]]
        colours, text = [], []
        trained = np.array([t not in res.untrained_types for t in res.type_names], bool)
        for i in idx:
            p = res.type_probs[i]
            on = np.nonzero((p >= tthr) & trained)[0]  # what predicted_types gives
            colours.append(PALETTE[on[np.argmax(p[on])] % len(PALETTE)] if len(on) else NO_TYPE)
            text.append(", ".join(f"{res.type_names[j]} {p[j]:.2f}" for j in on[np.argsort(-p[on])])
                        or f"{res.labels[i]} {res.scores[i]:.2f}")
        feats = {k: v for k, v in tab.items()}
        feats["label"] = np.array(text, dtype=object)
        layer = self.layer
        layer.data = []
        if rects:
            layer.add_rectangles(rects, edge_color=np.array(colours), edge_width=2, face_color="transparent")
        layer.features = feats  # the text (set once, in _show) follows the 'label' feature
        s = res.summary(thr, tthr)
        per = ", ".join(f"{t}: {n}" for t, n in s["per_type"].items() if n)
        abnormal = f"{s['abnormal_regions']} abnormal" if s["abnormal_trained"] else "abnormal: not trained"
        lines = [f"{s['regions']} regions ({s['multi_type_regions']} with several types), {abnormal}"]
        if per:
            lines.append(per)
        if s["untrained_types"]:
            lines.append(f"not trained (hidden): {', '.join(s['untrained_types'])}")
        self.summary.value = "\n".join(lines)
        hidden = {f"p_{t}" for t in s["untrained_types"]} | (set() if s["abnormal_trained"] else
                                                             {"abnormal_score", "abnormal"})
        self.table.value = {k: [v.item() if isinstance(v, np.generic) else v for v in col]
                            for k, col in tab.items() if k not in hidden}

    # ------------------------------------------------------------ training
    def _samples(self):
        """Check the chosen layers now (cheap) and return ``make()``, which builds the
        training sample (reads the planes, crops the cells) in the job's worker."""
        from napari.layers import Labels, Shapes

        from expertloop.engine.blood.pipeline import (
            sample_from_rectangles,
            samples_from_instances,
        )

        img_layer = layer_by_name(self._viewer, self.image.value)
        ann = layer_by_name(self._viewer, self.annotations.value)
        if img_layer is None or ann is None:
            raise ValueError("choose an image and an annotation layer (Shapes rectangles or Labels)")
        plane = _plane(img_layer, self._viewer)  # not read here: read by make(), in the worker
        feat = self.type_feature.value.strip()
        name = ann.name
        if isinstance(ann, Labels):
            lab_plane = _plane(ann, self._viewer)
            types = None
            f = ann.features
            if feat and feat in f and "index" in f:
                types = {int(i): str(t) for i, t in zip(f["index"], f[feat]) if int(i) > 0}
            label = _names(self.det_classes.value)[0] if self.model is None else self.model.det_classes[0]

            def make():
                lab = np.asarray(lab_plane)
                if lab.max() == 0:
                    raise ValueError(f"the Labels layer {name!r} is empty")
                return samples_from_instances(np.asarray(plane), lab, types, name=name, label=label)

            return make
        if not isinstance(ann, Shapes) or not len(ann.data):
            raise ValueError(f"the annotation layer {ann.name!r} holds no shapes")
        det_classes = self.model.det_classes if self.model is not None else (_names(self.det_classes.value) or ["cell"])
        f = ann.features
        shapes = list(ann.data)
        types = list(f[feat]) if feat in f else None
        classes = list(f["class"]) if "class" in f else None

        def make():
            return sample_from_rectangles(np.asarray(plane), shapes, types=types, classes=classes,
                                          det_classes=det_classes, name=name)

        return make

    def train(self, *_):
        from expertloop.engine.blood.model import new_blood_model
        from expertloop.engine.blood.pipeline import train_blood_model
        from expertloop.engine.jobs import call_job

        try:
            make_sample = self._samples()
        except (ValueError, KeyError) as exc:
            notify("Blood cell detector", str(exc))
            return None
        kwargs = self._new_model_kwargs() if self.model is None else None
        det_epochs, head_epochs = int(self.det_epochs.value), int(self.head_epochs.value)

        def job():  # the sample is built (planes read, cells cropped) here, in the worker
            sample = yield from call_job("building the training sample", make_sample)
            model = self.model
            if model is None:
                known = set(kwargs["type_names"])
                kwargs["type_names"] += sorted({t for ts in sample.types for t in ts} - known)
                bad = [t for t in kwargs["abnormal_types"] if t not in kwargs["type_names"]]
                if bad:
                    raise ValueError(f"abnormal types {', '.join(bad)} are not among the cell types: "
                                     "edit 'new: abnormal types'")
                model = new_blood_model(**kwargs)
            hist = yield from train_blood_model(model, [sample], det_epochs=det_epochs, head_epochs=head_epochs,
                                                batch_size=1, train_detector_too=det_epochs > 0)
            return model, hist

        def done(out):
            model, hist = out
            # the sliders' thresholds stay in force (a new model takes them)
            model.set_thresholds(score_threshold=float(self.score.value), type_threshold=float(self.type_thr.value))
            self._use_model(model)
            self.refresh()
            det = hist["detector"]
            msg = f"trained: detector {len(det)} iteration{'' if len(det) == 1 else 's'}" + (f" (loss {det[0]:.3f} -> {det[-1]:.3f})" if det else "")
            if hist["heads"]:
                msg += f", type heads loss {hist['heads'][-1]:.3f}"
            untrained = [t for t in self.model.type_names if t not in self.model.trained_types]
            if untrained:
                msg += f"; no example yet (not trained, hidden): {', '.join(untrained)}"
            notify("Blood cell detector", msg)

        return self.runner.start(job(), description="training blood model", on_result=done)

    # ------------------------------------------------------------ export
    def _export_path(self, suffix: str) -> Path | None:
        if self.result is None:
            notify("Blood cell detector", "nothing to export: run a detection first")
            return None
        p = Path(str(self.export_file.value))
        if not p.name or p.is_dir():
            notify("Blood cell detector", "choose a file to export to")
            return None
        return p.with_suffix(suffix)

    def export_csv(self, *_):
        from expertloop.io.blood_formats import results_to_rows, write_csv

        p = self._export_path(".csv")
        if p is None:
            return None
        write_csv(p, results_to_rows([self.result], float(self.score.value), float(self.type_thr.value)))
        notify("Blood cell detector", f"regions written to {p}")
        return p

    def export_coco(self, *_):
        from expertloop.io.blood_formats import results_to_annotations, write_coco

        p = self._export_path(".json")
        if p is None:
            return None
        anns = results_to_annotations([self.result], float(self.score.value), float(self.type_thr.value))
        write_coco(p, anns, categories=self.model.det_classes if self.model else None)
        notify("Blood cell detector", f"COCO annotations written to {p}")
        return p

    # ------------------------------------------------------------ batch
    def detect_folder(self, *_):
        """Detect in every image of ``batch folder`` with the job ``expertloop
        blood predict`` runs (:func:`~expertloop.engine.blood.pipeline.predict_folder`,
        in this process or on dask workers as ``batch workers``/``dask
        scheduler`` say): ``per_image/`` tables, then ``regions.csv`` and
        ``regions_coco.json`` in the folder of ``export to``, with the
        thresholds shown."""
        from expertloop.engine.batch import BatchInputError, BatchPlace, expand_inputs
        from expertloop.engine.blood.pipeline import predict_folder
        from expertloop.engine.config import build

        if self.model is None:
            notify("Blood cell detector", "load or train a model first")
            return None
        folder = Path(str(self.folder.value))
        target = Path(str(self.export_file.value))
        if not target.name:
            notify("Blood cell detector", "choose where to export (export to)")
            return None
        out_dir = target if target.is_dir() else target.parent
        # the sliders' values are the model's thresholds (the overlay already shows them:
        # not rebuilt here, that took ~250 ms of the GUI thread)
        self.model.set_thresholds(score_threshold=float(self.score.value), type_threshold=float(self.type_thr.value))
        place = build(BatchPlace, self.batch_place.values())
        try:
            files = expand_inputs([folder]) if folder.is_dir() else []
            if not files:
                raise BatchInputError(f"no images in {folder}")
            job = predict_folder(self.model, files, out_dir, **place.run_options())
        except ValueError as exc:  # BatchInputError included
            notify("Blood cell detector", str(exc))
            return None

        def done(out):
            r = out.report
            failed = "".join(f"\n  failed: {o.source.name}: {o.message}" for o in r.failed[:5])
            notify("Blood cell detector", f"{r.summary()}; written to {out_dir}{failed}",
                   "warning" if r.failed else "info")

        return self.runner.start(job, description="detecting blood cells in a folder", on_result=done)
