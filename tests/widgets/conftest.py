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


@pytest.fixture
def digits_semiauto(make_napari_viewer, tmp_path):
    """``digits_semiauto(n_images, n_labelled)``: a viewer with a stack layer "digits" of
    sklearn's digits and a semi-automatic labelling dock set up on it (classes 0-9, the
    first ``n_labelled`` labelled by an initial CSV, project in ``tmp_path/proj``).
    Returns ``(viewer, widget, images, labels)``."""
    import numpy as np
    from sklearn.datasets import load_digits

    from expertloop.widgets.semiauto import SemiAutoWidget

    def make(n_images: int, n_labelled: int):
        d = load_digits()
        images, y = (d.images[:n_images] / 16 * 255).astype(np.uint8), d.target[:n_images]
        viewer = make_napari_viewer()
        viewer.add_image(images, name="digits")
        w = SemiAutoWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.stack.reset_choices()
        w.stack.value = viewer.layers["digits"]
        w.class_names.value = ",".join(str(i) for i in range(10))
        init = tmp_path / "init.csv"
        init.write_text("name,label\n" + "".join(f"{i:05d},{y[i]}\n" for i in range(n_labelled)))
        w.initial.value = str(init)
        w.project.value = str(tmp_path / "proj")
        return viewer, w, images, y

    return make
