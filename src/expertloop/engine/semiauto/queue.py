"""The hard-case review queue: one decision at a time, each saved at once.

Items are sorted by predicted class (then by confidence, most confident
first), so the annotator sweeps runs of the same class and only changes the
misclassified ones, as the paper found fastest. Actions:

* :meth:`ReviewQueue.accept`: take the predicted label;
* :meth:`ReviewQueue.set_label`: give another label;
* :meth:`ReviewQueue.skip`: decide later (skipped items come back at the end);
* :meth:`ReviewQueue.undo`: take back the last action.

Every action is written through the storage (:class:`~expertloop.io.semiauto_storage.QueueStorage`)
before the method returns, with the annotator's name, the time taken on the
item and a timestamp. :meth:`ReviewQueue.restore` rebuilds the queue from the
storage after a restart or a crash.
"""

from __future__ import annotations

import datetime as _dt
import numbers
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class QueueItem:
    index: int            # row in the collection
    name: str
    predicted: int
    confidence: float
    path: str | None = None


def _is_index(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


class ReviewQueue:
    def __init__(self, items: Sequence[QueueItem], class_names: Sequence[str], *, storage=None,
                 queue_id: int = 0, annotator: str = "", sort: bool = True,
                 clock: Callable[[], float] = time.monotonic, _save: bool = True) -> None:
        self.class_names = list(class_names)
        items = list(items)
        for it in items:
            if not 0 <= it.predicted < len(self.class_names):
                raise ValueError(f"item {it.name}: predicted class {it.predicted} out of range")
        if sort:
            items.sort(key=lambda it: (it.predicted, -it.confidence, it.index))
        self.items = items
        self.queue_id = int(queue_id)
        self.storage = storage
        self.annotator = annotator
        self._clock = clock
        self._pos_of = {it.index: p for p, it in enumerate(items)}
        self.labels: dict[int, int] = {}      # position -> label
        self.skipped: set[int] = set()
        self._history: list[tuple[str, int, int | None, bool]] = []  # (action, pos, prev label, was skipped)
        self.replay_problems: list[tuple[int | None, str]] = []  # (line, why) of decisions not replayed
        self.cursor: int | None = 0 if items else None
        self._shown_at = clock()
        if storage is not None and _save:
            storage.save_queue(self.to_dict())

    # ------------------------------------------------------------ state
    def to_dict(self) -> dict:
        return {"id": self.queue_id, "class_names": self.class_names,
                "items": [asdict(it) for it in self.items]}

    @classmethod
    def restore(cls, storage, *, annotator: str = "", clock=time.monotonic) -> ReviewQueue | None:
        """The open queue in ``storage`` with its decisions replayed (None if there is none)."""
        d = storage.load_queue()
        if not d:
            return None
        q = cls([QueueItem(**it) for it in d["items"]], d["class_names"], storage=storage,
                 queue_id=d["id"], annotator=annotator, sort=False, clock=clock, _save=False)
        for rec in storage.load_decisions(q.queue_id):
            why = q._replay(rec)
            if why is not None:
                from expertloop.io.journal import report_bad_record

                report_bad_record(getattr(storage, "folder", "decisions"), rec.get("_line"), why,
                                  q.replay_problems)
        q.cursor = q._next_from(q.cursor if q.cursor is not None else 0, include_current=True)
        q._shown_at = clock()
        return q

    def _replay(self, rec: dict) -> str | None:
        """Apply one saved decision; returns why it was skipped (None if applied).

        A label that is not a class index of this queue (``-1``, ``99``, text,
        missing) is never guessed: the record is skipped and reported."""
        action = rec.get("action")
        if action == "undo":
            self._undo_state()
            return None
        if action not in ("accept", "change", "skip"):
            return f"unknown action {str(action)[:40]!r}"
        item = rec.get("item")
        pos = self._pos_of.get(int(item)) if _is_index(item) else None
        if pos is None:
            return f"item {str(item)[:40]!r} is not in this queue"
        if action in ("accept", "change"):
            label = rec.get("label")
            if not _is_index(label) or not 0 <= label < len(self.class_names):
                return (f"label {str(label)[:40]!r} is not a class index 0..{len(self.class_names) - 1}; "
                        "the decision was not replayed")
            self._decide_state(pos, int(label), action)
        elif action == "skip":
            self._history.append(("skip", pos, self.labels.get(pos), pos in self.skipped))
            self.skipped.add(pos)
        self.cursor = pos
        return None

    # ----------------------------------------------------------- queries
    def __len__(self) -> int:
        return len(self.items)

    @property
    def current(self) -> QueueItem | None:
        return None if self.cursor is None else self.items[self.cursor]

    @property
    def n_decided(self) -> int:
        return len(self.labels)

    @property
    def done(self) -> bool:
        return self.n_decided == len(self.items)

    def progress_text(self) -> str:
        s = f"{self.n_decided} / {len(self.items)} decided"
        pending_skips = len(self.skipped - set(self.labels))
        return s + (f", {pending_skips} skipped" if pending_skips else "")

    def decisions(self) -> dict[int, int]:
        """``{collection index: label}`` for the items decided so far."""
        return {self.items[p].index: k for p, k in self.labels.items()}

    # ----------------------------------------------------------- actions
    def accept(self) -> None:
        it = self._require()
        self._decide(it.predicted, "accept")

    def set_label(self, label: int | str) -> None:
        label = self._label_index(label)
        it = self._require()
        self._decide(label, "accept" if label == it.predicted else "change")

    def skip(self) -> None:
        it = self._require()
        pos = self.cursor
        self._record("skip", it, None)
        self._history.append(("skip", pos, self.labels.get(pos), pos in self.skipped))
        self.skipped.add(pos)
        self.cursor = self._next_from(pos)
        self._shown_at = self._clock()

    def undo(self) -> bool:
        """Take back the last action; returns False when there is nothing to undo."""
        if not self._history:
            return False
        self._record("undo", None, None)
        self._undo_state()
        self._shown_at = self._clock()
        return True

    def decide(self, index: int, label: int | str, *, annotator: str | None = None,
               seconds: float | None = -1.0, extra: dict | None = None) -> str:
        """Record a decision for the item of collection row ``index`` (any item, not only the current one).

        For decisions made elsewhere (e.g. in the annotation store): the record
        is the same as for :meth:`accept` / :meth:`set_label` (action
        ``accept`` when ``label`` is the predicted class, else ``change``),
        with ``annotator`` and ``seconds`` as given (defaults: this queue's
        annotator and the time since the current item was shown; ``None``
        records an unknown time as null) and
        ``extra`` fields added. Undo takes it back like any action. Returns
        the action.
        """
        pos = self._pos_of.get(int(index))
        if pos is None:
            raise ValueError(f"image {index} is not in this review queue")
        label = self._label_index(label)
        it = self.items[pos]
        action = "accept" if label == it.predicted else "change"
        self._record(action, it, label, annotator=annotator,
                     seconds=-1.0 if seconds is not None and seconds < 0 else seconds,
                     known_time=seconds is not None, extra=extra)
        self._decide_state(pos, label, action)
        if self.cursor is None or self.cursor == pos or self.cursor in self.labels:
            self.cursor = self._next_from(pos)
            self._shown_at = self._clock()
        return action

    # ----------------------------------------------------------- private
    def _label_index(self, label: int | str) -> int:
        if isinstance(label, str):
            if label not in self.class_names:
                raise ValueError(f"{label!r} is not one of {self.class_names}")
            label = self.class_names.index(label)
        label = int(label)
        if not 0 <= label < len(self.class_names):
            raise ValueError(f"label {label} out of range 0..{len(self.class_names) - 1}")
        return label

    def _require(self) -> QueueItem:
        if self.cursor is None:
            raise RuntimeError("the review queue is finished")
        return self.items[self.cursor]

    def _decide(self, label: int, action: str) -> None:
        it = self._require()
        pos = self.cursor
        self._record(action, it, label)
        self._decide_state(pos, label, action)
        self.cursor = self._next_from(pos)
        self._shown_at = self._clock()

    def _decide_state(self, pos: int, label: int, action: str) -> None:
        self._history.append((action, pos, self.labels.get(pos), pos in self.skipped))
        self.labels[pos] = label
        self.skipped.discard(pos)

    def _undo_state(self) -> None:
        if not self._history:
            return
        _action, pos, prev, was_skipped = self._history.pop()
        if prev is None:
            self.labels.pop(pos, None)
        else:
            self.labels[pos] = prev
        if was_skipped:
            self.skipped.add(pos)
        else:
            self.skipped.discard(pos)
        self.cursor = pos

    def _next_from(self, pos: int, include_current: bool = False) -> int | None:
        n = len(self.items)
        if n == 0:
            return None
        start = 0 if include_current else 1
        order = [(pos + d) % n for d in range(start, n + start)]
        for p in order:  # first undecided, not skipped
            if p not in self.labels and p not in self.skipped:
                return p
        for p in order:  # then the skipped ones again
            if p not in self.labels:
                return p
        return None

    def _record(self, action: str, it: QueueItem | None, label: int | None, *,
                annotator: str | None = None, seconds: float = -1.0, known_time: bool = True,
                extra: dict | None = None) -> None:
        if self.storage is None:
            return
        if seconds is None or seconds < 0:
            seconds = max(0.0, self._clock() - self._shown_at)
        rec = {
            "queue": self.queue_id,
            "action": action,
            "annotator": self.annotator if annotator is None else annotator,
            "seconds": round(float(seconds), 3) if known_time else None,
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
        }
        if it is not None:
            rec.update(item=it.index, name=it.name, predicted=it.predicted,
                       confidence=round(float(it.confidence), 4))
        if label is not None:
            rec["label"] = int(label)
            rec["class"] = self.class_names[label]
        if extra:
            rec.update({k: v for k, v in extra.items() if k not in rec})
        self.storage.append_decision(rec)


def items_from_prediction(indices, names, predicted, confidence, paths=None) -> list[QueueItem]:
    idx = np.asarray(indices, np.int64)
    return [QueueItem(int(i), str(names[i]), int(predicted[j]), float(confidence[j]),
                      None if paths is None else paths[i]) for j, i in enumerate(idx)]
