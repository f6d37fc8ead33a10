"""``expertloop membranes loop``: simulated-expert rounds, resume, bad inputs."""

from __future__ import annotations

import json

from expertloop.cli import main


def _args(data_dir, project, rounds, *extra):
    d = data_dir / "membranes"
    return [
        "membranes", "loop", "--project", str(project),
        "--source-images", str(d / "isbi_00_image.png"), str(d / "isbi_01_image.png"),
        "--source-truth", str(d / "isbi_00_label.png"), str(d / "isbi_01_label.png"),
        "--source-membrane-value", "0",
        "--target-images", str(d / "vnc_00_raw.png"), str(d / "vnc_01_raw.png"),
        "--target-truth", str(d / "vnc_00_membranes.png"), str(d / "vnc_01_membranes.png"),
        "--target-membrane-value", "255",
        "--validation-images", str(d / "vnc_08_raw.png"),
        "--validation-truth", str(d / "vnc_08_membranes.png"),
        "--window", "16", "--channels", "4", "--source-epochs", "1", "--target-epochs", "1",
        "--round-epochs", "1", "--samples-per-epoch", "256", "--initial-size", "32",
        "--max-windows", "3", "--rounds", str(rounds), "--json", *extra,
    ]


def test_loop_runs_rounds_and_resumes(data_dir, tmp_path, capsys):
    project = tmp_path / "proj"
    assert main(_args(data_dir, project, 1, "--save-source", str(tmp_path / "src"))) == 0
    out = capsys.readouterr().out
    records = json.loads(out.strip().splitlines()[-1])
    assert [r["round"] for r in records] == [0, 1]
    assert records[1]["labelled_pixels"] > records[0]["labelled_pixels"] == 32 * 32
    assert (tmp_path / "src.pt").exists() and (project / "models" / "round_001.pt").exists()
    assert main(_args(data_dir, project, 2)) == 0  # continue the same project
    out = capsys.readouterr().out
    assert "resuming" in out
    assert [r["round"] for r in json.loads(out.strip().splitlines()[-1])] == [0, 1, 2]

    # on resume a changed parameter is applied and recorded, never ignored ...
    assert main(_args(data_dir, project, 2, "--lam", "0.3", "--round-epochs", "2")) == 0
    out = capsys.readouterr().out
    assert "lam: 0.8 -> 0.3" in out and "round_epochs: 1 -> 2" in out
    saved = json.loads((project / "project.json").read_text())["config"]
    assert saved["lam"] == 0.3 and saved["round_epochs"] == 2 and saved["net"]["window"] == 16
    changed = [json.loads(x) for x in (project / "journal.jsonl").read_text().splitlines()
               if '"config changed"' in x]
    assert changed[-1]["source"] == "command line" and changed[-1]["changes"]["lam"] == {"from": 0.8, "to": 0.3}
    # ... and a parameter fixed at creation is refused with a clear message
    args = _args(data_dir, project, 3)
    args[args.index("--window") + 1] = "32"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "window is fixed" in err and "16" in err and "32" in err
    assert json.loads((project / "project.json").read_text())["round"] == 2  # nothing ran

    # a random-region control from the saved source model
    other = tmp_path / "random"
    args = _args(data_dir, other, 1, "--strategy", "random", "--source-model", str(tmp_path / "src.pt"))
    assert main(args) == 0
    journal = (other / "journal.jsonl").read_text()
    assert '"strategy": "random"' in journal and "source trained" not in journal


def test_bad_inputs_give_clear_errors(data_dir, tmp_path, capsys):
    d = data_dir / "membranes"
    # wrong polarity value for the target masks: no pixel has it
    args = _args(data_dir, tmp_path / "a", 1)
    args[args.index("--target-membrane-value") + 1] = "7"
    assert main(args) == 2
    assert "no pixel has the membrane value 7" in capsys.readouterr().err
    args = _args(data_dir, tmp_path / "b", 1)
    args[args.index("--source-membrane-value") + 1] = "1"  # the masks hold only 0 and 255
    assert main(args) == 2
    assert "membrane value 1" in capsys.readouterr().err
    args = _args(data_dir, tmp_path / "c", 1, "--source-model", str(tmp_path / "missing.pt"))
    args[args.index("--source-images"):args.index("--source-membrane-value") + 2] = []
    assert main(args) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["membranes", "loop", "--project", str(tmp_path / "d"), "--target-images",
                 str(d / "nope.png"), "--target-truth", str(d / "nope.png"),
                 "--target-membrane-value", "255"]) == 2
