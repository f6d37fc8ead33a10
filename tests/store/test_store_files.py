"""Opening projects: corrupt or foreign files are refused and left untouched."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import update

from expertloop.store import Store, StoreError
from expertloop.store.models import StoreInfo


def test_not_a_sqlite_file_is_refused_untouched(tmp_path):
    db = tmp_path / "expertloop-project.db"
    junk = b"this is not a database\n" * 100
    db.write_bytes(junk)
    with pytest.raises(StoreError, match="not a SQLite database.*left untouched"):
        Store.open(tmp_path)
    with pytest.raises(StoreError, match="not a SQLite database"):
        Store.create(tmp_path)
    assert db.read_bytes() == junk


def test_corrupt_sqlite_file_is_a_clear_error(tmp_path):
    with Store.create(tmp_path / "p", admin="ada") as st:
        st.add_template("ada", "ab", "label", labels=["a", "b"])
    db = tmp_path / "p" / "expertloop-project.db"
    data = bytearray(db.read_bytes())
    data[100:len(data)] = b"\xff" * (len(data) - 100)   # keep the header, wreck the rest
    db.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt|cannot read"):
        Store.open(tmp_path / "p")
    assert db.read_bytes() == bytes(data)


def test_foreign_database_and_missing_project(tmp_path):
    db = tmp_path / "other.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE patients (id INTEGER)")
    con.commit()
    con.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="not an expertloop project"):
        Store.create(db)
    with pytest.raises(StoreError, match="not an expertloop project"):
        Store.open(db)
    assert db.read_bytes() == before
    with pytest.raises(StoreError, match="no project at"):
        Store.open(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()


def _project_with_version(path, version: str):
    with Store.create(path) as st:
        with st._writer() as s, s.begin():
            s.execute(update(StoreInfo).where(StoreInfo.key == "schema_version")
                      .values(value=version))


def test_schema_version_checked(tmp_path):
    _project_with_version(tmp_path / "p", "99")
    with pytest.raises(StoreError, match="newer"):
        Store.open(tmp_path / "p")
    _project_with_version(tmp_path / "q", "0")
    with pytest.raises(StoreError, match="expertloop store upgrade"):
        Store.open(tmp_path / "q")


def test_new_sqlite_project_uses_wal(tmp_path):
    Store.create(tmp_path / "p").close()
    con = sqlite3.connect(tmp_path / "p" / "expertloop-project.db")
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    con.close()
