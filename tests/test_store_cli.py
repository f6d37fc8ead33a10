"""``expertloop store ...`` end to end (in-process, SQLite)."""

from __future__ import annotations

import json

import numpy as np
import tifffile

from expertloop.cli import main
from expertloop.store import Store


def test_store_cli_end_to_end(tmp_path, capsys):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"im{i}.tif", np.full((8, 8), i, np.uint8))
    proj = str(tmp_path / "proj")
    assert main(["store", "init", proj, "--admin", "ada"]) == 0
    assert main(["store", "user", proj, "bob", "--as", "ada", "--expertise", "us,cardio"]) == 0
    assert main(["store", "user", proj, "cy", "--as", "ada"]) == 0
    assert main(["store", "template", proj, "kind", "--type", "label",
                 "--labels", "normal,abnormal", "--as", "ada"]) == 0
    assert main(["store", "collection", proj, "scans", "--template", "kind",
                 "--images", str(tmp_path / "im*.tif"), "--as", "ada"]) == 0
    assert "scans: 3 images" in capsys.readouterr().out
    assert main(["store", "assign", proj, "scans", "bob", "cy", "--as", "ada"]) == 0
    # permissions are the service layer's: bob cannot create a collection
    assert main(["store", "collection", proj, "mine", "--template", "kind",
                 "--as", "bob"]) == 2
    assert "not an admin" in capsys.readouterr().err
    csv = tmp_path / "labels.csv"
    uris = sorted(str((tmp_path / f"im{i}.tif").resolve()) for i in range(3))
    csv.write_text("uri,label,annotator\n"
                   + "".join(f"{u},{lab},bob\n" for u, lab in zip(uris, ["normal"] * 2
                                                                 + ["abnormal"]))
                   + "".join(f"{u},{lab},cy\n" for u, lab in zip(uris, ["normal",
                                                                     "abnormal",
                                                                     "abnormal"])))
    assert main(["store", "import", proj, "scans", str(csv), "--format", "csv",
                 "--as", "ada"]) == 0
    capsys.readouterr()
    assert main(["store", "report", proj, "scans", "--as", "ada", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    # bob n n a, cy n a a: Cohen's kappa 0.4 (worked in test_store_core)
    assert abs(rep["cohen_kappa"]["bob|cy"]["kappa"] - 0.4) < 1e-12
    assert rep["annotators"]["bob"]["done"] == 3
    assert main(["store", "search", proj, "--as", "ada", "--agreement", "disagree"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 2 and all(uris[1] in line for line in out)
    assert main(["store", "export", proj, "scans", "--format", "csv", "-o",
                 str(tmp_path / "out.csv"), "--as", "bob"]) == 0
    assert (tmp_path / "out.csv").read_text().count("\n") == 7
    capsys.readouterr()
    (tmp_path / "im0.tif").unlink()
    assert main(["store", "missing", proj, "scans", "--as", "bob"]) == 1
    assert capsys.readouterr().out.strip() == uris[0]
    # a corrupt project file: clear message, exit 2, file unchanged
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "expertloop-project.db").write_bytes(b"nope" * 10)
    assert main(["store", "report", str(bad), "scans", "--as", "ada"]) == 2
    assert "not a SQLite database" in capsys.readouterr().err
    assert (bad / "expertloop-project.db").read_bytes() == b"nope" * 10
    with Store.open(proj) as st:
        assert st.user("bob").expertise == ["us", "cardio"]


def test_cli_choices_match_the_models():
    from expertloop.cli import build_parser
    from expertloop.store.models import ROLES, TASK_TYPES

    parser = build_parser()
    args = parser.parse_args(["store", "template", "p", "t", "--type", "mask", "--as", "a"])
    assert args.type == "mask"
    store_sub = next(a for a in parser._subparsers._group_actions[0].choices["store"]
                     ._actions if a.dest == "store_command")
    user = store_sub.choices["user"]
    tpl = store_sub.choices["template"]
    assert tuple(next(a for a in user._actions if a.dest == "role").choices) == ROLES
    assert tuple(next(a for a in tpl._actions if a.dest == "type").choices) == TASK_TYPES
