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


