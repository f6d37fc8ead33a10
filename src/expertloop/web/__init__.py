"""``expertloop serve``: the annotation project in a web browser.

Remote experts log in (argon2 passwords, server-side sessions, CSRF tokens)
and label, point or contour images that stay on the server; admins manage
users, templates, collections and assignments; hard cases pushed by the
semi-automatic labelling loop are reviewed in a grid. Everything goes through
the same :class:`expertloop.store.Store` as the napari dock, so both see the
same annotations. Needs the ``web`` extra (FastAPI, uvicorn, Jinja2). See
``docs/web.md``.
"""

from __future__ import annotations


def create_app(store, config=None):
    """The FastAPI app over an open store (see :mod:`expertloop.web.app`)."""
    from expertloop.web.app import create_app as _create

    return _create(store, config)


__all__ = ["create_app"]
