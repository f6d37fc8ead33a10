"""``expertloop semiauto push-to-store`` / ``pull-from-store``."""

from __future__ import annotations

import numpy as np

from expertloop.cli import main
from expertloop.engine.jobs import run_job
from expertloop.engine.semiauto import (
    SemiAutoConfig,
    SemiAutoLoop,
    from_stack,
    make_classifier,
)
from expertloop.io.semiauto_storage import FolderQueueStorage
from expertloop.store import Store


def test_push_and_pull_from_the_command_line(tmp_path, capsys):
    from sklearn.datasets import load_digits

    d = load_digits()
    images, y = (d.images[:200] / 16 * 255).astype(np.uint8), d.target[:200]
    labels = np.full(200, -1)
    labels[40:80] = y[40:80]
    proj = tmp_path / "proj"
    loop = SemiAutoLoop(from_stack(images), [str(i) for i in range(10)], labels, make_classifier("logreg-hand"),
                        config=SemiAutoConfig(t=0.95, batch_size=60), val_indices=np.arange(40), val_labels=y[:40],
                        storage=FolderQueueStorage(proj))
    run_job(loop.run_iteration())
    n = len(loop.queue)
    assert n >= 2
    with Store.create(tmp_path / "store", admin="ada") as st:
        st.add_user("ada", "bob")
    common = [str(proj), "--store", str(tmp_path / "store"), "--collection", "round 1"]
    assert main(["semiauto", "push-to-store", *common, "--as", "ada", "--assign-to", "bob"]) == 0
    out = capsys.readouterr().out
    assert f"{n} hard case(s) pushed to 'round 1'" in out and "assigned to bob" in out
    with Store.open(tmp_path / "store") as st:
        preds = sorted(st.predictions("bob", "round 1").values(), key=lambda p: p.meta["semiauto_index"])
        assert len(preds) == n and all(p.uri.startswith("stack://semiauto#") for p in preds)
        st.annotate("bob", "round 1", preds[0].uri, label="3")
    assert main(["semiauto", "pull-from-store", *common, "--actor", "bob"]) == 0
    out = capsys.readouterr().out
    assert f"1 new decision(s), 0 updated, 0 already there; {n - 1} still to review" in out
    q = SemiAutoLoop.restore(FolderQueueStorage(proj), loop.collection, make_classifier("logreg-hand")).queue
    assert q.decisions() == {preds[0].meta["semiauto_index"]: 3}
    # a second pull adds nothing
    assert main(["semiauto", "pull-from-store", *common, "--as", "ada"]) == 0
    assert "0 new decision(s), 0 updated, 1 already there" in capsys.readouterr().out
    # a label outside the loop's classes (the collection's template allows "unsure"): refused, exit 1
    with Store.open(tmp_path / "store") as st:
        st.add_template("ada", "digits+", "label", labels=[str(i) for i in range(10)] + ["unsure"])
        st.add_collection("ada", "wide", "digits+")
    wide = [str(proj), "--store", str(tmp_path / "store"), "--collection", "wide", "--as", "ada"]
    assert main(["semiauto", "push-to-store", *wide, "--assign-to", "bob"]) == 0
    with Store.open(tmp_path / "store") as st:
        uri = preds[1].uri
        st.annotate("bob", "wide", uri, label="unsure")
    capsys.readouterr()
    assert main(["semiauto", "pull-from-store", *wide]) == 1
    cap = capsys.readouterr()
    assert "1 refused" in cap.out and "labelled 'unsure' by bob: not a class" in cap.err
    assert preds[1].meta["semiauto_index"] not in SemiAutoLoop.restore(
        FolderQueueStorage(proj), loop.collection, make_classifier("logreg-hand")).queue.decisions()
    # errors: non-admin push, missing project, missing store
    assert main(["semiauto", "push-to-store", *common, "--as", "bob"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["semiauto", "pull-from-store", str(tmp_path / "nope"), *common[1:], "--as", "ada"]) == 2
    assert "no such project folder" in capsys.readouterr().err
    assert main(["semiauto", "pull-from-store", str(proj), "--store", str(tmp_path / "nostore"),
                 "--collection", "x", "--as", "ada"]) == 2
    assert "no project" in capsys.readouterr().err
