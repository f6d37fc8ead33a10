"""'Annotation project' dock and 'Annotation project admin' panel.

Thin front ends over :mod:`expertloop.store` (all permission checks live
there). The dock: open or create a project, pick who you are, pick one of
your collections (with progress), walk through its images (coloured like the
paper's frames: green annotated, blue current, red not yet, grey missing
file), annotate with the tools the collection's template asks for, and every
save goes to the store at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from expertloop.store import (
    ROLES,
    TASK_TYPES,
    Store,
    StoreError,
    format_report,
    local_path,
    review_source,
)
from expertloop.store.core import expand_images
from expertloop.widgets._common import fit_dock, layer_array, notify
from expertloop.widgets._jobs import JobRunner

if TYPE_CHECKING:
    import napari

COLOURS = {"annotated": "#2e7d32", "current": "#1565c0", "todo": "#c62828",
           "missing": "#757575"}
IMAGE_LAYER = "project image"
ANNOTATION_LAYER = "project annotation"


def _row(*widgets: QWidget) -> QWidget:
    box = QWidget()
    lay = QHBoxLayout(box)
    lay.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        lay.addWidget(w)
    return box


# The docks write on the GUI thread (one short transaction per save), so a
# write never waits long for another process's lock: after this many seconds
# it fails with "try again" instead of freezing the viewer.
GUI_LOCK_TIMEOUT = 2.0


def _open_store(location: str, create_as: str | None = None) -> Store:
    location = location.strip()
    if not location:
        raise StoreError("type a project folder (or a database URL) first")
    if create_as is not None:
        return Store.create(location, admin=create_as, lock_timeout=GUI_LOCK_TIMEOUT, on_wait=show_info)
    return Store.open(location, lock_timeout=GUI_LOCK_TIMEOUT, on_wait=show_info)


class AnnotationProjectWidget(QWidget):
    """Annotate the images of the collections assigned to you."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.store: Store | None = None
        self.collection = None  # CollectionInfo
        self.images: list = []
        self.done: set[int] = set()
        self.mine: dict = {}
        self.missing: set[int] = set()
        self.predictions: dict = {}
        self.current = -1
        self._shown_at = time.monotonic()

        self.location = QLineEdit()
        self.location.setPlaceholderText("project folder or postgresql+psycopg://...")
        self.open_btn = QPushButton("Open")
        self.create_btn = QPushButton("Create")
        self.create_btn.setToolTip("create a new project; you (the name below) become its admin")
        self.me_new = QLineEdit()
        self.me_new.setPlaceholderText("your name (new project)")
        self.user = QComboBox()
        self.coll = QComboBox()
        self.progress_lbl = QLabel("no project open")
        self.list = QListWidget()
        self.list.setMinimumHeight(120)
        self.prev_btn = QPushButton("◀ Prev")
        self.next_btn = QPushButton("Next ▶")
        self.todo_btn = QPushButton("Next to do")
        self.suggestion = QLabel("")
        self.label_box = QComboBox()
        self.label_box.setPlaceholderText("choose a label")  # nothing preselected
        self.keys_lbl = QLabel("")  # the 1-9 key map, shown in the dock
        self.keys_lbl.setWordWrap(True)
        self.save_btn = QPushButton("Save")
        self.accept_btn = QPushButton("Accept suggestion")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("project", _row(self.location, self.open_btn))
        form.addRow("new project", _row(self.me_new, self.create_btn))
        form.addRow("I am", self.user)
        form.addRow("collection", self.coll)
        self.tools = QGroupBox("annotation")
        tl = QFormLayout(self.tools)
        tl.addRow("model says", self.suggestion)
        tl.addRow("label", self.label_box)
        tl.addRow(self.keys_lbl)
        tl.addRow(_row(self.accept_btn, self.save_btn))
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.progress_lbl)
        lay.addWidget(self.list)
        lay.addWidget(_row(self.prev_btn, self.next_btn, self.todo_btn))
        lay.addWidget(self.tools)
        lay.addWidget(self.status)
        lay.addStretch(1)
        fit_dock(self)

        self.open_btn.clicked.connect(lambda: self.open_project(self.location.text()))
        self.create_btn.clicked.connect(
            lambda: self.open_project(self.location.text(), create_as=self.me_new.text()))
        self.user.currentTextChanged.connect(self._user_changed)
        self.coll.currentIndexChanged.connect(self._collection_changed)
        self.list.currentRowChanged.connect(self._row_clicked)
        self.prev_btn.clicked.connect(lambda: self.go(self.current - 1))
        self.next_btn.clicked.connect(lambda: self.go(self.current + 1))
        self.todo_btn.clicked.connect(self.next_todo)
        self.save_btn.clicked.connect(lambda: self.save())
        self.accept_btn.clicked.connect(self.accept_suggestion)
        self._set_tools(None)

    # ---------------------------------------------------------------- project
    def open_project(self, location: str, create_as: str | None = None) -> bool:
        if create_as is not None and not create_as.strip():
            notify("Annotation project", "type your name to create a project", "error")
            return False
        try:
            store = _open_store(location, create_as.strip() if create_as else None)
        except StoreError as exc:
            notify("Annotation project", str(exc), "error")
            return False
        if self.store is not None:
            self.store.close()
        self.store = store
        self.location.setText(str(location))
        self.user.blockSignals(True)
        self.user.clear()
        self.user.addItems([u.name for u in store.users()])
        self.user.blockSignals(False)
        if create_as:
            self.user.setCurrentText(create_as.strip())
        self._user_changed()
        self._say(f"opened {store.url_safe}")
        return True

    @property
    def me(self) -> str:
        return self.user.currentText()

    def set_user(self, name: str) -> None:
        self.user.setCurrentText(name)

    def _user_changed(self, _name: str = "") -> None:
        self.coll.blockSignals(True)
        self.coll.clear()
        if self.store is not None and self.me:
            for info in self.store.collections(self.me):
                prog = self.store.progress(self.me, info.name).get(self.me)
                done = f"{prog['done']}/{prog['total']}" if prog else f"-/{info.n_images}"
                self.coll.addItem(f"{info.name} ({done})", info.name)
        self.coll.blockSignals(False)
        self._collection_changed()

    def select_collection(self, name: str) -> None:
        idx = self.coll.findData(name)
        if idx < 0:
            raise ValueError(f"{name!r} is not one of your collections")
        if idx != self.coll.currentIndex():
            self.coll.setCurrentIndex(idx)  # the signal loads it
        elif self.collection is None or self.collection.name != name:
            self._collection_changed()

    def _collection_changed(self, *_: Any) -> None:
        name = self.coll.currentData()
        self.list.blockSignals(True)
        self.list.clear()
        self.list.blockSignals(False)
        self.current = -1
        if self.store is None or not name:
            self.collection = None
            self._set_tools(None)
            self.progress_lbl.setText("no collection")
            return
        self.collection = self.store.collection(self.me, name)
        self.images = self.store.images(self.me, name)
        self.mine = {r.image_id: r for r in self.store.search(
            self.me, collection=name, annotator=self.me)}
        self.done = set(self.mine)
        self.predictions = self.store.predictions(self.me, name)
        self.missing = {im.id for im in self.images
                        if (p := local_path(im.uri)) is not None and not p.exists()}
        self.list.blockSignals(True)
        for im in self.images:
            self.list.addItem(Path(im.uri).name or im.uri)
        self.list.blockSignals(False)
        self._set_tools(self.collection)
        if self.missing:
            notify("Annotation project", f"{len(self.missing)} image(s) of "
                   f"{name!r} are missing on disk (shown grey)", "warning")
        self._refresh()
        if self.images:
            first_todo = next((i for i, im in enumerate(self.images)
                               if im.id not in self.done and im.id not in self.missing), 0)
            self.go(first_todo)

    # ---------------------------------------------------------------- list
    def item_state(self, i: int) -> str:
        im = self.images[i]
        if i == self.current:
            return "current"
        if im.id in self.missing:
            return "missing"
        return "annotated" if im.id in self.done else "todo"

    def _refresh(self) -> None:
        for i in range(self.list.count()):
            item = self.list.item(i)
            item.setForeground(QBrush(QColor("white")))
            item.setBackground(QBrush(QColor(COLOURS[self.item_state(i)])))
        n, d = len(self.images), len(self.done)
        miss = f"; {len(self.missing)} missing" if self.missing else ""
        self.progress_lbl.setText(f"{d}/{n} annotated by {self.me}{miss}")
        idx = self.coll.currentIndex()
        if idx >= 0 and self.collection is not None:
            self.coll.setItemText(idx, f"{self.collection.name} ({d}/{n})")

    def _row_clicked(self, row: int) -> None:
        if row != self.current and row >= 0:
            self.go(row)

    def go(self, i: int) -> None:
        if not self.images:
            return
        i = max(0, min(i, len(self.images) - 1))
        self.current = i
        self.list.blockSignals(True)
        self.list.setCurrentRow(i)
        self.list.blockSignals(False)
        self._show(self.images[i])
        self._refresh()

    def next_todo(self) -> None:
        n = len(self.images)
        for k in range(1, n + 1):
            j = (self.current + k) % n
            if self.images[j].id not in self.done and self.images[j].id not in self.missing:
                self.go(j)
                return
        self._say("nothing left to do in this collection")

    def _show(self, im) -> None:
        from expertloop.io import read_image

        self._shown_at = time.monotonic()
        if IMAGE_LAYER in self.viewer.layers:
            self.viewer.layers.remove(IMAGE_LAYER)
        path = local_path(im.uri)
        shape = None
        if im.id in self.missing or path is None:
            self._say(f"{im.uri}: {'missing on disk' if path else 'remote, not shown'}")
        else:
            try:
                layers = read_image(path)
                data, meta, _ = layers[0].as_layer_data()
                meta = {k: v for k, v in meta.items() if k != "name"}
                layer = self.viewer.add_image(data, name=IMAGE_LAYER, **meta)
                shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
                self.viewer.layers.move(self.viewer.layers.index(layer), 0)
                self._bind_keys(layer)
            except Exception as exc:  # unreadable file: say so, keep going
                notify("Annotation project", f"cannot read {im.uri}: {exc}", "warning")
        pred = self.predictions.get(im.id)
        self.suggestion.setText("" if pred is None else
                                f"{pred.label} ({pred.confidence:.2f})"
                                if pred.confidence is not None else str(pred.label))
        self.accept_btn.setEnabled(pred is not None and pred.label is not None)
        self._load_annotation(im, shape)

    def _bind_keys(self, layer) -> None:
        if self.collection is None or self.collection.task_type != "label" \
                or "keys" not in self.collection.tools:
            return
        for k, lab in enumerate(self.collection.labels[:9], start=1):
            def save_key(_layer, label=lab):
                self.save(label=label, advance=True)
            layer.bind_key(str(k), save_key, overwrite=True)

    # ---------------------------------------------------------------- tools
    def _set_tools(self, info) -> None:
        kind = info.task_type if info is not None else None
        self.label_box.clear()
        if info is not None and info.labels:
            self.label_box.addItems(info.labels)
        # an image label is never preselected; points and shapes are named by the first label
        self.label_box.setCurrentIndex(-1 if kind == "label" or not self.label_box.count() else 0)
        self.tools.setEnabled(info is not None)
        self.tools.setTitle(f"annotation: {kind}" if kind else "annotation")
        tools = set(info.tools) if info is not None else set()
        # the template decides: a label dropdown for image labels (unless its
        # tools omit it) and for naming points/shapes when there is a label set
        self.label_box.setVisible(
            (kind == "label" and "label-dropdown" in tools)
            or (kind in ("points", "contour") and bool(info.labels)))
        self.suggestion.setVisible(kind == "label")
        self.accept_btn.setVisible(kind == "label")
        keys = ""
        if kind == "label" and info.labels and "keys" in tools:
            keys = "keys on the image (save and move on): " + ", ".join(
                f"{k} = {lab}" for k, lab in enumerate(info.labels[:9], 1))
        self.keys_lbl.setText(keys)
        self.keys_lbl.setVisible(bool(keys))
        if ANNOTATION_LAYER in self.viewer.layers:
            self.viewer.layers.remove(ANNOTATION_LAYER)

    def _annotation_layer(self, shape):
        kind = self.collection.task_type
        if ANNOTATION_LAYER in self.viewer.layers:
            self.viewer.layers.remove(ANNOTATION_LAYER)
        if kind == "points":
            return self.viewer.add_points(np.zeros((0, 2)), name=ANNOTATION_LAYER,
                                          size=max(3, (min(shape) // 40) if shape else 5))
        if kind == "contour":
            return self.viewer.add_shapes(name=ANNOTATION_LAYER, edge_color="yellow",
                                          face_color="transparent", edge_width=1)
        if kind == "mask":
            if shape is None:
                return None
            return self.viewer.add_labels(np.zeros(shape, np.uint16), name=ANNOTATION_LAYER)
        return None

    def _load_annotation(self, im, shape) -> None:
        rec = self.mine.get(im.id)
        kind = self.collection.task_type
        if kind == "label":
            # only a label given before is preselected: Save never records a
            # class (nor the model's guess, see Accept suggestion) nobody chose
            self.label_box.setCurrentIndex(self.label_box.findText(rec.label) if rec and rec.label else -1)
            return
        layer = self._annotation_layer(shape)
        if layer is None or rec is None:
            return
        if kind == "points":
            layer.data = np.asarray(rec.value.get("points", []), float).reshape(-1, 2)
        elif kind == "contour":
            for sh in rec.value.get("shapes", []):
                layer.add(np.asarray(sh["points"], float), shape_type=sh["type"])
        elif kind == "mask" and rec.mask_ref:
            try:
                layer.data = self.store.load_mask(rec)
            except StoreError as exc:
                notify("Annotation project", str(exc), "warning")

    def _value_from_layer(self) -> dict:
        kind = self.collection.task_type
        layer = self.viewer.layers[ANNOTATION_LAYER] \
            if ANNOTATION_LAYER in self.viewer.layers else None
        label = self.label_box.currentText() or None
        if kind == "points":
            pts = np.asarray(layer.data if layer is not None else np.zeros((0, 2)))
            return {"points": pts[:, -2:].tolist(),
                    "labels": [label] * len(pts) if label else []}
        if kind == "contour":
            shapes = []
            if layer is not None:
                for data, st in zip(layer.data, layer.shape_type):
                    shapes.append({"type": st, "points": np.asarray(data)[:, -2:].tolist(),
                                   "label": label})
            return {"shapes": shapes}
        raise AssertionError(kind)

    # ---------------------------------------------------------------- save
    def save(self, label: str | None = None, advance: bool = False,
             source: str | None = None) -> bool:
        """Write the current image's annotation to the store now."""
        if self.store is None or self.collection is None or self.current < 0:
            notify("Annotation project", "open a project and a collection first")
            return False
        im = self.images[self.current]
        spent = time.monotonic() - self._shown_at
        kind = self.collection.task_type
        try:
            if kind == "label":
                label = label if label is not None else self.label_box.currentText()
                if not label:
                    raise StoreError("choose a label first (drop-down or keys 1-9): nothing was saved")
                pred = self.predictions.get(im.id)
                src = source or review_source(pred.label if pred else None, label)
                rec = self.store.annotate(self.me, self.collection.name, im.id,
                                          label=label, source=src, time_spent=spent)
                self.label_box.setCurrentText(label)
            elif kind == "mask":
                layer = self.viewer.layers[ANNOTATION_LAYER] \
                    if ANNOTATION_LAYER in self.viewer.layers else None
                if layer is None:
                    raise StoreError("no label layer to save (the image is missing?)")
                rec = self.store.save_mask(self.me, self.collection.name, im.id,
                                           np.asarray(layer_array(layer)[0]), time_spent=spent)
            else:
                rec = self.store.annotate(self.me, self.collection.name, im.id,
                                          self._value_from_layer(), time_spent=spent)
        except StoreError as exc:
            notify("Annotation project", f"not saved: {exc}", "error")
            self._say(f"not saved: {exc}")
            return False
        self.done.add(im.id)
        self.mine[im.id] = rec
        self._say(f"saved {Path(im.uri).name} ({spent:.1f} s)")
        self._refresh()
        if advance:
            self.next_todo()
        return True

    def accept_suggestion(self) -> bool:
        pred = self.predictions.get(self.images[self.current].id) if self.current >= 0 else None
        if pred is None or pred.label is None:
            notify("Annotation project", "no model suggestion for this image")
            return False
        return self.save(label=pred.label, advance=True, source="accepted-model")

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt)
        if self.store is not None:
            self.store.close()
        super().closeEvent(event)


class StoreAdminWidget(QWidget):
    """Admin panel: users, templates, collections, assignments and reports."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.store: Store | None = None
        self.location = QLineEdit()
        self.location.setPlaceholderText("project folder or database URL")
        self.open_btn = QPushButton("Open")
        self.admin = QComboBox()

        self.user_name = QLineEdit()
        self.user_role = QComboBox()
        self.user_role.addItems(list(ROLES)[::-1])
        self.user_expertise = QLineEdit()
        self.user_expertise.setPlaceholderText("expertise tags, comma separated")
        self.add_user_btn = QPushButton("Add user")

        self.tpl_name = QLineEdit()
        self.tpl_type = QComboBox()
        self.tpl_type.addItems(list(TASK_TYPES))
        self.tpl_labels = QLineEdit()
        self.tpl_labels.setPlaceholderText("labels, comma separated")
        self.add_tpl_btn = QPushButton("Add template")

        self.coll_name = QLineEdit()
        self.coll_tpl = QComboBox()
        self.coll_images = QLineEdit()
        self.coll_images.setPlaceholderText("folder/*.tif (glob) or one path per ;")
        self.add_coll_btn = QPushButton("Add collection / images")

        self.assign_coll = QComboBox()
        self.assign_user = QComboBox()
        self.assign_btn = QPushButton("Assign")
        self.report_btn = QPushButton("Report")
        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.runner = JobRunner()

        form = QFormLayout(self)
        form.addRow("project", _row(self.location, self.open_btn))
        form.addRow("acting admin", self.admin)
        form.addRow(QLabel("<b>users</b>"))
        form.addRow("name", self.user_name)
        form.addRow("role", self.user_role)
        form.addRow("expertise", self.user_expertise)
        form.addRow(self.add_user_btn)
        form.addRow(QLabel("<b>task templates</b>"))
        form.addRow("name", self.tpl_name)
        form.addRow("type", self.tpl_type)
        form.addRow("labels", self.tpl_labels)
        form.addRow(self.add_tpl_btn)
        form.addRow(QLabel("<b>collections</b>"))
        form.addRow("name", self.coll_name)
        form.addRow("template", self.coll_tpl)
        form.addRow("images", self.coll_images)
        form.addRow(self.add_coll_btn)
        form.addRow(QLabel("<b>assignments and reports</b>"))
        form.addRow("collection", self.assign_coll)
        form.addRow("annotator", self.assign_user)
        form.addRow(_row(self.assign_btn, self.report_btn))
        form.addRow(self.report)
        form.addRow(self.runner.native)
        fit_dock(self)

        self.open_btn.clicked.connect(lambda: self.open_project(self.location.text()))
        self.add_user_btn.clicked.connect(self.add_user)
        self.add_tpl_btn.clicked.connect(self.add_template)
        self.add_coll_btn.clicked.connect(self.add_collection)
        self.assign_btn.clicked.connect(self.assign)
        self.report_btn.clicked.connect(self.run_report)

    def open_project(self, location: str) -> bool:
        try:
            store = _open_store(location)
        except StoreError as exc:
            notify("Project admin", str(exc), "error")
            return False
        if self.store is not None:
            self.store.close()
        self.store = store
        self.location.setText(str(location))
        self._reload()
        return True

    def _reload(self) -> None:
        s = self.store
        users = s.users()
        keep = self.admin.currentText()
        self.admin.clear()
        self.admin.addItems([u.name for u in users if u.role == "admin"])
        if keep:
            self.admin.setCurrentText(keep)
        self.assign_user.clear()
        self.assign_user.addItems([u.name for u in users])
        self.coll_tpl.clear()
        self.coll_tpl.addItems([t.name for t in s.templates()])
        self.assign_coll.clear()
        if self.admin.currentText():
            self.assign_coll.addItems([c.name for c in s.collections(self.admin.currentText())])

    def _do(self, what: str, fn) -> bool:
        if self.store is None:
            notify("Project admin", "open a project first")
            return False
        try:
            fn()
        except (StoreError, ValueError) as exc:
            notify("Project admin", f"{what}: {exc}", "error")
            return False
        self._reload()
        notify("Project admin", f"{what}: done")
        return True

    def add_user(self) -> bool:
        tags = [t.strip() for t in self.user_expertise.text().split(",") if t.strip()]
        return self._do("add user", lambda: self.store.add_user(
            self.admin.currentText(), self.user_name.text(), self.user_role.currentText(),
            tags))

    def add_template(self) -> bool:
        labels = [t.strip() for t in self.tpl_labels.text().split(",") if t.strip()]
        return self._do("add template", lambda: self.store.add_template(
            self.admin.currentText(), self.tpl_name.text().strip(),
            self.tpl_type.currentText(), labels))

    def _image_list(self) -> list[str]:
        return expand_images(self.coll_images.text().split(";"))

    def add_collection(self) -> bool:
        def go():
            me, name = self.admin.currentText(), self.coll_name.text().strip()
            images = self._image_list()
            if name in {c.name for c in self.store.collections(me)}:
                self.store.add_images(me, name, images)
            else:
                self.store.add_collection(me, name, self.coll_tpl.currentText(),
                                          images=images)
        return self._do("add collection", go)

    def assign(self) -> bool:
        return self._do("assign", lambda: self.store.assign(
            self.admin.currentText(), self.assign_coll.currentText(),
            self.assign_user.currentText()))

    def run_report(self):
        if self.store is None or not self.assign_coll.currentText():
            notify("Project admin", "open a project and pick a collection")
            return None
        store, me, coll = self.store, self.admin.currentText(), self.assign_coll.currentText()

        def job():
            from expertloop.engine.jobs import Progress

            yield Progress(0, 1, f"report of {coll}")
            rep = store.report(me, coll)
            yield Progress(1, 1, "done")
            return rep

        return self.runner.start(job(), description=f"report {coll}",
                                 on_result=lambda rep: self.report.setPlainText(
                                     format_report(rep)))

