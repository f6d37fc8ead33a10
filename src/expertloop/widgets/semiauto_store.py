"""The "Review in annotation project" group of the semi-automatic labelling widget.

"Send hard cases" pushes the open review queue into a collection of an
annotation project (the shared store; the "Annotation project" dock shows it
to the assigned annotators; images of a stack layer are written once as TIFF
files into the loop's project folder, ``review_images/``, so the dock can
show them); "Fetch reviewed" reads their labels back as
queue decisions. The database work runs in the loop widget's JobRunner; the
decisions are recorded on the GUI thread. Thin: the logic is in
:mod:`expertloop.engine.semiauto.store_bridge`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from magicgui.widgets import Container, Label, LineEdit, PushButton

from expertloop.widgets._common import notify


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]


class StoreReviewPanel(Container):
    """Send the loop's hard cases to an annotation project and fetch the reviewed labels."""

    def __init__(self, get_loop: Callable[[], Any], runner, *, stack_name: Callable[[], str] | None = None,
                 image_dir: Callable[[], Any] | None = None,
                 on_fetched: Callable[[Any], None] | None = None, actor: str = "") -> None:
        self._get_loop = get_loop
        self._runner = runner
        self._stack_name = stack_name or (lambda: "semiauto")
        self._image_dir = image_dir or (lambda: None)
        self.on_fetched = on_fetched
        self.location = LineEdit(label="annotation project", value="")
        self.location.tooltip = "project folder, .db file or SQLAlchemy URL of the annotation project"
        self.collection = LineEdit(label="collection", value="semiauto review")
        self.actor = LineEdit(label="store user (admin)", value=actor)
        self.annotators = LineEdit(label="annotators", value="")
        self.annotators.tooltip = "store users to assign, comma-separated"
        self.send_btn = PushButton(text="Send hard cases")
        self.fetch_btn = PushButton(text="Fetch reviewed")
        self.status = Label(value="")
        super().__init__(label="Review in annotation project", widgets=[
            Label(value="<b>Review in annotation project</b>"), self.location, self.collection,
            self.actor, self.annotators, self.send_btn, self.fetch_btn, self.status])
        self.send_btn.changed.connect(self.send)
        self.fetch_btn.changed.connect(self.fetch)

    def _ready(self):

        loop = self._get_loop()
        if loop is None or loop.queue is None:
            notify("Review in annotation project", "run an iteration first (no open review queue)")
            return None
        if not self.location.value.strip() or not self.collection.value.strip() or not self.actor.value.strip():
            notify("Review in annotation project", "give the project location, a collection and the store user")
            return None
        return loop

    def send(self, *_):
        """Push the open queue's undecided hard cases (worker thread: the TIFF files of
        stack images and the database work; the queue is read here, at the click)."""
        from expertloop.engine.jobs import rescale
        from expertloop.engine.semiauto.store_bridge import push_job, review_items_job

        loop = self._ready()
        if loop is None or self._runner.running:
            if loop is not None:
                notify("Review in annotation project", "wait for the running step to finish (or cancel it)")
            return None
        write = review_items_job(loop, stack_name=self._stack_name() or "semiauto", image_dir=self._image_dir())
        q = loop.queue
        location, collection = self.location.value.strip(), self.collection.value.strip()
        actor, assign_to = self.actor.value.strip(), _split(self.annotators.value)

        def job():
            items = yield from rescale(write, 0, 80, 100)
            return (yield from rescale(push_job(location, collection, items, q.class_names, q.queue_id,
                                                actor=actor, assign_to=assign_to), 80, 100, 100))

        return self._runner.start(job(), description="send hard cases", on_result=self._sent)

    def _sent(self, res: dict) -> None:

        self.status.value = f"queue {res['queue']}: {res['pushed']} sent to {res['collection']!r}"
        notify("Review in annotation project", f"{self.status.value}")

    def fetch(self, *_):
        """Read the reviewed labels (worker thread), record them as decisions (GUI thread)."""
        from expertloop.engine.semiauto.store_bridge import fetch_job

        loop = self._ready()
        if loop is None:
            return None
        job = fetch_job(self.location.value.strip(), self.collection.value.strip(), actor=self.actor.value.strip())
        return self._runner.start(job, description="fetch reviewed labels", on_result=self._fetched)

    def _fetched(self, fetched: dict) -> None:
        from expertloop.engine.semiauto.store_bridge import apply_reviews

        loop = self._get_loop()
        if loop is None or loop.queue is None:
            notify("Review in annotation project", "the review queue was closed meanwhile; nothing recorded")
            return
        rep = apply_reviews(loop, fetched)
        self.last_report = rep
        self.status.value = rep.summary()
        notify("Review in annotation project", rep.summary(),
               "warning" if rep.rejected or rep.conflicts else "info")
        if self.on_fetched is not None:
            self.on_fetched(rep)
