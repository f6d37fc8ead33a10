from __future__ import annotations

import pytest

from expertloop.store import Store
from expertloop.store.testing import backend_params, fresh_location


@pytest.fixture(params=backend_params())
def location(request, tmp_path):
    """(location, files_dir) of an empty store, for SQLite and PostgreSQL."""
    return fresh_location(request.param, tmp_path)


@pytest.fixture
def project(location):
    """A store with admin 'ada', annotators 'bob' and 'cy', a label template
    'kind' (normal/abnormal/unsure) and collection 'scans' of four images,
    bob and cy assigned."""
    loc, files = location
    store = Store.create(loc, admin="ada", files_dir=files)
    store.add_user("ada", "bob", expertise=["cardiology"])
    store.add_user("ada", "cy")
    store.add_user("ada", "dan")
    store.add_template("ada", "kind", "label", labels=["normal", "abnormal", "unsure"])
    store.add_collection("ada", "scans", "kind", images=[
        {"uri": "/data/s1.png", "meta": {"modality": "US", "patient": "p1"}, "tags": ["hard"]},
        {"uri": "/data/s2.png", "meta": {"modality": "US", "patient": "p2"}},
        {"uri": "/data/s3.png", "meta": {"modality": "MR", "patient": "p1"}, "tags": ["hard"]},
        {"uri": "/data/s4.png", "meta": {"modality": "MR", "patient": "p3"}},
    ])
    store.assign("ada", "scans", "bob")
    store.assign("ada", "scans", "cy")
    yield store
    store.close()
