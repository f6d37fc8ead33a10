from __future__ import annotations

import pytest


@pytest.fixture
def notifications():
    """Collect napari notifications (message strings) emitted during a test."""
    from napari.utils.notifications import notification_manager

    seen: list = []

    def _grab(note):
        seen.append(note)

    notification_manager.notification_ready.connect(_grab)
    yield seen
    notification_manager.notification_ready.disconnect(_grab)




@pytest.fixture
def record_threads(monkeypatch):
    """``record_threads(module, name, gate=None)`` wraps ``module.name`` and returns a list
    that gets, per call, whether it ran on the main (GUI) thread; with ``gate`` (a
    ``threading.Event``) each call first waits for it (at most 10 s)."""
    import threading

    def wrap(module, name, gate=None):
        seen, original = [], getattr(module, name)

        def wrapper(*args, **kwargs):
            seen.append(threading.current_thread() is threading.main_thread())
            if gate is not None:
                gate.wait(10)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return seen

    return wrap
