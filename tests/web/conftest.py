"""A served project for the web tests: real store (SQLite and PostgreSQL), real files.

Users: admin ``ada``, annotators ``bob`` (assigned to both collections) and ``cy``
(assigned to ``scans`` only); everyone's password is ``PASSWORDS[name]`` and
already changed (no ``must_change``). ``scans`` (label task, 4 PNGs and one 3D
TIFF) has model predictions; ``cells`` is a contour task bob alone may see.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from expertloop.store import Store, auth  # noqa: E402
from expertloop.store.testing import backend_params, fresh_location  # noqa: E402

PASSWORDS = {"ada": "ada-secret-1", "bob": "bob-secret-1", "cy": "cy-secret-12"}


def make_images(root):
    import imageio.v3 as iio
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(4):
        img = (rng.random((40, 60)) * 50 + 40 * k).astype(np.uint8)
        p = root / f"scan{k}.png"
        iio.imwrite(p, img)
        paths.append(str(p))
    vol = (rng.random((5, 32, 24)) * 4000).astype(np.uint16)
    p = root / "stack.tif"
    tifffile.imwrite(p, vol)
    paths.append(str(p))
    return paths


def build_project(loc, files, root):
    store = Store.create(loc, admin="ada", files_dir=files)
    store.add_user("ada", "bob", expertise=["cardiology"])
    store.add_user("ada", "cy")
    for name, pw in PASSWORDS.items():
        auth.set_password(store, None, name, pw)
    paths = make_images(root)
    store.add_template("ada", "kind", "label", labels=["normal", "abnormal", "unsure"])
    store.add_collection("ada", "scans", "kind")
    store.push_predictions("ada", "scans", [
        {"uri": p, "label": lab, "confidence": c}
        for p, lab, c in zip(paths, ["normal", "normal", "abnormal", "normal", "normal"],
                             [0.6, 0.7, 0.55, 0.9, 0.8])], model="m1")
    store.add_template("ada", "outline", "contour", labels=["cell"])
    store.add_collection("ada", "cells", "outline", images=paths[:2])
    store.assign("ada", "scans", "bob")
    store.assign("ada", "scans", "cy")
    store.assign("ada", "cells", "bob")
    return store


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


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field in the page"
    return m.group(1)


def login(client, name: str, password: str | None = None):
    """Log ``client`` in through the login form; returns the final response."""
    page = client.get("/login")
    assert page.status_code == 200
    return client.post("/login", data={"username": name,
                                       "password": PASSWORDS[name] if password is None
                                       else password,
                                       "csrf": csrf_of(page.text), "next": "/"})


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


def page_csrf(client, path: str = "/") -> str:
    r = client.get(path)
    assert r.status_code == 200
    return csrf_of(r.text)
