"""A served project for the web tests: real store (SQLite and PostgreSQL), real files.

Users: admin ``ada``, annotators ``bob`` (assigned to both collections) and ``cy``
(assigned to ``scans`` only); everyone's password is ``PASSWORDS[name]`` and
already changed (no ``must_change``). ``scans`` (label task, 4 PNGs and one 3D
TIFF) has model predictions; ``cells`` is a contour task bob alone may see.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from web_helpers import build_project, login  # noqa: E402

from expertloop.store import auth  # noqa: E402
from expertloop.store.testing import backend_params, fresh_location  # noqa: E402


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch):
    """Low argon2 costs for speed (about 0.4 s per hash with the defaults here)."""
    monkeypatch.setattr(auth, "HASH_PARAMS", {"time_cost": 1, "memory_cost": 1024,
                                              "parallelism": 1})


@pytest.fixture(params=backend_params())
def served(request, tmp_path):
    """(store, app, image_root) over SQLite and PostgreSQL."""
    from expertloop.web.app import WebConfig, create_app

    loc, files = fresh_location(request.param, tmp_path)
    root = tmp_path / "images"
    store = build_project(loc, files, root)
    app = create_app(store, WebConfig(image_roots=[root]))
    yield store, app, root
    store.close()


@pytest.fixture
def client_for(served):
    """``client_for(name)``: a logged-in TestClient for that user."""
    from fastapi.testclient import TestClient

    _store, app, _root = served
    clients = []

    def make(name: str):
        c = TestClient(app)
        clients.append(c)
        r = login(c, name)
        assert r.status_code == 200 and "My tasks" in r.text, r.text[:500]
        return c

    yield make
    for c in clients:
        c.close()


