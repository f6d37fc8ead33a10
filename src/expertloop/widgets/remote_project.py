"""'Remote annotation project' dock: annotate on an ``expertloop serve`` server.

The napari counterpart of the web annotation page, for a project that lives on
a server: type the server's address and your API token (made on the server's
Account page or with ``expertloop store token``), connect, pick a collection,
and label (or point / outline) the images the server renders for you. Every
request is authenticated by the token and checked by the server, so a napari
user is who the token says, not who they declare. Network calls run off the GUI
thread through the shared job runner.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.utils.notifications import show_info
from qtpy.QtGui import QBrush, QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from expertloop.engine.jobs import Progress
from expertloop.widgets._common import fit_dock
from expertloop.widgets._jobs import JobRunner
from expertloop.widgets._poll import Poller, marks_snapshot

if TYPE_CHECKING:
    import napari

IMAGE_LAYER = "remote image"
MARKS_LAYER = "remote annotation"
DONE, TODO = "#2e7d32", "#c62828"
#: how often the dock asks the server whether annotations changed (seconds)
LIVE_SECONDS = 3.0


def _request_job(message: str, fn, *args, **kwargs):
    """One network request as a job (so it runs in the runner's worker thread)."""
    yield Progress(0, 1, message)
    out = fn(*args, **kwargs)
    yield Progress(1, 1, message)
    return out


def _marks_value(kind: str, layer, label: str | None) -> dict:
    """A Points / Shapes layer as the store's value, in (row, col) image pixels."""
    if kind == "points":
        pts = np.zeros((0, 2)) if layer is None else np.asarray(layer.data)[:, -2:]
        return {"points": pts.tolist(), "labels": [label] * len(pts) if label else []}
    shapes = [] if layer is None else [
        {"type": kind_, "points": np.asarray(data)[:, -2:].tolist(), "label": label}
        for data, kind_ in zip(layer.data, layer.shape_type)]
    return {"shapes": shapes}


class RemoteProjectWidget(QWidget):
    """Connect to a served annotation project with an API token and annotate."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.remote = None  # RemoteProject
        self.me: dict = {}
        self.collections: list[dict] = []
        self.images: list[dict] = []
        self.done: dict[int, dict] = {}
        self.current = -1
        self._shown_at = time.monotonic()

        self.url = QLineEdit()
        self.url.setPlaceholderText("https://annotate.lab.example")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("API token (elt_...)")
        self.connect_btn = QPushButton("Connect")
        self.who = QLabel("not connected")
        self.coll = QComboBox()
        self.list = QListWidget()
        self.list.setMinimumHeight(100)
        self.label_box = QComboBox()
        self.save_btn = QPushButton("Save and next")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.live_lbl = QLabel("")
        self.live_lbl.setWordWrap(True)
        self.runner = JobRunner()
        self._etag: str | None = None
        self._shown: tuple = (None, None)  # (label, marks) as loaded: to see unsaved edits
        self.poller = Poller(self._poll_check, self._changed_elsewhere, interval=LIVE_SECONDS,
                             on_error=lambda exc: self.live_lbl.setText(
                                 f"live updates: {exc}"), parent=self)

        form = QFormLayout()
        form.addRow("server", self.url)
        form.addRow("token", self.token)
        form.addRow("", self.connect_btn)
        form.addRow("user", self.who)
        form.addRow("collection", self.coll)
        form.addRow("label", self.label_box)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.list)
        row = QHBoxLayout()
        row.addWidget(self.save_btn)
        lay.addLayout(row)
        lay.addWidget(self.status)
        lay.addWidget(self.live_lbl)
        lay.addWidget(self.runner.native)
        lay.addStretch(1)
        fit_dock(self)

        self.connect_btn.clicked.connect(self.connect_server)
        self.coll.currentIndexChanged.connect(self._collection_changed)
        self.list.currentRowChanged.connect(self.show_image)
        self.save_btn.clicked.connect(lambda: self.save())

    # ------------------------------------------------------------ helpers
    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _run(self, message: str, fn, *args, on_result, **kwargs) -> None:
        self.runner.start(_request_job(message, fn, *args, **kwargs), description=message,
                          on_result=on_result,
                          on_error=lambda exc: self._say(f"{message}: {exc}"))

    @property
    def collection(self) -> dict | None:
        k = self.coll.currentIndex()
        return self.collections[k] if 0 <= k < len(self.collections) else None

    # ------------------------------------------------------------ connect
    # Each user action is ONE job (the runner runs one at a time): connecting also
    # loads the first collection and its first image to do; saving also loads the
    # next image.
    def connect_server(self) -> None:
        from expertloop.web.client import RemoteError, RemoteProject

        self.poller.stop()
        try:
            self.remote = RemoteProject(self.url.text(), self.token.text())
        except RemoteError as exc:
            self._say(str(exc))
            return

        def fetch(remote):
            me, colls = remote.me(), remote.collections()
            return me, colls, (_load_collection(remote, colls[0]["id"], me["name"])
                               if colls else None)

        self._run("connecting", fetch, self.remote, on_result=self._connected)

    def _connected(self, result) -> None:
        self.me, self.collections, first = result
        self.who.setText(f"{self.me['name']} ({self.me['role']})")
        self.coll.blockSignals(True)
        self.coll.clear()
        for c in self.collections:
            self.coll.addItem(f"{c['name']} ({c['task_type']}, {c['done']}/{c['total']})")
        self.coll.blockSignals(False)
        self._say(f"connected to {self.remote.url}: {len(self.collections)} collection(s)")
        if first is not None:
            self._collection_loaded(first)

    def _collection_changed(self, _index: int) -> None:
        self.poller.stop()
        c = self.collection
        if c is None or self.remote is None:
            return
        self._run("loading the collection", _load_collection, self.remote, c["id"],
                  self.me.get("name"), on_result=self._collection_loaded)

    def _collection_loaded(self, result) -> None:
        images, done, etag, row, pixels = result
        self._etag = etag
        c = self.collection
        self.label_box.clear()
        self.label_box.addItems(c["labels"])
        self.images, self.done = images, done
        self.list.blockSignals(True)
        self.list.clear()
        for im in images:
            self.list.addItem(im["meta"].get("name") or f"image {im['position'] + 1}")
        self._paint()
        if row is not None:
            self.list.setCurrentRow(row)
        self.list.blockSignals(False)
        if row is not None:
            self.current = row
            self._show_pixels(row, pixels)
        self.live_lbl.setText(f"live: watching {c['name']} for annotations saved elsewhere")
        self.poller.start()

    # ------------------------------------------------------------ live
    def _poll_check(self):
        """Runs in the poller's worker thread: a conditional GET (304 while unchanged)."""
        c, remote, etag = self.collection, self.remote, self._etag
        if c is None or remote is None or self.runner.running:
            return None
        got, new_etag = remote.annotations_if_changed(c["id"], etag)
        return None if got is None else (c["id"], new_etag, got)

    def _changed_elsewhere(self, result) -> None:
        cid, etag, records = result
        c = self.collection
        if c is None or c["id"] != cid or self.runner.running:
            return  # a request of this dock is under way: the next check reads again
        self._etag = etag
        me = self.me.get("name")
        done = {a["image_id"]: a for a in records if a["annotator"] == me}
        changed = {iid for iid in set(done) | set(self.done)
                   if (done.get(iid) or {}).get("updated_at")
                   != (self.done.get(iid) or {}).get("updated_at")}
        self.done = done
        self._paint()
        others = sorted({a["annotator"] for a in records if a["annotator"] != me})
        news = [f"{len(done)}/{len(self.images)} yours"]
        if others:
            news.append("also " + ", ".join(others))
        if 0 <= self.current < len(self.images) and self.images[self.current]["id"] in changed:
            news.append(self._update_current(done.get(self.images[self.current]["id"])))
        self.live_lbl.setText(f"live ({time.strftime('%H:%M:%S')}): " + "; ".join(
            n for n in news if n))

    def _update_current(self, rec: dict | None) -> str:
        """Show the current image's annotation changed elsewhere, unless edited here."""
        kind = self.collection["task_type"]
        layer = self.viewer.layers[MARKS_LAYER] if MARKS_LAYER in self.viewer.layers else None
        now = (self.label_box.currentText() or None, marks_snapshot(layer, kind))
        label = (rec or {}).get("label")
        if kind == "label":
            if label is None or label == now[0]:
                return ""
            if now[0] != self._shown[0]:
                return "your label of this image changed elsewhere: your choice is kept"
            self.label_box.setCurrentText(label)
            self._shown = (label, now[1])
            return f"this image is now {label} (saved elsewhere)"
        if layer is None:
            return ""
        value = (rec or {}).get("value") or {}
        if now[1] != self._shown[1]:
            return "your marks of this image changed elsewhere: your unsaved edits are kept"
        if kind == "points":
            layer.data = np.asarray(value.get("points", []), float).reshape(-1, 2)
        else:
            layer.selected_data = set(range(layer.nshapes))
            layer.remove_selected()
            for sh in value.get("shapes", []):
                layer.add(np.asarray(sh["points"], float), shape_type=sh["type"])
        self._shown = (now[0], marks_snapshot(layer, kind))
        return "this image's marks were updated (saved elsewhere)"

    def _paint(self) -> None:
        for k, im in enumerate(self.images):
            self.list.item(k).setForeground(QBrush(QColor(DONE if im["id"] in self.done
                                                          else TODO)))

    # ------------------------------------------------------------ images
    def show_image(self, row: int) -> None:
        c = self.collection
        if c is None or not 0 <= row < len(self.images):
            return
        self.current = row
        iid = self.images[row]["id"]
        self._run("loading the image", self.remote.pixels, c["id"], iid,
                  on_result=lambda px, r=row: self._show_pixels(r, px))

    def _show_pixels(self, row: int, pixels: np.ndarray) -> None:
        if row != self.current:
            return
        if IMAGE_LAYER in self.viewer.layers:
            layer = self.viewer.layers[IMAGE_LAYER]
            layer.data = pixels
            layer.rgb = pixels.ndim == 3
        else:
            self.viewer.add_image(pixels, name=IMAGE_LAYER, rgb=pixels.ndim == 3)
        kind = self.collection["task_type"]
        if MARKS_LAYER in self.viewer.layers:
            self.viewer.layers.remove(MARKS_LAYER)
        prev = self.done.get(self.images[row]["id"])
        value = prev["value"] if prev else {}
        if kind == "points":
            self.viewer.add_points(np.asarray(value.get("points", []), float).reshape(-1, 2),
                                   name=MARKS_LAYER, size=6)
        elif kind == "contour":
            layer = self.viewer.add_shapes(name=MARKS_LAYER, edge_color="yellow",
                                           face_color="transparent")
            for sh in value.get("shapes", []):
                layer.add(np.asarray(sh["points"], float), shape_type=sh["type"])
        if prev and prev.get("label") and prev["label"] in self.collection["labels"]:
            self.label_box.setCurrentText(prev["label"])
        marks = self.viewer.layers[MARKS_LAYER] if MARKS_LAYER in self.viewer.layers else None
        self._shown = (self.label_box.currentText() or None, marks_snapshot(marks, kind))
        self._shown_at = time.monotonic()
        self._say(f"image {row + 1} / {len(self.images)}"
                  + (" (saved)" if prev else ""))

    # ------------------------------------------------------------ save
    def save(self, label: str | None = None) -> bool:
        """Save the current image's annotation on the server, then show the next."""
        c = self.collection
        if c is None or not 0 <= self.current < len(self.images):
            show_info("Remote annotation project: connect and pick a collection first")
            return False
        kind = c["task_type"]
        label = label or self.label_box.currentText() or None
        if kind == "label" and not label:
            self._say("choose a label first")
            return False
        layer = self.viewer.layers[MARKS_LAYER] if MARKS_LAYER in self.viewer.layers else None
        value: dict[str, Any] = {} if kind == "label" else _marks_value(kind, layer, label)
        row, iid = self.current, self.images[self.current]["id"]
        nxt = self.images[row + 1]["id"] if row + 1 < len(self.images) else None

        def job(remote):
            rec = remote.save(c["id"], iid, label=label, value=value,
                              time_spent=time.monotonic() - self._shown_at)
            return rec, (remote.pixels(c["id"], nxt) if nxt is not None else None)

        self._run("saving", job, self.remote, on_result=lambda res, r=row: self._saved(r, *res))
        return True

    def _saved(self, row: int, rec: dict, pixels) -> None:
        self.done[self.images[row]["id"]] = {**rec, "value": {}}
        if row == self.current:
            marks = self.viewer.layers[MARKS_LAYER] if MARKS_LAYER in self.viewer.layers else None
            self._shown = (rec.get("label"), marks_snapshot(marks, self.collection["task_type"]))
        self._paint()
        self._say(f"saved image {row + 1} as {rec.get('label') or 'marks'}")
        if pixels is not None:
            self.list.blockSignals(True)
            self.list.setCurrentRow(row + 1)
            self.list.blockSignals(False)
            self.current = row + 1
            self._show_pixels(row + 1, pixels)


def _load_collection(remote, cid: int, me: str | None):
    """(images, my annotations by image id, their ETag, first row to do, its pixels)."""
    images = remote.images(cid)
    records, etag = remote.annotations_if_changed(cid)
    done = {a["image_id"]: a for a in records if a["annotator"] == me}
    if not images:
        return images, done, etag, None, None
    row = next((k for k, im in enumerate(images) if im["id"] not in done), 0)
    return images, done, etag, row, remote.pixels(cid, images[row]["id"])
