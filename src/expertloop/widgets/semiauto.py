"""Semi-automatic labelling widgets: the loop and the hard-case review queue.

* :class:`ReviewQueueWidget`: shows the queued hard cases one at a time in
  the viewer (layer ``"semiauto review"``), sorted by predicted class, with
  keyboard shortcuts (Enter/Space accept, digit keys set the class, Backspace
  or U undoes, S skips), a progress counter and the annotator's name. Each
  decision is written at once through the project's storage.
* :class:`SemiAutoWidget`: chooses the images (folder or stack layer), the
  classes, initial labels, classifier, strategy, ``t`` and the batch size;
  "Run iteration" trains and predicts in a worker and fills the queue; "Apply
  review + next batch" merges the labels and retrains. Two dock plots show
  validation accuracy vs number of labelled images and the manual fraction
  per iteration. The "Review in annotation project" group
  (:class:`~expertloop.widgets.semiauto_store.StoreReviewPanel`) sends the
  hard cases to a shared annotation project and fetches the reviewed labels.

Thin: all computing is in :mod:`expertloop.engine.semiauto`.
"""

from __future__ import annotations

import getpass
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
)
from superqt.utils import ensure_main_thread

from expertloop.engine.jobs import Progress
from expertloop.engine.semiauto.classifiers import (
    CLASSIFIERS,
    DEFAULT_CLASSIFIER,
    make_classifier,
)
from expertloop.engine.semiauto.data import (
    PROJECT_FOLDER,
    UNLABELLED,
    from_stack,
    load_images_job,
    parse_class_names,
    read_labels_csv,
)
from expertloop.engine.semiauto.loop import SemiAutoConfig, SemiAutoLoop
from expertloop.engine.semiauto.queue import ReviewQueue
from expertloop.io.semiauto_storage import FolderQueueStorage
from expertloop.widgets._common import (
    ConfigControls,
    fit_dock,
    layer_array,
    layer_by_name,
    layer_picker,
    notify,
)
from expertloop.widgets._jobs import JobRunner
from expertloop.widgets._plot import PlotWidget
from expertloop.widgets.semiauto_store import StoreReviewPanel

if TYPE_CHECKING:
    import napari

REVIEW_LAYER = "semiauto review"
DIGIT_KEYS = [str(d) for d in range(1, 10)] + ["0"]  # key "1" = first class ... "0" = tenth


def _default_annotator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment
        return ""


def _read_path_image(path: str | None):
    from expertloop.io.readers import read_image

    if not path:
        return None
    return np.asarray(read_image(path)[0].data)


class _ImagePrefetch:
    """Reads the review items' files in one background thread: the shown item's and the
    next ``AHEAD`` ones, so a key press shows the next image without file I/O on the
    GUI thread. Keeps the last ``KEEP`` reads (undo goes back to one of them)."""

    AHEAD = 3
    KEEP = 8

    def __init__(self) -> None:
        self._pool = None
        self._futures: dict[str, object] = {}  # path -> Future, oldest first

    def get(self, path: str):
        """The read of ``path`` (a Future; started now if not already)."""
        fut = self._futures.pop(path, None)
        if fut is None or (fut.done() and fut.exception() is not None):  # not read, or failed: read again
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(1, thread_name_prefix="review-prefetch")
            fut = self._pool.submit(_read_path_image, path)
        self._futures[path] = fut
        while len(self._futures) > self.KEEP:
            self._futures.pop(next(iter(self._futures))).cancel()
        return fut

    def warm(self, paths) -> None:
        for path in paths:
            if path and path not in self._futures:
                self.get(path)


class _ReviewHub:
    """What the semi-automatic labelling docks of one viewer share.

    * The review shortcuts are bound once on the viewer (and the review layer)
      and go to the *active* review widget: the one last clicked, focused or
      given a queue, so with the embedded and the standalone queue both open a
      key press is recorded by the queue (and annotator) the user works in.
    * Widgets showing the same queue refresh each other after every decision;
      the loop docks update their status line.
    * A standalone queue opening the folder of a loaded project takes that
      project's queue object (not a second copy that the loop would not see).
    """

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self._reviews: list = []  # weak references
        self._loops: list = []
        self._active = None
        self.bind_keys(viewer)

    @classmethod
    def of(cls, viewer) -> _ReviewHub:
        hub = _HUBS.get(viewer)
        if hub is None:
            hub = _HUBS[viewer] = cls(viewer)
        return hub

    @staticmethod
    def _alive(refs) -> list:
        return [w for w in (r() for r in refs) if w is not None]

    def add_review(self, widget) -> None:
        self._reviews.append(weakref.ref(widget))
        if self._active is None:
            self._active = weakref.ref(widget)

    def add_loop(self, widget) -> None:
        self._loops.append(weakref.ref(widget))

    def activate(self, widget) -> None:
        self._active = weakref.ref(widget)

    @property
    def active(self):
        return self._active() if self._active is not None else None

    def bind_keys(self, target) -> None:
        """Review shortcuts on ``target`` (the viewer, or the review layer: a layer's own
        keys, e.g. an image layer's "1"/"2" mode keys, take precedence over the viewer's)."""
        def bind(key, action, *args):
            def handler(_owner):
                widget = self.active
                if widget is not None:
                    getattr(widget, action)(*args)
            target.bind_key(key, handler, overwrite=True)

        bind("Enter", "accept")
        bind("Space", "accept")
        bind("Backspace", "undo")
        bind("u", "undo")
        bind("s", "skip")
        for k, key in enumerate(DIGIT_KEYS):
            bind(key, "set_label", k)

    def queue_changed(self, queue, source) -> None:
        """After a decision in ``source``: refresh the other widgets showing ``queue``."""
        for w in self._alive(self._reviews):
            if w is not source and w.queue is queue:
                w._refresh(show=False)
        for w in self._alive(self._loops):
            if w.loop is not None and w.loop.queue is queue:
                w._review_changed()

    def project_queue(self, folder: Path):
        """The open queue of a loaded loop whose project folder is ``folder`` (else None;
        the newest loop dock first)."""
        for w in reversed(self._alive(self._loops)):
            storage = getattr(w.loop, "storage", None)
            if w.loop is not None and w.loop.queue is not None and getattr(storage, "folder", None) is not None \
                    and Path(storage.folder).resolve() == folder.resolve():
                return w.loop.queue, w
        return None


_HUBS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _Activator:
    """Qt event filter: a mouse press or focus inside a review widget makes it the active one."""

    def __init__(self, widget) -> None:
        from qtpy.QtCore import QEvent, QObject
        from qtpy.QtWidgets import QWidget

        kinds = (QEvent.Type.MouseButtonPress, QEvent.Type.FocusIn)
        ref = weakref.ref(widget)

        class Filter(QObject):
            def eventFilter(self, _obj, event):  # noqa: N802 (Qt's name)
                w = ref()
                if w is not None and event.type() in kinds:
                    w.activate()
                return False

        self.filter = Filter(widget.native)
        for child in [widget.native, *widget.native.findChildren(QWidget)]:
            child.installEventFilter(self.filter)


class ReviewQueueWidget(Container):
    """One hard case at a time; decisions are saved immediately."""

    def __init__(self, viewer: napari.viewer.Viewer, *, standalone: bool = True) -> None:
        self._viewer = viewer
        self.queue: ReviewQueue | None = None
        self.image_for = None            # callable(collection index) -> array
        self.on_change = None            # callable() after each action
        self.annotator = LineEdit(label="annotator", value=_default_annotator())
        self.project = FileEdit(label="project folder", mode="d")
        self.open_btn = PushButton(text="Open queue")
        self.progress = Label(value="no queue")
        self.info = Label(value="")
        self.keys = Label(value="")  # the key legend: which digit is which class
        self.keys.native.setWordWrap(True)
        self.label_choice = ComboBox(label="label", choices=self._class_choices)
        self.accept_btn = PushButton(text="Accept (Enter)")
        self.set_btn = PushButton(text="Set label (digit key)")
        self.skip_btn = PushButton(text="Skip (S)")
        self.undo_btn = PushButton(text="Undo (Backspace)")
        widgets = [self.annotator]
        if standalone:
            widgets += [self.project, self.open_btn]
        widgets += [self.progress, self.info, self.keys, self.label_choice, self.accept_btn, self.set_btn,
                    self.skip_btn, self.undo_btn]
        super().__init__(widgets=widgets)
        if standalone:
            fit_dock(self)
        self.open_btn.changed.connect(self.open_project)
        self.accept_btn.changed.connect(self.accept)
        self.set_btn.changed.connect(lambda *_: self.set_label(self.label_choice.value))
        self.skip_btn.changed.connect(self.skip)
        self.undo_btn.changed.connect(self.undo)
        self.annotator.changed.connect(self._annotator_changed)
        self.empty_reason = ""  # why the queue has no item (shown instead of the item)
        self._prefetch = _ImagePrefetch()
        self._hub = _ReviewHub.of(viewer)
        self._hub.add_review(self)
        self._activator = _Activator(self)
        self._refresh()

    # ------------------------------------------------------------ setup
    def key_legend(self) -> str:
        """Which key does what, e.g. "1 = cat, 2 = dog; Enter/Space accept, S skip, Backspace undo"."""
        if self.queue is None:
            return ""
        digits = ", ".join(f"{key} = {name}" for key, name in zip(DIGIT_KEYS, self.queue.class_names))
        return f"keys: {digits}; Enter/Space accept, S skip, Backspace undo"

    def _class_choices(self, _=None):
        return list(self.queue.class_names) if self.queue is not None else []

    def activate(self) -> None:
        """Make this the widget the review keys go to (a click or focus in it does this);
        the review layer then shows this widget's current item."""
        if self._hub.active is not self:
            self._hub.activate(self)
            if self.queue is not None and self.queue.current is not None:
                self._refresh()

    def set_queue(self, queue: ReviewQueue | None, image_for=None, *, empty_reason: str = "") -> None:
        """Show ``queue`` (and take the review keys); ``image_for(index)`` gives an item's
        pixels (default: its file); ``empty_reason`` says why a queue has no item."""
        self.queue = queue
        if queue is not None:
            queue.annotator = self.annotator.value
        self.image_for = image_for
        self.empty_reason = empty_reason
        self.label_choice.reset_choices()
        self.activate()
        self._refresh()

    def open_project(self, *_) -> ReviewQueue | None:
        """Reopen the open queue of a project folder (e.g. after a crash)."""
        folder = Path(str(self.project.value))
        if not (folder / "queue.json").is_file():
            notify("Review queue", f"no open queue in {folder}")
            return None
        shared = self._hub.project_queue(folder)
        if shared is not None:  # the loop dock has this project open: review its queue, not a copy
            q, loop_widget = shared
            images = loop_widget.loop.collection.images
            self.set_queue(q, image_for=lambda i: images[i], empty_reason=loop_widget.review.empty_reason)
            return q
        q = ReviewQueue.restore(FolderQueueStorage(folder), annotator=self.annotator.value)
        if q is None:
            notify("Review queue", f"the queue in {folder} is empty")
        self.set_queue(q)
        return q

    def _annotator_changed(self, *_):
        if self.queue is not None:
            self.queue.annotator = self.annotator.value

    # ----------------------------------------------------------- actions
    def _act(self, fn) -> None:
        if self.queue is None or self.queue.current is None:
            return
        if not self.annotator.value.strip():
            notify("Review queue", "enter the annotator's name first")
            return
        self.queue.annotator = self.annotator.value  # a queue shared by two docks: who acts records
        fn()
        self._changed()

    def _changed(self) -> None:
        self._refresh()
        self._hub.queue_changed(self.queue, self)
        if self.on_change is not None:
            self.on_change()

    def accept(self, *_):
        self._act(lambda: self.queue.accept())

    def set_label(self, label):
        if self.queue is None or label is None:
            return
        if isinstance(label, int) and label >= len(self.queue.class_names):
            return  # a digit key beyond the number of classes
        self._act(lambda: self.queue.set_label(label))

    def skip(self, *_):
        self._act(lambda: self.queue.skip())

    def undo(self, *_):
        if self.queue is None:
            return
        if not self.queue.undo():
            notify("Review queue", "nothing to undo")
        self._changed()

    # ----------------------------------------------------------- display
    def _refresh(self, show: bool = True) -> None:
        """Show the queue's state; ``show``: also put the current item in the review layer."""
        q = self.queue
        enabled = q is not None and q.current is not None
        for b in (self.accept_btn, self.set_btn, self.skip_btn, self.label_choice):
            b.enabled = enabled
        self.undo_btn.enabled = q is not None
        if q is None:
            self.progress.value = "no queue"
            self.info.value = ""
            self.keys.value = ""
            return
        self.progress.value = q.progress_text()
        self.keys.value = self.key_legend()
        it = q.current
        if it is None:
            if not q.items:
                self.info.value = self.empty_reason or "no hard case in this batch: apply the review"
            else:
                self.info.value = "queue finished: apply the review"
            self._overlay().visible = False
            return
        cls = q.class_names[it.predicted]
        same = sum(1 for p, x in enumerate(q.items) if x.predicted == it.predicted and p not in q.labels)
        self.info.value = f"{it.name}: predicted {cls} ({it.confidence:.2f}); {same} left in this class"
        self.label_choice.value = cls
        if show:
            self._show_image(it)

    def _overlay(self):
        overlays = getattr(self._viewer.canvas, "overlays", None)  # napari >= 0.6
        return overlays["text"] if overlays is not None else self._viewer.text_overlay

    def _upcoming_paths(self) -> list:
        """Files of the next undecided items after the current one (what the keys show next)."""
        q = self.queue
        if q is None or q.cursor is None:
            return []
        n = len(q.items)
        nxt = (q.items[(q.cursor + d) % n] for d in range(1, n) if (q.cursor + d) % n not in q.labels)
        return [it.path for _, it in zip(range(_ImagePrefetch.AHEAD), nxt)]

    def _show_image(self, it) -> None:
        try:
            if self.image_for is not None:
                data = self.image_for(it.index)  # in memory (the loop's collection)
            elif not it.path:
                data = None
            else:  # a file: read in the prefetch thread, shown when read
                fut = self._prefetch.get(it.path)
                self._prefetch.warm(self._upcoming_paths())
                if not fut.done():
                    fut.add_done_callback(lambda _f, it=it: self._image_read(it))
                    return
                data = fut.result()
        except Exception as exc:  # unreadable file: say so, keep the queue usable
            notify("Review queue", f"cannot show {it.name}: {exc}")
            return
        if data is None:
            return
        rgb = data.ndim == 3 and data.shape[-1] in (3, 4)
        layer = layer_by_name(self._viewer, REVIEW_LAYER)
        if layer is not None and getattr(layer, "rgb", False) == rgb and layer.data.shape == data.shape:
            layer.data = data
        else:
            if layer is not None:
                self._viewer.layers.remove(layer)
            layer = self._viewer.add_image(data, name=REVIEW_LAYER, rgb=rgb)
            self._hub.bind_keys(layer)
            self._viewer.reset_view()
        ov = self._overlay()
        ov.visible = True
        legend = self.key_legend().replace("; ", "\n")
        ov.text = f"{self.progress.value}\npredicted: {self.queue.class_names[it.predicted]}\n{legend}"

    @ensure_main_thread
    def _image_read(self, it) -> None:
        """A prefetched file is read: show it if its item is still the current one."""
        if self.queue is not None and self.queue.current is it and self.image_for is None:
            self._show_image(it)


class SemiAutoWidget(Container):
    """Run the semi-automatic labelling loop on a folder of images or a stack."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self.loop: SemiAutoLoop | None = None
        self.folder = FileEdit(label="image folder", mode="d")
        self.stack = layer_picker(viewer, "Image", "or stack layer", optional=True)
        self.stack.tooltip = "an (N, H, W) or (N, H, W, 3) image layer: one image to label per plane"
        self.class_names = LineEdit(label="classes", value="")
        self.initial = FileEdit(label="initial labels CSV", mode="r", filter="*.csv")
        self.project = FileEdit(label="project folder", mode="d")
        self.classifier = ComboBox(label="classifier", choices=sorted(CLASSIFIERS), value=DEFAULT_CLASSIFIER)
        # parameters from the engine's SemiAutoConfig; a resumed project shows (and takes edits to) its own
        self.params = ConfigControls(SemiAutoConfig, ["strategy", "t", "batch_size", "rate", "val_fraction"])
        self.params.bind(self._param_edited)
        self.load_btn = PushButton(text="Load / resume project")
        self.run_btn = PushButton(text="Run iteration")
        self.apply_btn = PushButton(text="Apply review + next batch")
        self.random_btn = PushButton(text="Compare: simulate random sampling")
        self.export_path = FileEdit(label="labels CSV", mode="w", filter="*.csv")
        self.export_btn = PushButton(text="Export labels")
        self.status = Label(value="load images to start")
        self.runner = JobRunner()
        self.review = ReviewQueueWidget(viewer, standalone=False)
        self.review.on_change = self._review_changed
        self.review._hub.add_loop(self)
        self.store_review = StoreReviewPanel(lambda: self.loop, self.runner, stack_name=self._stack_name,
                                             image_dir=self._review_image_dir,
                                             on_fetched=self._store_fetched,
                                             actor=self.review.annotator.value)
        self.acc_plot = PlotWidget("Validation accuracy", "labelled images", "accuracy")
        self.manual_plot = PlotWidget("Manual fraction per batch", "iteration", "fraction reviewed")
        super().__init__(widgets=[
            self.folder, self.stack, self.class_names, self.initial, self.project, self.classifier,
            *self.params.widgets, self.load_btn,
            self.run_btn, self.apply_btn, self.status, self.runner, self.review, self.store_review,
            self.acc_plot, self.manual_plot, self.random_btn, self.export_path, self.export_btn,
        ])
        fit_dock(self)
        self.load_btn.changed.connect(self.load)
        self.run_btn.changed.connect(self.run_iteration)
        self.apply_btn.changed.connect(self.apply_and_continue)
        self.export_btn.changed.connect(self.export)
        self.random_btn.changed.connect(self.simulate_random)
        self._random_history: list[dict] = []
        viewer.layers.events.inserted.connect(self.stack.reset_choices)
        viewer.layers.events.removed.connect(self.stack.reset_choices)

    # ------------------------------------------------------------ loading
    def _config(self) -> SemiAutoConfig:
        from expertloop.engine.config import build

        return build(SemiAutoConfig, self.params.values()).check()

    def _param_edited(self, values: dict) -> None:
        """An edit changes the open project's config (saved with its state)."""
        from expertloop.engine.config import apply_values

        if self.loop is None:
            return  # taken when the project is created
        if self.runner.running:
            notify("Semi-automatic labelling", "parameters not changed while a step runs")
        else:
            try:
                self.loop.config = apply_values(self.loop.config, values)[0].check()
                self.loop.save()
            except ValueError as exc:
                notify("Semi-automatic labelling", str(exc))
        self.params.fill(self.loop.config)

    def _source(self):
        """``(read job, project folder)`` from the widgets, checked here; raises ValueError.

        The job (run in the worker) reads the images and the initial labels and
        returns ``(collection, labels, class names)``.
        """
        folder = str(self.folder.value or "")
        folder = folder if folder not in ("", ".") and Path(folder).is_dir() else ""
        names_text = self.class_names.value.strip()
        init = str(self.initial.value or "")
        init = init if init not in ("", ".") and Path(init).is_file() else ""
        if folder:
            root = Path(folder)
            typed = parse_class_names(names_text) if names_text else None
            project = Path(str(self.project.value)) if str(self.project.value) not in ("", ".") \
                else root / PROJECT_FOLDER

            def read():
                col, labels, names = yield from load_images_job(root, class_names=typed)
                if names is None:
                    names = parse_class_names(names_text)  # no class folders: names must be typed
                return col, labels, names
        else:
            layer = self.stack.value
            if layer is None:
                raise ValueError("choose an image folder or a stack layer")
            shape = layer_array(layer)[0].shape
            if len(shape) - (1 if layer.rgb else 0) != 3:
                raise ValueError(f"the stack layer {layer.name!r} must hold one 2D image per plane "
                                 f"(N, H, W) or (N, H, W, 3), not shape {shape}")
            names = parse_class_names(names_text)
            if str(self.project.value) in ("", "."):
                raise ValueError("choose a project folder: decisions are saved there")
            project = Path(str(self.project.value))
            data = layer_array(layer)[0]  # level 0, maybe lazy: read in the worker

            def read():
                yield Progress(0, 1, f"reading the stack layer {layer.name!r}")
                col = from_stack(np.asarray(data))
                return col, np.full(len(col), UNLABELLED), names

        def job():
            col, labels, names = yield from read()
            if init:
                csv_labels = read_labels_csv(init, col, names)
                labels = np.where(csv_labels >= 0, csv_labels, labels)
            return col, labels, names

        return job(), project

    def _load_job(self):
        """Job (checked at the call, on the GUI thread): read the images, then resume
        or create the project; returns ``(loop, resumed)``."""
        read, project = self._source()
        chosen = self.classifier.value
        config, annotator = self._config(), self.review.annotator.value

        def job():
            col, labels, names = yield from read
            yield Progress(0, 1, f"opening the project in {project}")
            storage = FolderQueueStorage(project)
            state = storage.load_state()
            if state:  # a saved project keeps its classifier (older projects: the one chosen)
                clf = make_classifier(state.get("classifier") or chosen)
                return SemiAutoLoop.restore(storage, col, clf, annotator=annotator), True
            return SemiAutoLoop(col, names, labels, make_classifier(chosen), config=config, storage=storage,
                                allow_missing_classes=True), False

        return job()

    def load(self, *_):
        """Read the images and labels, or resume the project saved in the project folder
        (in the runner's worker; returns the worker, None when nothing was started)."""
        if self.runner.running:
            notify("Semi-automatic labelling", "wait for the running step to finish (or cancel it)")
            return None
        try:
            job = self._load_job()
        except (ValueError, FileNotFoundError) as exc:
            notify("Semi-automatic labelling", str(exc), "error")
            return None
        return self.runner.start(job, description="loading images", on_result=self._loaded)

    def _loaded(self, result) -> None:
        self.loop, resumed = result
        loop, col = self.loop, self.loop.collection
        if resumed:
            notify("Semi-automatic labelling", f"resumed the project in {loop.storage.folder}")
        self.params.fill(loop.config)  # the project's values in force, fixed ones read-only
        key = getattr(loop.classifier, "key", None)
        if key is not None:
            self.classifier.value = key
        self.classifier.enabled = False  # fixed once the project exists
        if col.skipped:
            listed = "; ".join(f"{n}" for n, _ in col.skipped[:10])
            notify("Semi-automatic labelling", f"skipped {len(col.skipped)} unreadable file(s): {listed}", "warning")
        if col.resized:
            notify("Semi-automatic labelling", f"resized {len(col.resized)} image(s) to {col.shape[:2]}", "warning")
        self._after_step()
        if loop.queue is not None:
            self._show_queue()

    # -------------------------------------------------------------- steps
    def run_iteration(self, *_):
        """Train, predict and fill the review queue (worker); loads the images first if needed."""
        if self.runner.running:
            notify("Semi-automatic labelling", "wait for the running step to finish (or cancel it)")
            return None
        if self.loop is None:
            try:
                load = self._load_job()
            except (ValueError, FileNotFoundError) as exc:
                notify("Semi-automatic labelling", str(exc), "error")
                return None

            def job():  # load, then the iteration, in one job: Cancel stops either
                loop, resumed = yield from load
                if loop.proposal is not None:
                    return (loop, resumed), None
                return (loop, resumed), (yield from loop.run_iteration())

            def done(result):
                loaded, proposal = result
                self._loaded(loaded)
                if self.loop.proposal is not None and proposal is None:
                    notify("Semi-automatic labelling", "finish and apply the open review first")
                    return
                self._proposal_ready(proposal)

            return self.runner.start(job(), description="semi-automatic labelling", on_result=done)
        if self.loop.proposal is not None:
            notify("Semi-automatic labelling", "finish and apply the open review first")
            return None
        return self.runner.start(self.loop.run_iteration(), description="semi-automatic labelling",
                                 on_result=self._proposal_ready)

    def _proposal_ready(self, proposal):
        if proposal is None:
            self._after_step()
            notify("Semi-automatic labelling", "no batch left" if not self.loop.pool
                   else "Semi-automatic labelling: target accuracy reached")
            return
        self._show_queue()
        self._after_step()

    def _show_queue(self):
        images = self.loop.collection.images
        reason = self._why_no_hard_case() if self.loop.queue is not None and not self.loop.queue.items else ""
        self.review.set_queue(self.loop.queue, image_for=lambda i: images[i], empty_reason=reason)
        if reason:
            notify("Semi-automatic labelling", reason)

    def _why_no_hard_case(self) -> str:
        """Why the open batch sent nothing to review, and what to do about it."""
        p, cfg = self.loop.proposal, self.loop.config
        n = 0 if p is None else len(p.batch)
        after = "; press 'Apply review + next batch'"
        if p is None or not n:
            return "no hard case: the batch is empty" + after
        if cfg.strategy == "threshold":
            return (f"no hard case in batch {p.iteration}: all {n} predictions have confidence >= t = {cfg.t:.2f} "
                    f"(lowest {float(np.min(p.confidence)):.2f}), so all were accepted" + after
                    + " (raise t to review more)")
        budget = cfg.budget if cfg.strategy != "random" and cfg.budget is not None else round(cfg.rate * n)
        return (f"no hard case in batch {p.iteration}: the review budget is {budget} ({cfg.strategy}, "
                f"rate {cfg.rate:g} of {n} images)" + after + " (raise the rate to review more)")

    def _store_fetched(self, _report) -> None:
        self._show_queue()
        self._review_changed()
        self.review._hub.queue_changed(self.loop.queue, self.review)  # e.g. the standalone queue dock

    def _review_image_dir(self):
        """Where stack images are written for the annotation project: ``<project folder>/review_images``."""
        folder = getattr(self.loop.storage, "folder", None) if self.loop is not None else None
        return None if folder is None else Path(folder) / "review_images"

    def _stack_name(self) -> str:
        """Name in the ``stack://NAME#ROW`` URIs of the hard cases (images of a stack layer)."""
        folder = str(self.folder.value or "")
        if folder not in ("", ".") and Path(folder).is_dir():
            return Path(folder).name
        return self.stack.value.name if self.stack.value is not None else "semiauto"

    def apply_and_continue(self, *_):
        """Merge the review (saved with the project), then the next batch or the final
        training, in one job in the runner's worker."""
        from expertloop.engine.jobs import call_job

        if self.loop is None or self.loop.proposal is None:
            notify("Semi-automatic labelling", "no batch to apply; run an iteration")
            return None
        if self.runner.running:
            notify("Semi-automatic labelling", "wait for the running step to finish (or cancel it)")
            return None
        loop = self.loop
        self.review.set_queue(None)  # no more decisions on this batch

        def job():
            rec = yield from call_job("merging the review", loop.apply_review)
            if loop.pool:
                return rec, False, (yield from loop.run_iteration())
            return rec, True, (yield from loop.finish())

        def done(result):
            rec, final, out = result
            notify("Semi-automatic labelling", f"batch {rec['iteration']}: {rec['accepted']} accepted, "
                   f"{rec['reviewed']} reviewed ({rec['corrected']} corrected)")
            if final:
                self._after_step()
            else:
                self._proposal_ready(out)

        return self.runner.start(job(), description="apply review + next batch", on_result=done,
                                 on_cancel=self._after_step, on_error=lambda _e: self._after_step())

    def simulate_random(self, *_):
        """Simulate random sampling at the chosen rate on the labels made so far (for the plots)."""
        from expertloop.engine.semiauto.loop import random_baseline

        if self.loop is None:
            notify("Semi-automatic labelling", "load a project first")
            return None
        try:
            # checks run at the call (engine.jobs.checks_first): a bad state is reported at once
            job = random_baseline(self.loop, make_classifier(self.classifier.value), float(self.params['rate'].value))
        except ValueError as exc:
            notify("Semi-automatic labelling", str(exc))
            return None

        def show(hist):
            self._random_history = hist
            self._after_step()

        return self.runner.start(job, description="simulated random sampling", on_result=show)

    def _review_changed(self):
        if self.loop is not None and self.loop.queue is not None:
            self.status.value = f"review: {self.loop.queue.progress_text()}"

    def export(self, *_):
        path = str(self.export_path.value or "")
        if self.loop is None or path in ("", "."):
            notify("Semi-automatic labelling", "load a project and choose a CSV file first")
            return None
        from expertloop.engine.jobs import call_job

        return self.runner.start(call_job(f"writing {path}", self.loop.export_csv, path),
                                 description="exporting labels",
                                 on_result=lambda out: notify("Semi-automatic labelling", f"labels written to {out}"))

    # ------------------------------------------------------------ display
    def _after_step(self):
        loop = self.loop
        hist = [h for h in loop.history if "val_acc" in h]
        pts = list(hist)
        if loop.last_eval and (not pts or pts[-1].get("n_labelled") != loop.last_eval.get("n_labelled")):
            pts.append(loop.last_eval)
        acc = {self.loop.config.strategy: ([h["n_labelled"] for h in pts], [h["val_acc"] for h in pts])}
        it = [h for h in loop.history if "manual_fraction" in h]
        manual = {"manual fraction": ([h["iteration"] for h in it], [h["manual_fraction"] for h in it])}
        if self._random_history:
            rh = self._random_history
            acc["random (simulated)"] = ([h["n_labelled"] for h in rh], [h["val_acc"] for h in rh])
            ri = [h for h in rh if "manual_fraction" in h]
            manual["random (simulated)"] = ([h["iteration"] for h in ri], [h["manual_fraction"] for h in ri])
        self.acc_plot.set_series(acc)
        self.manual_plot.set_series(manual)
        n_lab = int((loop.labels >= 0).sum())
        acc = loop.last_eval.get("val_acc")
        self.status.value = (f"{n_lab}/{len(loop.labels)} labelled, {len(loop.pool)} in the pool, "
                             f"{loop.manual_total} by hand"
                             + (f"; validation accuracy {acc:.3f}" if acc is not None else ""))
