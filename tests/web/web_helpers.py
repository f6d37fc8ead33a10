"""Helpers shared by the web tests (a module of its own: ``from conftest import``
could pick up another folder's conftest in a full run)."""

from __future__ import annotations

import re

import numpy as np

from expertloop.store import Store, auth

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


def page_csrf(client, path: str = "/") -> str:
    r = client.get(path)
    assert r.status_code == 200
    return csrf_of(r.text)
