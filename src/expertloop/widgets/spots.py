"""Spot widgets: the timed "Spot annotator" and the L-CNN "Spot detector".

Thin front ends over :mod:`expertloop.io.spots_clicks` (crash-safe click log)
and :mod:`expertloop.engine.spots` (candidates, L-CNN, 3D joining). Heavy
steps run in the shared :class:`~expertloop.widgets._jobs.JobRunner`.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    Select,
)

from expertloop.io.spots_clicks import (
    CLICK_COLUMNS,
    FEATURE_COLUMNS,
    ClickError,
    ClickLog,
    default_log_path,
    export_csv,
    import_csv,
    read_clicks,
    rows_to_table,
)
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


def _zoom(viewer) -> float:
    scene = getattr(viewer, "scene", None)  # napari >= 0.9
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    return float(camera.zoom)


def spots_layer_name(image_name: str) -> str:
    return f"{image_name} spots"


def _empty_features():
    import pandas as pd

    from expertloop.io.spots_clicks import _BOOL, _FLOAT, _INT

    cols = {}
    for c in FEATURE_COLUMNS:
        dtype = "float64" if c in _FLOAT else "int64" if c in _INT else "bool" if c in _BOOL else "object"
        cols[c] = pd.Series([], dtype=dtype)
    return pd.DataFrame(cols)


def table_from_layer(points) -> dict[str, np.ndarray]:
    """The click table of a Points layer made by the annotator (its data + features)."""
    data = np.asarray(points.data, np.float64)
    if data.ndim == 2 and data.shape[1] == 2:
        data = np.column_stack([np.zeros(len(data)), data])
    data = data.reshape(-1, 3)
    feats = points.features
    # whole columns at once (rows_to_table converts them); a per-row pandas lookup took
    # ~3 ms a click on the GUI thread
    cols = {c: feats[c].to_numpy() for c in FEATURE_COLUMNS if c in feats}
    cols.update(z=data[:, 0], y=data[:, 1], x=data[:, 2])
    rows = [dict(zip(cols, vals)) for vals in zip(*cols.values())]
    return rows_to_table(rows)


class SpotAnnotatorWidget(Container):
    """Click spots; every click is timed and written to disk at once."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.image = ComboBox(label="image", choices=lambda _: image_layer_choices(viewer))
        try:
            user = getpass.getuser()
        except Exception:  # no user name in some containers
            user = "expert"
        self.annotator = LineEdit(label="annotator", value=user)
        self.folder = FileEdit(label="log folder", mode="d", value="",
                               tooltip="empty: next to the image file")
        self.start_btn = PushButton(text="Start / resume session")
        self.csv_path = FileEdit(label="table (CSV)", mode="w", filter="*.csv", value="")
        self.export_btn = PushButton(text="Export CSV")
        self.import_btn = PushButton(text="Import CSV")
        self.info = Label(value="no session")
        super().__init__(widgets=[
            self.image, self.annotator, self.folder, self.start_btn,
            self.info, self.csv_path, Container(widgets=[self.export_btn, self.import_btn],
                                                layout="horizontal", labels=False),
        ])
        fit_dock(self)
        self.log: ClickLog | None = None
        self.points = None
        self._image_layer = None
        self._pending_bad: list[int] = []
        self.start_btn.changed.connect(self.start)
        self.export_btn.changed.connect(lambda *_: self.export(self.csv_path.value))
        self.import_btn.changed.connect(lambda *_: self.import_table(self.csv_path.value))
        follow_layers(viewer, self.image)

    # ------------------------------------------------------------- session
    def log_path(self, layer) -> Path:
        folder = str(self.folder.value or "").strip()
        folder = folder if folder not in ("", ".") else None
        src = getattr(layer.source, "path", None) or layer.metadata.get("source")
        return default_log_path(src if folder is None else None, folder, layer.name)

    def start(self, *_: Any):
        """Bind to the chosen image: restore its click log, start a new session."""
        layer = layer_by_name(self._viewer, self.image.value)
        if layer is None:
            notify("Spot annotator", "open an image first")
            return None
        if layer.rgb or layer.ndim not in (2, 3):
            notify("Spot annotator", f"'{layer.name}' must be a 2D or 3D grey-level "
                   f"image (got {layer.ndim}D{' RGB' if layer.rgb else ''})", "warning")
            return None
        self._image_layer = layer
        path = self.log_path(layer)
        table = read_clicks(path) if path.exists() else rows_to_table([])
        name = spots_layer_name(layer.name)
        if name in self._viewer.layers:
            self._viewer.layers.remove(name)
        pts = self._points_from_table(table, layer.ndim)
        points = self._viewer.add_points(
            pts, name=name, ndim=layer.ndim, scale=layer.scale, translate=layer.translate,
            size=max(3.0, 0.03 * max(layer.data.shape[-2:])), face_color="transparent",
            border_color="yellow", features=self._features_from_table(table),
        )
        points.feature_defaults = {c: (np.nan if c in ("latency_s", "timestamp", "contrast_lo",
                                                      "contrast_hi", "zoom") else
                                       0 if c == "slice" else False if c == "first_in_session" else "")
                                   for c in FEATURE_COLUMNS}
        self.points = points
        if self.log is not None:
            self.log.journal.flush(10)  # the previous session's clicks are all on disk
        # background: each click is written + fsync-ed by the journal's writer thread, in
        # order, not on the GUI thread (a disk wait per click stalled the viewer)
        self.log = ClickLog(path, shape=layer.data.shape, annotator=self.annotator.value,
                            image=str(getattr(layer.source, "path", None) or layer.name), background=True)
        points.events.data.connect(self._on_data)
        points.mode = "add"
        self._viewer.layers.selection.active = points
        self._update_info()
        if len(table["z"]):
            notify("Spot annotator", f"restored {len(table['z'])} clicks from {path}")
        else:
            notify("Spot annotator", f"clicks of '{layer.name}' are logged to {path}")
        return points

    @staticmethod
    def _points_from_table(table, ndim):
        cols = ("z", "y", "x") if ndim == 3 else ("y", "x")
        return np.stack([table[c] for c in cols], axis=1).reshape(-1, ndim)

    @staticmethod
    def _features_from_table(table):
        import pandas as pd

        if not len(table["z"]):
            return _empty_features()
        return pd.DataFrame({c: table[c] for c in FEATURE_COLUMNS})

    # ------------------------------------------------------------- clicks
    def click(self, coords):
        """Add a spot at ``coords`` (points-layer data coordinates), like a mouse click."""
        if self.points is None:
            raise RuntimeError("start a session first (Start / resume session)")
        self.points.add(np.asarray(coords, float))

    def _on_data(self, event) -> None:
        action = str(getattr(event, "action", ""))
        pts = self.points
        if action.endswith("ADDED") or action == "added":
            n = len(pts.data)
            bad = []
            for i in sorted(int(j) % n for j in event.data_indices):
                self._record(i, bad)
            if bad:
                pts.selected_data = set(bad)
                pts.remove_selected()
            self._update_info()
        elif action.endswith("REMOVING") or action == "removing":
            idx = [int(i) for i in event.data_indices if int(i) >= 0]
            ids = pts.features["click_id"].iloc[idx] if idx else []
            for cid in ids:
                if cid:
                    self.log.delete(cid)
        elif action.endswith("REMOVED") or action == "removed":
            self._update_info()

    def _record(self, i: int, bad: list) -> None:
        pts, img = self.points, self._image_layer
        world = pts.data_to_world(pts.data[i])
        coords = np.asarray(img.world_to_data(world), float)
        try:
            rec = self.log.click(coords, contrast_limits=tuple(img.contrast_limits),
                                 zoom=_zoom(self._viewer))
        except ClickError as exc:
            bad.append(i)
            # napari copies the selected point's features into a new point:
            # blank the id so removing this refused point deletes nothing
            pts.features.loc[pts.features.index[i], "click_id"] = ""
            notify("Spot annotator", str(exc), "warning")
            return
        feats = pts.features
        j = feats.index[i]
        # one row assignment, not a .loc write per column
        feats.loc[j, list(FEATURE_COLUMNS)] = [rec[c] for c in FEATURE_COLUMNS]

    def _update_info(self) -> None:
        if self.points is None:
            self.info.value = "no session"
            return
        lat = self.points.features.get("latency_s")
        last = f", last latency {lat.iloc[-1]:.1f} s" if lat is not None and len(lat) else ""
        self.info.value = f"{len(self.points.data)} clicks{last}; log: {self.log.path.name}"
        self.info.tooltip = f"click log: {self.log.path}"

    # ------------------------------------------------------------ tables
    def table(self) -> dict[str, np.ndarray]:
        if self.points is None:
            raise RuntimeError("start a session first")
        return table_from_layer(self.points)

    def export(self, path) -> Path | None:
        if self.points is None or not str(path or "").strip() or str(path) == ".":
            notify("Spot annotator", "start a session and choose a CSV file first")
            return None
        out = export_csv(self.table(), path)
        notify("Spot annotator", f"{len(self.points.data)} clicks written to {out}")
        return out

    def import_table(self, path):
        """Load an annotation table (CSV) into the points layer and the log (as clicks of record)."""
        if self.points is None:
            notify("Spot annotator", "start a session first")
            return None
        try:
            table = import_csv(path)
        except (OSError, ValueError) as exc:
            notify("Spot annotator", str(exc), "error")
            return None
        # a click already in the layer (same id, e.g. re-importing its own export)
        # is not added twice; rows without an id get a fresh one in this session
        known = {str(c) for c in self.points.features.get("click_id", []) if str(c)}
        ids = [str(c) for c in table["click_id"]]
        keep = np.array([not cid or cid not in known for cid in ids], bool)
        skipped = int((~keep).sum())
        table = {c: np.asarray(v)[keep] for c, v in table.items()}
        table["click_id"] = np.array(
            [cid or f"{self.log.session_id}-import{k}" for k, cid in enumerate(map(str, table["click_id"]))],
            object)
        if skipped:
            notify("Spot annotator", f"{skipped} clicks of the table are already here (same id): skipped")
        # imported rows enter the journal as they are, so a crash keeps them too
        # (background journal: queued here, written + fsync-ed in one go by its writer thread)
        self.log.journal.extend({"event": "click", **{c: table[c][i] for c in CLICK_COLUMNS}}
                                for i in range(len(table["z"])))
        self.points.events.data.disconnect(self._on_data)
        try:
            pts = self._points_from_table(table, self.points.ndim)
            import pandas as pd

            feats = pd.concat([self.points.features, self._features_from_table(table)], ignore_index=True)
            self.points.data = np.concatenate([self.points.data, pts])
            self.points.features = feats
        finally:
            self.points.events.data.connect(self._on_data)
        self._update_info()
        return table


def training_summary(info: dict, config) -> str:
    """What a training learnt from: spot patches, clicks, and the clicks that
    matched no candidate (they teach nothing), with what to do about them."""
    text = (f"trained {info['method']} on {info['n_positive']} spot patches (of {info['n_candidates']} "
            f"candidates)" + (f" from {info['n_clicks']} clicks" if info.get("n_clicks") else ""))
    extra = ([f"{info['n_clusters']} latency clusters"] if "n_clusters" in info else []) + \
        ([f"transferred {len(info['transferred'])} conv layers"] if info.get("transferred") is not None else [])
    if extra:
        text += ", " + ", ".join(extra)
    k = info.get("unmatched_clicks", 0)
    if k:
        text += (f"\n{k} click{'s' if k > 1 else ''} matched no candidate (no candidate centre within "
                 f"tau = {config.tau:g} px): click spot centres, or raise tau")
    return text


class SpotDetectorWidget(Container):
    """Train the L-CNN (or a control) from annotated images; detect 3D spots."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from expertloop.engine.spots.lcnn import SpotConfig, SpotSelection

        self._viewer = viewer
        self.train_images = Select(label="train on", choices=lambda _: self._annotated_images(),
                                   tooltip="images with a '<image> spots' layer of timed clicks")
        # training parameters from the engine's SpotConfig (defaults, ranges, help live there)
        self.params = ConfigControls(SpotConfig)
        self.train_btn = PushButton(text="Train")
        self.model_path = FileEdit(label="model file", mode="w", filter="*.pt", value="")
        self.save_btn = PushButton(text="Save model")
        self.load_btn = PushButton(text="Load model")
        self.image = ComboBox(label="detect in", choices=lambda _: image_layer_choices(viewer))
        self.predict_btn = PushButton(text="Detect spots")
        self.threshold = ConfigControls(SpotSelection)["threshold"]
        self.threshold.tracking = False  # re-join spots when the slider is released, not on every tick
        self.colour = CheckBox(text="colour by probability", value=True)
        self.info = Label(value="no model")
        self.runner = JobRunner()
        super().__init__(widgets=[
            self.train_images, *self.params.widgets, self.train_btn, self.model_path,
            Container(widgets=[self.save_btn, self.load_btn], layout="horizontal", labels=False),
            self.image, self.predict_btn, self.threshold, self.colour, self.info, self.runner,
        ])
        fit_dock(self)
        self.detector = None
        self.detection = None
        self.result_layer = None
        self.train_btn.changed.connect(self.train)
        self.save_btn.changed.connect(lambda *_: self.save(self.model_path.value))
        self.load_btn.changed.connect(lambda *_: self.load(self.model_path.value))
        self.predict_btn.changed.connect(self.predict)
        self.threshold.changed.connect(self._show_spots)
        self.colour.changed.connect(self._show_spots)
        follow_layers(viewer, self.image, self.train_images)

    def _annotated_images(self) -> list[str]:
        names = image_layer_choices(self._viewer)
        return [n for n in names if spots_layer_name(n) in self._viewer.layers]

    def config(self):
        from expertloop.engine.config import build
        from expertloop.engine.spots.lcnn import SpotConfig

        return build(SpotConfig, self.params.values())

    # ------------------------------------------------------------ training
    def train(self, *_: Any):
        from expertloop.engine.spots.lcnn import prepare_scan, train_spot_detector

        names = list(self.train_images.value or [])
        if not names:
            notify("Spot detector", "choose images that have a '<image> spots' layer of clicks")
            return None
        cfg = self.config()
        scans = []
        for n in names:
            img = self._viewer.layers[n]
            table = table_from_layer(self._viewer.layers[spots_layer_name(n)])
            if len(table["z"]) == 0:
                notify("Spot detector", f"'{n}' has no clicks; click spots with the Spot annotator", "warning")
                return None
            scans.append((n, layer_array(img)[0], table))

        def job():
            sets = []
            for k, (n, data, table) in enumerate(scans):
                from expertloop.engine.jobs import rescale

                sets.append((yield from rescale(prepare_scan(np.asarray(data), table, cfg, name=n),
                                                k * 100, (k + 1) * 100, (len(scans) + 1) * 100)))
            from expertloop.engine.jobs import rescale

            return (yield from rescale(train_spot_detector(sets, cfg), len(scans) * 100,
                                       (len(scans) + 1) * 100, (len(scans) + 1) * 100))

        def done(det):
            self.detector = det
            self.info.value = training_summary(det.info, det.config)
            if det.info.get("unmatched_clicks"):
                notify("Spot detector", self.info.value.replace("\n", "; "), "warning")
            if det.info.get("cluster_note"):
                notify("Spot detector", f"{det.info['cluster_note']}")

        return self.runner.start(job(), description="train spot detector", on_result=done)

    def save(self, path):
        if self.detector is None:
            notify("Spot detector", "train or load a model first")
            return None
        if not str(path or "").strip() or str(path) == ".":
            notify("Spot detector", "choose a model file")
            return None
        from expertloop.engine.jobs import call_job

        return self.runner.start(call_job(f"saving {Path(path).name}", self.detector.save, path),
                                 description="saving spot model",
                                 on_result=lambda out: notify("Spot detector", f"model saved to {out}"))

    def load(self, path):
        """Read a saved model in the runner's worker; its training values fill the controls."""
        from expertloop.engine.jobs import call_job
        from expertloop.engine.spots.lcnn import SpotDetector

        if not str(path or "").strip() or str(path) == ".":
            notify("Spot detector", "choose a model file")
            return None
        name = Path(path).name

        def done(det):
            self.detector = det
            # the controls show what the model was trained with (a new training starts from them)
            self.params.fill(det.config, lock_fixed=False)
            self.info.value = (f"loaded from {name}: " + training_summary(det.info, det.config)
                               if "n_positive" in det.info else
                               f"loaded {det.info.get('method', '?')} model from {name}")

        return self.runner.start(call_job(f"reading {name}", SpotDetector.load, path),
                                 description="loading spot model", on_result=done)

    # ---------------------------------------------------------- prediction
    def predict(self, *_: Any):
        from expertloop.engine.spots.lcnn import detect_spots

        layer = layer_by_name(self._viewer, self.image.value)
        if layer is None:
            notify("Spot detector", "open an image first")
            return None
        if self.detector is None:
            notify("Spot detector", "train or load a model first")
            return None
        if layer.rgb:
            notify("Spot detector", "needs a grey-level image, not RGB", "warning")
            return None
        self._source = layer

        def done(detection):
            self.detection = detection
            with self.threshold.changed.blocked():
                self._fit_threshold_range()
            self._show_spots()

        return self.runner.start(detect_spots(self.detector, layer_array(layer)[0]), description="detect spots",
                                 on_result=done)

    def _show_spots(self, *_: Any) -> None:
        if self.detection is None:
            return
        layer = self._source
        s = self.detection.spots(float(self.threshold.value))
        pts = s["points"] if layer.ndim == 3 else s["points"][:, 1:]
        feats = {"probability": s["probability"], "n_slices": s["n_slices"], "n_patches": s["n_patches"]}
        name = f"{layer.name} detected spots"
        if self.result_layer is None or self.result_layer not in self._viewer.layers:
            self.result_layer = self._viewer.add_points(
                pts, ndim=layer.ndim, name=name, features=feats, scale=layer.scale,
                translate=layer.translate, size=max(3.0, 0.03 * max(layer.data.shape[-2:])),
                face_color="transparent", border_color="probability" if len(pts) and self.colour.value
                else "cyan", border_colormap="plasma")
        else:
            self.result_layer.data = pts
            self.result_layer.features = feats
            if len(pts) and self.colour.value:
                self.result_layer.border_color = "probability"
                self.result_layer.border_colormap = "plasma"
            else:
                self.result_layer.border_color = "cyan"
        p = self.detection.probability
        rng = f" (candidate probabilities {p.min():.2f}–{p.max():.2f})" if len(p) else " (no candidates)"
        self.info.value = f"{len(pts)} spots at threshold {self.threshold.value:.2f}{rng}"

    def _fit_threshold_range(self) -> None:
        """Let the threshold slider span this detection's probabilities (rounded
        out to 0.01), so every position means something; a threshold outside
        that range moves to its nearest end."""
        import math

        p = self.detection.probability
        lo, hi = (0.0, 1.0) if not len(p) else (math.floor(p.min() * 100) / 100, math.ceil(p.max() * 100) / 100)
        hi = min(1.0, max(hi, lo + 0.01))
        value = min(max(float(self.threshold.value), lo), hi)
        self.threshold.min, self.threshold.max = 0.0, 1.0  # never min > max while moving both
        self.threshold.min, self.threshold.max = lo, hi
        self.threshold.value = value
