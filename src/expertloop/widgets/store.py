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
from dataclasses import dataclass
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

from expertloop.engine.jobs import Progress
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
from expertloop.widgets._poll import Poller, marks_snapshot

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


# The admin panel writes on the GUI thread (one short transaction per action),
# so a write never waits long for another process's lock: after this many
# seconds it fails with "try again" instead of freezing the viewer. The
# annotation dock works in a worker thread and may wait longer.
GUI_LOCK_TIMEOUT = 2.0
WORKER_LOCK_TIMEOUT = 15.0
#: how often the annotation dock looks for annotations saved elsewhere (seconds)
LIVE_SECONDS = 2.0
#: files checked between two progress records when a collection opens
CHECK_STEP = 100


def _open_store(location: str, create_as: str | None = None, *,
                lock_timeout: float = GUI_LOCK_TIMEOUT, on_wait=show_info) -> Store:
    location = location.strip()
    if not location:
        raise StoreError("type a project folder (or a database URL) first")
    if create_as is not None:
        return Store.create(location, admin=create_as, lock_timeout=lock_timeout,
                            on_wait=on_wait)
    return Store.open(location, lock_timeout=lock_timeout, on_wait=on_wait)


# ------------------------------------------------------------------ jobs
# The dock's store reads, file checks, image reads and saves are engine-style
# jobs (generators of Progress) run by its JobRunner, off the GUI thread.
@dataclass
class _Loaded:
    """What the dock shows of one collection, read in the worker."""

    me: str
    info: Any  # CollectionInfo
    admin: bool
    images: list
    records: list
    state: tuple
    predictions: dict
    missing: set


def _open_job(location: str, create_as: str | None):
    yield Progress(0, 0, f"opening {location.strip()}")
    store = _open_store(location, create_as, lock_timeout=WORKER_LOCK_TIMEOUT, on_wait=None)
    try:
        return store, [u.name for u in store.users()]
    except BaseException:
        store.close()
        raise


def _user_job(store: Store, me: str):
    yield Progress(0, 0, f"collections of {me}")
    out = []
    for info in store.collections(me):
        prog = store.progress(me, info.name).get(me)
        done = f"{prog['done']}/{prog['total']}" if prog else f"-/{info.n_images}"
        out.append((f"{info.name} ({done})", info.name))
    return me, out


def _collection_job(store: Store, me: str, name: str):
    yield Progress(0, 0, f"reading collection {name}")
    info = store.collection(me, name)
    admin = store.user(me).role == "admin"
    who = None if admin else me  # annotators see their own annotations only
    state = store.annotation_state(me, name, annotator=who)  # before the records
    records = store.search(me, collection=name, annotator=who)
    images = store.images(me, name)
    predictions = store.predictions(me, name)
    missing, n = set(), len(images)
    for k, im in enumerate(images):
        if k % CHECK_STEP == 0:
            yield Progress(k, n, f"checking the files of {name}: {k}/{n}")
        path = local_path(im.uri)
        if path is not None and not path.exists():
            missing.add(im.id)
    yield Progress(n, n, f"{name}: {n} images")
    return _Loaded(me, info, admin, images, records, state, predictions, missing)


def _image_job(store: Store, im, missing: bool, rec, kind: str):
    """The image's pixels (and its saved mask) for the viewer."""
    from expertloop.io import read_image

    name = Path(im.uri).name or im.uri
    yield Progress(0, 1, f"reading {name}")
    out: dict[str, Any] = {"data": None, "meta": {}, "mask": None, "problem": None}
    path = local_path(im.uri)
    if missing or path is None:
        out["problem"] = f"{im.uri}: {'missing on disk' if path else 'remote, not shown'}"
    else:
        try:
            data, meta, _ = read_image(path)[0].as_layer_data()
            out["data"], out["meta"] = data, {k: v for k, v in meta.items() if k != "name"}
        except Exception as exc:  # unreadable file: say so, keep going
            out["problem"] = f"cannot read {im.uri}: {exc}"
    if kind == "mask" and rec is not None and rec.mask_ref:
        try:
            out["mask"] = store.load_mask(rec)
        except StoreError as exc:
            out["problem"] = str(exc)
    yield Progress(1, 1, f"reading {name}")
    return out


def _save_job(store: Store, me: str, collection: str, kind: str, image_id: int,
              payload: dict, spent: float):
    yield Progress(0, 1, "saving")
    if kind == "mask":
        rec = store.save_mask(me, collection, image_id, payload["mask"], time_spent=spent)
    else:
        rec = store.annotate(me, collection, image_id, payload.get("value"),
                             label=payload.get("label"), source=payload.get("source", "manual"),
                             time_spent=spent)
    yield Progress(1, 1, "saved")
    return rec


def _changes(store: Store, me: str, name: str, who: str | None, last: tuple):
    """(fingerprint, records) when the collection's annotations changed, else None."""
    state = store.annotation_state(me, name, annotator=who)
    if state == last:
        return None
    return state, store.search(me, collection=name, annotator=who)


def _describe(rec, kind: str) -> str:
    if kind == "label":
        return str(rec.label)
    if kind == "points":
        return f"{len(rec.value.get('points', []))} points"
    if kind == "contour":
        return f"{len(rec.value.get('shapes', []))} shapes"
    return "mask"


class AnnotationProjectWidget(QWidget):
    """Annotate the images of the collections assigned to you.

    Reading the project, checking its files, reading images and saving run in
    the dock's job runner (progress, Cancel). While a collection is open, a
    poller looks every ``LIVE_SECONDS`` for annotations saved elsewhere (the
    web service, another napari) and shows them: admins see everyone's, an
    annotator their own. Unsaved edits of the current image are never
    replaced by such an update.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.store: Store | None = None
        self.collection = None  # CollectionInfo
        self.admin = False
        self.images: list = []
        self.done: set[int] = set()
        self.saving: set[int] = set()
        self.mine: dict = {}
        self.others: dict[int, dict] = {}
        self.missing: set[int] = set()
        self.predictions: dict = {}
        self.current = -1
        self._shown_row = -1  # the row whose image and annotation the viewer shows
        self._shown_value: Any = None  # the annotation as loaded (to see unsaved edits)
        self._shown_at = time.monotonic()
        self._gen = 0  # bumped per collection: late results of an older one are dropped
        self._state: tuple | None = None
        self._writes = 0  # this dock's saves started and ended (live reads older are dropped)
        self._shown_shape = None
        self._layer_gen = -1  # the collection whose image layer is shown
        self._queue: list[tuple] = []
        self._running_kind: str | None = None

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
        self.progress_lbl.setWordWrap(True)
        self.list = QListWidget()
        self.list.setMinimumHeight(120)
        self.prev_btn = QPushButton("◀ Prev")
        self.next_btn = QPushButton("Next ▶")
        self.todo_btn = QPushButton("Next to do")
        self.suggestion = QLabel("")
        self.others_lbl = QLabel("")
        self.others_lbl.setWordWrap(True)
        self.label_box = QComboBox()
        self.label_box.setPlaceholderText("choose a label")  # nothing preselected
        self.keys_lbl = QLabel("")  # the 1-9 key map, shown in the dock
        self.keys_lbl.setWordWrap(True)
        self.save_btn = QPushButton("Save")
        self.accept_btn = QPushButton("Accept suggestion")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.live_lbl = QLabel("")
        self.live_lbl.setWordWrap(True)
        self.runner = JobRunner()
        self.poller = Poller(self._poll_check, self._changed_elsewhere, interval=LIVE_SECONDS,
                             on_error=lambda exc: self.live_lbl.setText(
                                 f"live updates: {exc}"), parent=self)

        form = QFormLayout()
        form.addRow("project", _row(self.location, self.open_btn))
        form.addRow("new project", _row(self.me_new, self.create_btn))
        form.addRow("I am", self.user)
        form.addRow("collection", self.coll)
        self.tools = QGroupBox("annotation")
        tl = QFormLayout(self.tools)
        tl.addRow("model says", self.suggestion)
        tl.addRow(self.others_lbl)
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
        lay.addWidget(self.live_lbl)
        lay.addWidget(self.runner.native)
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

    # ---------------------------------------------------------------- jobs
    @property
    def busy(self) -> bool:
        """A job is running or waiting (tests wait for ``not busy``)."""
        return self.runner.running or bool(self._queue)

    def wait(self, timeout: float = 60.0) -> bool:
        """For scripts and the napari console: run the event loop until the queued
        jobs are done (True) or ``timeout`` seconds passed (False)."""
        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self.busy and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return not self.busy

    def _submit(self, kind: str, job, description: str, on_result, on_error=None) -> None:
        """Queue one job; a newer load or image read replaces a waiting (or running) one."""
        if kind != "save":
            stale = [e for e in self._queue if e[0] == kind or (kind != "show" and e[0] == "show")]
            for entry in stale:
                entry[1].close()
                self._queue.remove(entry)
            if self._running_kind == kind:
                self.runner.cancel()
        self._queue.append((kind, job, description, on_result, on_error))
        self._next_job()

    def _next_job(self) -> None:
        if self.runner.running or not self._queue:
            return
        kind, job, description, on_result, on_error = self._queue.pop(0)
        self._running_kind = kind
        worker = self.runner.start(job, description=description, on_result=on_result,
                                   on_error=on_error, on_finished=self._job_finished)
        if worker is None:  # cannot happen: the runner was idle
            self._running_kind = None

    def _job_finished(self) -> None:
        self._running_kind = None
        self._next_job()

    # ---------------------------------------------------------------- project
    def open_project(self, location: str, create_as: str | None = None) -> bool:
        """Open (or create) the project in the worker; False if refused at once."""
        if create_as is not None and not create_as.strip():
            notify("Annotation project", "type your name to create a project", "error")
            return False
        if not location.strip():
            notify("Annotation project", "type a project folder (or a database URL) first",
                   "error")
            return False
        name = create_as.strip() if create_as else None
        self._submit("open", _open_job(str(location), name), f"opening {location}",
                     on_result=lambda res: self._opened(str(location), name, *res),
                     on_error=lambda exc: self._say(f"not opened: {exc}"))
        return True

    def _opened(self, location: str, create_as: str | None, store: Store,
                users: list[str]) -> None:
        self.poller.stop()
        if self.store is not None:
            self.store.close()
        self.store = store
        self.location.setText(location)
        self.user.blockSignals(True)
        self.user.clear()
        self.user.addItems(users)
        if create_as:
            self.user.setCurrentText(create_as)
        self.user.blockSignals(False)
        self._user_changed()
        self._say(f"opened {store.url_safe}")

    @property
    def me(self) -> str:
        return self.user.currentText()

    def set_user(self, name: str) -> None:
        self.user.setCurrentText(name)

    def _user_changed(self, _name: str = "") -> None:
        self.poller.stop()
        if self.store is None or not self.me:
            return
        self._submit("user", _user_job(self.store, self.me), f"collections of {self.me}",
                     on_result=self._user_loaded)

    def _user_loaded(self, result) -> None:
        me, items = result
        if me != self.me:
            return
        self.coll.blockSignals(True)
        self.coll.clear()
        for text, name in items:
            self.coll.addItem(text, name)
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
        self.poller.stop()
        self._gen += 1
        self.list.blockSignals(True)
        self.list.clear()
        self.list.blockSignals(False)
        self.current = self._shown_row = -1
        self.collection, self.images = None, []
        self._set_tools(None)
        if self.store is None or not name:
            self.progress_lbl.setText("no collection")
            return
        self.progress_lbl.setText(f"opening {name}...")
        self._submit("load", _collection_job(self.store, self.me, name), f"opening {name}",
                     on_result=self._collection_loaded)

    def _collection_loaded(self, data: _Loaded) -> None:
        if data.me != self.me or data.info.name != self.coll.currentData():
            return  # the user picked something else meanwhile
        self._gen += 1
        self.collection, self.admin, self.images = data.info, data.admin, data.images
        self.predictions, self.missing, self._state = data.predictions, data.missing, data.state
        self.mine, self.others, self.saving = {}, {}, set()
        self._take_records(data.records)
        self.list.blockSignals(True)
        for im in self.images:
            self.list.addItem(self._item_text(im))
        self.list.blockSignals(False)
        self._set_tools(self.collection)
        if self.missing:
            notify("Annotation project", f"{len(self.missing)} image(s) of "
                   f"{data.info.name!r} are missing on disk (shown grey)", "warning")
        self._refresh()
        self.live_lbl.setText(f"live: watching {data.info.name} for annotations saved elsewhere")
        self.poller.start()
        if self.images:
            first_todo = next((i for i, im in enumerate(self.images)
                               if im.id not in self.done and im.id not in self.missing), 0)
            self.go(first_todo)

    # ---------------------------------------------------------------- live
    def _poll_check(self):
        """Runs in the poller's worker thread."""
        store, info, last = self.store, self.collection, self._state
        epoch = (self._gen, self._writes)
        if store is None or info is None:
            return None
        me = self.me
        got = _changes(store, me, info.name, None if self.admin else me, last)
        return None if got is None else (epoch, me, *got)

    def _changed_elsewhere(self, result) -> None:
        epoch, me, state, records = result
        if epoch != (self._gen, self._writes) or self.saving or me != self.me \
                or self.collection is None:
            return  # read before this dock's own latest save: the next check reads again
        self._state = state
        before_mine, before_others = self.mine, self.others
        self._take_records(records)
        arrived = sorted({r.annotator for iid, by in self.others.items() for r in by.values()
                          if (old := before_others.get(iid, {}).get(r.annotator)) is None
                          or old.updated_at != r.updated_at})
        changed_mine = {iid for iid in set(before_mine) | set(self.mine)
                        if (before_mine.get(iid) and before_mine[iid].updated_at)
                        != (self.mine.get(iid) and self.mine[iid].updated_at)}
        news = []
        if arrived:
            news.append("new annotations from " + ", ".join(arrived))
        if changed_mine:
            news.append(f"{len(changed_mine)} of yours changed elsewhere")
        if 0 <= self.current < len(self.images) and self.images[self.current].id in changed_mine:
            if self._shown_row == self.current and not self._edited():
                self._reload_current()
            else:
                news.append("your annotation of this image changed elsewhere: your unsaved "
                            "edits are kept (Save writes them over it)")
        for i, im in enumerate(self.images):
            self.list.item(i).setText(self._item_text(im))
        self._refresh()
        self._show_others()
        if news:
            self.live_lbl.setText(f"live ({time.strftime('%H:%M:%S')}): " + "; ".join(news))

    def _take_records(self, records) -> None:
        me = self.me
        self.mine = {r.image_id: r for r in records if r.annotator == me}
        others: dict[int, dict] = {}
        for r in records:
            if r.annotator != me:
                others.setdefault(r.image_id, {})[r.annotator] = r
        self.others = others
        self.done = set(self.mine)

    def _item_text(self, im) -> str:
        name = Path(im.uri).name or im.uri
        by = self.others.get(im.id)
        if not by:
            return name
        kind = self.collection.task_type if self.collection is not None else "label"
        return f"{name}  [" + ", ".join(f"{who}: {_describe(r, kind)}"
                                        for who, r in sorted(by.items())) + "]"

    def _show_others(self) -> None:
        by = self.others.get(self.images[self.current].id, {}) \
            if 0 <= self.current < len(self.images) else {}
        kind = self.collection.task_type if self.collection is not None else "label"
        self.others_lbl.setText("others: " + (", ".join(f"{who}: {_describe(r, kind)}"
                                                        for who, r in sorted(by.items()))
                                              or "none yet"))
        self.others_lbl.setVisible(self.admin)

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
        text = f"{d}/{n} annotated by {self.me}{miss}"
        if self.admin:
            counts: dict[str, int] = {}
            for by in self.others.values():
                for who in by:
                    counts[who] = counts.get(who, 0) + 1
            if counts:
                text += "; " + ", ".join(f"{who} {k}/{n}" for who, k in sorted(counts.items()))
        self.progress_lbl.setText(text)
        idx = self.coll.currentIndex()
        if idx >= 0 and self.collection is not None:
            self.coll.setItemText(idx, f"{self.collection.name} ({d}/{n})")

    def _row_clicked(self, row: int) -> None:
        if row != self.current and row >= 0:
            self.go(row)

    def go(self, i: int) -> None:
        if not self.images or self.store is None:
            return
        i = max(0, min(i, len(self.images) - 1))
        self.current = i
        self.list.blockSignals(True)
        self.list.setCurrentRow(i)
        self.list.blockSignals(False)
        im = self.images[i]
        pred = self.predictions.get(im.id)
        self.suggestion.setText("" if pred is None else
                                f"{pred.label} ({pred.confidence:.2f})"
                                if pred.confidence is not None else str(pred.label))
        self.accept_btn.setEnabled(pred is not None and pred.label is not None)
        self._refresh()
        self._show_others()
        if self.collection.task_type == "label":  # no layer needed: at once
            self._load_annotation(im, None)
        gen = self._gen
        self._submit("show", _image_job(self.store, im, im.id in self.missing, self.mine.get(im.id),
                                        self.collection.task_type),
                     f"reading {Path(im.uri).name or im.uri}",
                     on_result=lambda out, row=i: self._show(row, gen, out))

    def next_todo(self) -> None:
        n = len(self.images)
        for k in range(1, n + 1):
            j = (self.current + k) % n
            iid = self.images[j].id
            if iid not in self.done and iid not in self.saving and iid not in self.missing:
                self.go(j)
                return
        self._say("nothing left to do in this collection")

    def _show(self, row: int, gen: int, out: dict) -> None:
        if row != self.current or gen != self._gen:
            return  # the user moved on meanwhile
        im, data, meta = self.images[row], out["data"], out["meta"]
        old = self.viewer.layers[IMAGE_LAYER] if IMAGE_LAYER in self.viewer.layers else None
        # the next image of the same collection goes into the same layer (a new
        # layer each time costs the GUI thread far more than new pixels)
        reuse = (old is not None and data is not None and self._layer_gen == gen
                 and not isinstance(data, list) and not old.multiscale
                 and old.rgb == bool(meta.get("rgb")) and old.data.ndim == data.ndim)
        if old is not None and not reuse:
            self.viewer.layers.remove(old)
        shape = None
        if out["problem"]:
            if data is None and (im.id in self.missing or local_path(im.uri) is None):
                self._say(out["problem"])
            else:
                notify("Annotation project", out["problem"], "warning")
        if reuse:
            old.data = data
            old.scale = meta.get("scale", np.ones(data.ndim - (1 if old.rgb else 0)))
            old.translate = meta.get("translate", np.zeros(len(old.scale)))
            if not old.rgb:
                old.reset_contrast_limits()
            shape = data.shape[:-1] if old.rgb else data.shape
        elif data is not None:
            layer = self.viewer.add_image(data, name=IMAGE_LAYER, **meta)
            shape = layer.data.shape[:-1] if layer.rgb else layer.data.shape
            self.viewer.layers.move(self.viewer.layers.index(layer), 0)
            self._bind_keys(layer)
            self._layer_gen = gen
        self._shown_shape = shape
        if self.collection.task_type != "label":  # (a label is shown by go at once)
            self._load_annotation(im, shape, out["mask"])
        self._shown_row = row
        self._shown_at = time.monotonic()

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
        self.others_lbl.setVisible(info is not None and self.admin)
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

    def _load_annotation(self, im, shape, mask=None) -> None:
        rec = self.mine.get(im.id)
        kind = self.collection.task_type
        if kind == "label":
            # only a label given before is preselected: Save never records a
            # class (nor the model's guess, see Accept suggestion) nobody chose
            self.label_box.setCurrentIndex(self.label_box.findText(rec.label) if rec and rec.label else -1)
            self._shown_value = self.label_box.currentText() or None
            return
        layer = self._annotation_layer(shape)
        if layer is not None and rec is not None:
            if kind == "points":
                layer.data = np.asarray(rec.value.get("points", []), float).reshape(-1, 2)
            elif kind == "contour":
                for sh in rec.value.get("shapes", []):
                    layer.add(np.asarray(sh["points"], float), shape_type=sh["type"])
            elif kind == "mask" and mask is not None:
                layer.data = mask
        self._shown_value = marks_snapshot(layer, kind) if kind in ("points", "contour") else None

    def _reload_current(self) -> None:
        """Show the current image's annotation as saved elsewhere (in the same layer)."""
        im, kind = self.images[self.current], self.collection.task_type
        layer, rec = self._annotation(), self.mine.get(im.id)
        if kind == "label" or layer is None:
            self._load_annotation(im, self._shown_shape)
            return
        value = rec.value if rec is not None else {}
        if kind == "points":
            layer.data = np.asarray(value.get("points", []), float).reshape(-1, 2)
        elif kind == "contour":
            layer.selected_data = set(range(layer.nshapes))
            layer.remove_selected()
            for sh in value.get("shapes", []):
                layer.add(np.asarray(sh["points"], float), shape_type=sh["type"])
        self._shown_value = marks_snapshot(layer, kind)

    def _annotation(self):
        return self.viewer.layers[ANNOTATION_LAYER] \
            if ANNOTATION_LAYER in self.viewer.layers else None

    def _edited(self) -> bool:
        """Whether the current image's annotation differs from what was loaded."""
        kind = self.collection.task_type
        if kind == "label":
            return (self.label_box.currentText() or None) != self._shown_value
        if kind == "mask":
            return True  # a painted mask is never replaced by a live update
        return marks_snapshot(self._annotation(), kind) != self._shown_value

    def _value_from_layer(self) -> dict:
        kind = self.collection.task_type
        layer = self._annotation()
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
    def _refuse(self, message: str) -> bool:
        notify("Annotation project", f"not saved: {message}", "error")
        self._say(f"not saved: {message}")
        return False

    def save(self, label: str | None = None, advance: bool = False,
             source: str | None = None) -> bool:
        """Save the current image's annotation (in the worker); False if refused at once.

        With ``advance`` the dock moves on to the next image to do at once;
        a save the store refuses is reported and its image stays to do.
        """
        if self.store is None or self.collection is None or self.current < 0:
            notify("Annotation project", "open a project and a collection first")
            return False
        if self._shown_row != self.current:
            return self._refuse("the image is still loading: nothing was saved")
        im = self.images[self.current]
        spent = time.monotonic() - self._shown_at
        kind = self.collection.task_type
        if kind == "label":
            label = label if label is not None else self.label_box.currentText()
            if not label:
                return self._refuse("choose a label first (drop-down or keys 1-9): "
                                    "nothing was saved")
            pred = self.predictions.get(im.id)
            payload = {"label": label,
                       "source": source or review_source(pred.label if pred else None, label)}
            self.label_box.setCurrentText(label)
        elif kind == "mask":
            layer = self._annotation()
            if layer is None:
                return self._refuse("no label layer to save (the image is missing?)")
            payload = {"mask": np.array(layer_array(layer)[0])}  # a copy: painting goes on
        else:
            payload = {"value": self._value_from_layer()}
        self.saving.add(im.id)
        self._writes += 1
        gen, name = self._gen, Path(im.uri).name or im.uri
        self._submit("save", _save_job(self.store, self.me, self.collection.name, kind, im.id,
                                       payload, spent), f"saving {name}",
                     on_result=lambda rec: self._saved(gen, im, rec, spent),
                     on_error=lambda exc: self._not_saved(gen, im, exc))
        if advance:
            self.next_todo()
        return True

    def _saved(self, gen: int, im, rec, spent: float) -> None:
        self._writes += 1
        if gen != self._gen:
            return  # another collection is open now (the store has it)
        self.saving.discard(im.id)
        self.done.add(im.id)
        self.mine[im.id] = rec
        if 0 <= self.current < len(self.images) and self.images[self.current].id == im.id \
                and self.collection.task_type != "mask":
            self._shown_value = (rec.label if self.collection.task_type == "label"
                                 else marks_snapshot(self._annotation(), self.collection.task_type))
        self._say(f"saved {Path(im.uri).name} ({spent:.1f} s)")
        self._refresh()

    def _not_saved(self, gen: int, im, exc: BaseException) -> None:
        self._writes += 1
        if gen == self._gen:
            self.saving.discard(im.id)
            self._refresh()
        self._say(f"not saved ({Path(im.uri).name}): {exc}")

    def accept_suggestion(self) -> bool:
        pred = self.predictions.get(self.images[self.current].id) if self.current >= 0 else None
        if pred is None or pred.label is None:
            notify("Annotation project", "no model suggestion for this image")
            return False
        return self.save(label=pred.label, advance=True, source="accepted-model")

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt)
        self.poller.stop()
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

