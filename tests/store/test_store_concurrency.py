"""Two processes writing to one collection lose nothing; a held lock is waited for."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from expertloop.store import Store, StoreLockedError

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from stress_worker import expected_label  # noqa: E402

N = 1500  # per process: 3000 single-annotation transactions in all


def _env():
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def test_two_processes_lose_no_write(location, tmp_path):
    loc, files = location
    with Store.create(loc, admin="ada", files_dir=files) as st:
        st.add_user("ada", "bob")
        st.add_user("ada", "cyrus")
        st.add_template("ada", "abc", "label", labels=["a", "b", "c"])
        st.add_collection("ada", "stress", "abc",
                          images=[f"/img/{i:05d}.png" for i in range(N)])
        st.assign("ada", "stress", "bob")
        st.assign("ada", "stress", "cyrus")
    go = tmp_path / "GO"
    procs = [subprocess.Popen([sys.executable, str(HERE / "stress_worker.py"), loc, who,
                               str(N), str(go)], env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for who in ("bob", "cyrus")]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        assert out.startswith(f"done {N}")
    with Store.open(loc, files_dir=files) as st:
        recs = st.annotations("ada", "stress")
        assert len(recs) == 2 * N
        for r in recs:
            i = int(Path(r.uri).stem)
            assert r.label == expected_label(r.annotator, i)
            assert r.time_spent == float(i)
        assert st.progress("ada", "stress") == {
            "bob": {"done": N, "todo": 0, "total": N},
            "cyrus": {"done": N, "todo": 0, "total": N}}


@pytest.fixture
def sqlite_project(tmp_path):
    loc = tmp_path / "proj"
    with Store.create(loc, admin="ada") as st:
        st.add_template("ada", "ab", "label", labels=["a", "b"])
        st.add_collection("ada", "c", "ab", images=["/x/1.png"])
    return loc


def _hold_lock(db: Path, seconds: float, ready: threading.Event) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    ready.set()
    time.sleep(seconds)
    con.execute("COMMIT")
    con.close()


def test_second_writer_waits_with_message(sqlite_project):
    messages = []
    st = Store.open(sqlite_project, busy_timeout=0.1, lock_timeout=30,
                    on_wait=messages.append)
    ready = threading.Event()
    t = threading.Thread(target=_hold_lock,
                         args=(sqlite_project / "expertloop-project.db", 1.0, ready))
    t.start()
    ready.wait(5)
    t0 = time.monotonic()
    rec = st.annotate("ada", "c", "/x/1.png", label="a")
    waited = time.monotonic() - t0
    t.join()
    st.close()
    assert rec.label == "a"
    assert waited >= 0.8
    assert messages and "locked by another writer" in messages[0]


def test_lock_held_too_long_is_a_clear_error(sqlite_project):
    st = Store.open(sqlite_project, busy_timeout=0.1, lock_timeout=0.5)
    ready = threading.Event()
    t = threading.Thread(target=_hold_lock,
                         args=(sqlite_project / "expertloop-project.db", 2.0, ready))
    t.start()
    ready.wait(5)
    with pytest.raises(StoreLockedError, match="kept the project locked"):
        st.annotate("ada", "c", "/x/1.png", label="a")
    t.join()
    # once the other writer is gone, the same write works and nothing was half-written
    assert st.annotations("ada", "c") == []
    st.annotate("ada", "c", "/x/1.png", label="b")
    assert [r.label for r in st.annotations("ada", "c")] == ["b"]
    st.close()
