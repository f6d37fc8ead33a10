"""Review the loop's hard cases in an annotation project (the store of issue 6).

The semi-automatic loop queues its hard cases in a :class:`~.queue.ReviewQueue`.
Instead of (or beside) reviewing them in the local queue widget, a lab can
push them into a collection of an annotation project
(:mod:`expertloop.store`), let the annotators review them in the
"Annotation project" dock, and read their labels back into the queue::

    push_queue_to_store(loop, store, "round 1", actor="ada", assign_to=["bob"])
    # ... bob accepts or corrects the predictions in the dock ...
    report = pull_decisions_from_store(loop, store, "round 1", actor="ada")
    loop.apply_review()          # as after a local review: D <- D ∪ S, retrain

Each pushed item's URI is the image path, or ``stack://<stack name>#<row>``
for images that came from a stack; its ``meta`` holds the loop's row
(``semiauto_index``), the image name and the queue id (``semiauto_queue``),
so the answers of an older round are never applied to the current one.

A pulled answer becomes a queue decision recorded exactly like a local one
(``accept`` when the expert kept the predicted class, ``change`` otherwise;
annotator, seconds spent, time) plus ``via: "store"`` and the collection.
Pulling is idempotent: an answer already in the queue is not recorded again;
an answer that the annotator changed in the store since the last pull
replaces the earlier store decision; a decision made in the local queue wins
over the store (reported as a conflict). Labels outside the loop's classes
are refused (reported, never applied).

Compute only: no Qt; the store (SQLAlchemy) is imported when used.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from expertloop.engine.jobs import CHECKED, Job, Progress, checks_first, run_job
from expertloop.engine.semiauto.queue import QueueItem, ReviewQueue

STACK_SCHEME = "stack://"


@dataclass
class PullReport:
    """What :func:`pull_decisions_from_store` did."""

    added: int = 0            # new decisions recorded in the queue
    updated: int = 0          # store decisions replaced by a changed store answer
    unchanged: int = 0        # answers already in the queue (idempotent pulls)
    pending: int = 0          # queue items still undecided after the pull
    pending_in_store: int = 0  # pushed items of this queue not reviewed in the store yet
    stale: int = 0            # reviewed items of other queues / rounds (ignored)
    conflicts: list[dict] = field(default_factory=list)  # local decision kept, store differs
    rejected: list[dict] = field(default_factory=list)   # label outside the classes, not applied

    def summary(self) -> str:
        s = (f"{self.added} new decision(s), {self.updated} updated, {self.unchanged} already there; "
             f"{self.pending} still to review ({self.pending_in_store} pending in the store)")
        if self.conflicts:
            s += f"; {len(self.conflicts)} conflict(s) with local decisions (local kept)"
        if self.rejected:
            s += f"; {len(self.rejected)} refused (label not a class: " + ", ".join(
                f"{r['name']}={r['label']!r}" for r in self.rejected[:5]) + ")"
        return s


@dataclass
class _Context:
    queue: ReviewQueue
    probabilities: dict[int, list[float]]
    images: Any = None  # the loop's image stack, when known


def _context(project_or_loop: Any) -> _Context:
    """The open queue (and the batch's probabilities when known) of a loop, queue, storage or folder."""
    from expertloop.engine.semiauto.loop import SemiAutoLoop
    from expertloop.io.semiauto_storage import FolderQueueStorage, QueueStorage

    probs: dict[int, list[float]] = {}
    if isinstance(project_or_loop, _Context):
        return project_or_loop
    if isinstance(project_or_loop, SemiAutoLoop):
        loop = project_or_loop
        if loop.queue is None or loop.proposal is None:
            raise ValueError("no open review queue: run an iteration first")
        p = loop.proposal
        if p.probabilities is not None:
            probs = {int(i): [float(x) for x in row] for i, row in zip(p.batch, p.probabilities)}
        return _Context(loop.queue, probs, loop.collection.images)
    if isinstance(project_or_loop, ReviewQueue):
        return _Context(project_or_loop, probs)
    if isinstance(project_or_loop, (str, os.PathLike)):
        folder = Path(project_or_loop)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such project folder")
        storage = FolderQueueStorage(folder)
    elif isinstance(project_or_loop, QueueStorage):
        storage = project_or_loop
    else:
        raise TypeError("expected a SemiAutoLoop, a ReviewQueue, a QueueStorage or a project folder, "
                        f"got {type(project_or_loop).__name__}")
    queue = ReviewQueue.restore(storage)
    if queue is None:
        raise ValueError(f"{storage}: no open review queue (run an iteration first)")
    state = storage.load_state() or {}
    p = state.get("proposal") or {}
    if p.get("probabilities") is not None and int(p.get("iteration", -1)) == queue.queue_id:
        probs = {int(i): [float(x) for x in row] for i, row in zip(p["batch"], p["probabilities"])}
    return _Context(queue, probs)


def item_uri(item, stack_name: str = "semiauto") -> str:
    """The store URI of a queue item: its file path, or ``stack://<stack_name>#<row>``."""
    if item.path:
        return str(item.path)
    return f"{STACK_SCHEME}{stack_name}#{int(item.index)}"


def _write_review_image(image_dir: Path, stack_name: str, index: int, image) -> str:
    import tifffile

    path = Path(image_dir) / f"{stack_name}-{int(index):06d}.tif"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tifffile.imwrite(tmp, np.asarray(image))
        os.replace(tmp, path)
    return str(path.resolve())


def _items(ctx: _Context, stack_name: str, include_decided: bool, image_dir=None) -> list[dict]:
    return run_job(_items_job(ctx, stack_name, include_decided, image_dir))


@checks_first
def _items_job(ctx: _Context, stack_name: str, include_decided: bool, image_dir=None):
    """Job: :func:`review_items`; the queue is read at once (the caller's thread), images written after."""
    q = ctx.queue
    decided = q.decisions()
    out, to_write = [], []
    for it in q.items:
        if it.index in decided and not include_decided:
            continue
        meta = {"semiauto_index": int(it.index), "semiauto_queue": int(q.queue_id), "name": it.name}
        uri = item_uri(it, stack_name)
        if not it.path and image_dir is not None:
            if ctx.images is None:
                raise ValueError("image_dir needs the loop (its images), not only its queue")
            meta["stack_uri"] = uri
            to_write.append((len(out), it.index))
        out.append({"uri": uri, "label": q.class_names[it.predicted], "confidence": float(it.confidence),
                    "probabilities": ctx.probabilities.get(it.index), "meta": meta})
    yield CHECKED
    for k, (row, index) in enumerate(to_write):
        yield Progress(k, len(to_write), f"writing review image {k + 1}/{len(to_write)}")
        out[row]["uri"] = _write_review_image(image_dir, stack_name, index, ctx.images[index])
    return out


def review_items(project_or_loop: Any, *, stack_name: str = "semiauto",
                 include_decided: bool = False, image_dir=None) -> list[dict]:
    """The open queue's hard cases as review-task items for :func:`expertloop.store.push_review_tasks`.

    Items decided in the local queue already are left out unless ``include_decided``.
    Images without a file get the URI ``stack://<stack_name>#<row>``; with
    ``image_dir`` (and a loop) they are written there as TIFF files
    (``<stack_name>-<row>.tif``, once) so that the annotators see them in the
    "Annotation project" dock, and the stack URI is kept in ``meta["stack_uri"]``.
    """
    return _items(_context(project_or_loop), stack_name, include_decided, image_dir)


def review_items_job(project_or_loop: Any, *, stack_name: str = "semiauto",
                     include_decided: bool = False, image_dir=None) -> Job[list[dict]]:
    """Job: :func:`review_items`. The queue is read when it is called (in the caller's
    thread, so later key presses do not race with it); the TIFF files of stack images
    are written as the job runs (a worker thread), one progress record each."""
    return _items_job(_context(project_or_loop), stack_name, include_decided, image_dir)


def push_queue_to_store(project_or_loop: Any, store, collection: str, *, actor: str,
                        assign_to: Sequence[str] = (), stack_name: str = "semiauto",
                        include_decided: bool = False, image_dir=None, model: str = "semiauto",
                        description: str = "") -> dict:
    """Push the open queue's hard cases into ``collection`` as review tasks.

    ``project_or_loop``: a :class:`~.loop.SemiAutoLoop`, a :class:`~.queue.ReviewQueue`,
    a :class:`~expertloop.io.semiauto_storage.QueueStorage` or a project folder.
    ``store``: an open :class:`expertloop.store.Store`; ``actor`` must be one
    of its admins. The collection (with an image-label template over the
    loop's classes) is created when missing; ``assign_to`` annotators are
    assigned. Pushing again replaces the predictions (annotations stay).
    ``stack_name`` / ``image_dir``: see :func:`review_items`. Returns ``{"pushed", "queue", "collection", "skipped_decided"}``.
    """
    ctx = _context(project_or_loop)
    items = _items(ctx, stack_name, include_decided, image_dir)
    res = push_items_to_store(store, collection, items, ctx.queue.class_names, ctx.queue.queue_id,
                              actor=actor, assign_to=assign_to, model=model, description=description)
    return {**res, "skipped_decided": len(ctx.queue) - len(items)}


def push_items_to_store(store, collection: str, items: list[dict], class_names: Sequence[str],
                        queue_id: int, *, actor: str, assign_to: Sequence[str] = (),
                        model: str = "semiauto", description: str = "") -> dict:
    """Push items made by :func:`review_items` (the database part of a push)."""
    from expertloop.store import push_review_tasks

    if items:
        push_review_tasks(store, collection, items, actor=actor, labels=list(class_names),
                          assign_to=list(assign_to), model=f"{model} queue {queue_id}",
                          description=description or f"semi-automatic labelling, queue {queue_id}")
    return {"pushed": len(items), "queue": int(queue_id), "collection": collection}


def push_job(location, collection: str, items: list[dict], class_names: Sequence[str], queue_id: int, *,
             actor: str, assign_to: Sequence[str] = ()) -> Job[dict]:
    """Job: open the store at ``location`` and :func:`push_items_to_store` (for the widget's worker)."""
    from expertloop.store import Store

    yield Progress(0, 2, "opening the annotation project")
    with Store.open(location) as store:
        yield Progress(1, 2, f"pushing {len(items)} hard case(s)")
        res = push_items_to_store(store, collection, items, class_names, queue_id, actor=actor,
                                  assign_to=assign_to)
    yield Progress(2, 2, "pushed")
    return res


def fetch_job(location, collection: str, *, actor: str, resolve: str = "majority") -> Job[dict]:
    """Job: open the store at ``location`` and :func:`fetch_reviews` (for the widget's worker)."""
    from expertloop.store import Store

    yield Progress(0, 2, "opening the annotation project")
    with Store.open(location) as store:
        yield Progress(1, 2, "reading the reviewed labels")
        fetched = fetch_reviews(store, collection, actor=actor, resolve=resolve)
    yield Progress(2, 2, f"{len(fetched['reviewed'])} reviewed")
    return fetched


def fetch_reviews(store, collection: str, *, actor: str, resolve: str = "majority") -> dict:
    """Read a collection's reviewed labels and its pending items (the slow, database part of a pull)."""
    from expertloop.store import accepted_annotations

    reviewed = accepted_annotations(store, collection, actor=actor, resolve=resolve)
    done = {r["image_id"] for r in reviewed}
    pending = [dict(p.meta) for iid, p in store.predictions(actor, collection).items() if iid not in done]
    return {"collection": collection, "reviewed": reviewed, "pending": pending}


def apply_reviews(project_or_loop: Any, fetched: dict) -> PullReport:
    """Turn fetched reviews (:func:`fetch_reviews`) into decisions of the open queue.

    Whether the current decision of an item came from the store is read from
    the queue's storage (``via: "store"``); a queue without storage treats
    every differing answer as a conflict with a local decision.
    """
    ctx = _context(project_or_loop)
    q = ctx.queue
    by_index = {it.index: it for it in q.items}
    coll = fetched["collection"]
    # the current decision of each item and whether it came from the store
    last_via: dict[int, str | None] = {}
    if q.storage is not None:
        for rec in q.storage.load_decisions(q.queue_id):
            if rec.get("action") in ("accept", "change") and "item" in rec:
                last_via[int(rec["item"])] = rec.get("via")
    current = q.decisions()
    rep = PullReport()

    def ours(meta: dict) -> QueueItem | None:
        if not isinstance(meta, dict) or meta.get("semiauto_queue") != q.queue_id:
            return None
        it = by_index.get(meta.get("semiauto_index"))
        if it is None or it.name != meta.get("name"):
            return None
        return it

    for r in fetched["reviewed"]:
        it = ours(r.get("meta") or {})
        if it is None:
            rep.stale += 1
            continue
        label = r["label"]
        if label not in q.class_names:
            rep.rejected.append({"index": it.index, "name": it.name, "label": label,
                                 "annotators": list(r.get("annotators") or [])})
            continue
        k = q.class_names.index(label)
        if it.index in current:
            if current[it.index] == k:
                rep.unchanged += 1
                continue
            if last_via.get(it.index) != "store":
                rep.conflicts.append({"index": it.index, "name": it.name, "local": q.class_names[current[it.index]],
                                      "store": label})
                continue
            rep.updated += 1
        else:
            rep.added += 1
        annotators = list(r.get("annotators") or [])
        q.decide(it.index, k, annotator=annotators[-1] if annotators else "", seconds=r.get("time_spent"),
                 extra={"via": "store", "store_collection": coll, "store_source": r.get("source"),
                        "annotators": annotators, "n_votes": int(r.get("n_votes") or 1)})
        current[it.index] = k
    rep.pending = len(q.items) - len(q.decisions())
    rep.pending_in_store = sum(1 for m in fetched["pending"] if ours(m) is not None)
    return rep


def pull_decisions_from_store(project_or_loop: Any, store, collection: str, *, actor: str,
                              resolve: str = "majority") -> PullReport:
    """Read the reviewed labels of ``collection`` into the open queue's decisions.

    Only answers to items pushed from this queue count (others: ``stale``).
    With several annotators per image, ``resolve`` picks the label
    (``"majority"`` or ``"latest"``, see :func:`expertloop.store.accepted_annotations`).
    Returns a :class:`PullReport`; afterwards ``loop.apply_review()`` merges
    the batch as after a local review.
    """
    ctx = _context(project_or_loop)  # bad project input is reported before the database is read
    return apply_reviews(ctx, fetch_reviews(store, collection, actor=actor, resolve=resolve))
