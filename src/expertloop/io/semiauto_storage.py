"""Where a semi-automatic labelling project keeps its state, queue and decisions.

The loop and the widgets talk to storage only through the small
:class:`QueueStorage` protocol, so another back end (e.g. the annotation
store) can be plugged in without touching them:

=========================  ===================================================
``save_state(state)``      the loop's state (a JSON-able dict), replaced atomically
``load_state()``           the last saved state, or ``None``
``save_queue(queue)``      the open review queue (``{"id", "items", ...}``), atomically
``load_queue()``           the open queue, or ``None``
``append_decision(rec)``   one annotator decision; durable when it returns
``load_decisions(qid)``    the decisions recorded for queue ``qid``, in order
=========================  ===================================================

:class:`FolderQueueStorage` is the folder implementation::

    project/
      state.json        loop state (atomic replace)
      queue.json        open review queue (atomic replace)
      decisions.jsonl   every decision, one JSON line each, fsync-ed at once

``decisions.jsonl`` is an :class:`expertloop.io.journal.Journal`: a decision
survives even a SIGKILL of the process right after it was made.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from expertloop.io.journal import Journal, read_journal


@runtime_checkable
class QueueStorage(Protocol):
    def save_state(self, state: dict[str, Any]) -> None: ...

    def load_state(self) -> dict[str, Any] | None: ...

    def save_queue(self, queue: dict[str, Any]) -> None: ...

    def load_queue(self) -> dict[str, Any] | None: ...

    def append_decision(self, record: dict[str, Any]) -> None: ...

    def load_decisions(self, queue_id: int) -> list[dict[str, Any]]: ...


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the project file is corrupt") from exc


class FolderQueueStorage:
    """:class:`QueueStorage` in a folder (created if missing)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ValueError(f"{self.folder}: is a file, not a project folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._decisions = Journal(self.folder / "decisions.jsonl")

    def save_state(self, state):
        _write_json_atomic(self.folder / "state.json", state)

    def load_state(self):
        return _read_json(self.folder / "state.json")

    def save_queue(self, queue):
        _write_json_atomic(self.folder / "queue.json", queue)

    def load_queue(self):
        return _read_json(self.folder / "queue.json")

    def append_decision(self, record):
        self._decisions.append(record)

    def load_decisions(self, queue_id):
        # each record carries its line number (``_line``) so a bad one can be reported
        return [{**r, "_line": i} for i, r in read_journal(self._decisions.path, with_lines=True)
                if r.get("queue") == queue_id]

    def __repr__(self) -> str:
        return f"FolderQueueStorage({str(self.folder)!r})"


class MemoryQueueStorage:
    """:class:`QueueStorage` in memory (scripts, simulations, tests)."""

    def __init__(self) -> None:
        self.state = None
        self.queue = None
        self.decisions: list[dict[str, Any]] = []

    def save_state(self, state):
        self.state = json.loads(json.dumps(state, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))

    def load_state(self):
        return self.state

    def save_queue(self, queue):
        self.queue = json.loads(json.dumps(queue))

    def load_queue(self):
        return self.queue

    def append_decision(self, record):
        self.decisions.append(dict(record))

    def load_decisions(self, queue_id):
        return [r for r in self.decisions if r.get("queue") == queue_id]
