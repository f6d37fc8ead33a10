"""``expertloop membranes loop``: simulated-expert rounds, resume, bad inputs."""

from __future__ import annotations

import json

import numpy as np

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
    cap = capsys.readouterr()
    assert "resuming" in cap.err
    assert [r["round"] for r in json.loads(cap.out)] == [0, 1, 2]  # --json: stdout is the JSON alone

    # on resume a changed parameter is applied and recorded, never ignored ...
    assert main(_args(data_dir, project, 2, "--lam", "0.3", "--round-epochs", "2")) == 0
    out = capsys.readouterr().err  # messages on stderr (stdout: the --json document)
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


def test_membranes_predict_stack_and_bad_inputs(tmp_path, capsys, tiny_membrane_model):
    """``membranes predict MODEL IMAGES -o OUT``: a stack is predicted plane by
    plane and equals predict_dense of each plane; bad inputs are one line."""
    import tifffile

    from expertloop.engine.jobs import run_job
    from expertloop.engine.membranes.net import predict_dense

    net, model = tiny_membrane_model
    stack = np.random.default_rng(1).integers(0, 255, (3, 40, 36), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0},
                     resolution=(2.0, 2.0))
    (tmp_path / "list.txt").write_text("stack.tif\n")
    rc = main(["membranes", "predict", str(model), f"@{tmp_path / 'list.txt'}", "-o", str(tmp_path / "out"),
               "--tile", "16", "--in-process"])
    assert rc == 0
    with tifffile.TiffFile(tmp_path / "out" / "stack_membranes.tif") as tif:
        prob = tif.asarray()
        assert tif.imagej_metadata["spacing"] == 2.0
    assert prob.shape == stack.shape and prob.dtype == np.float32
    for z in range(3):
        np.testing.assert_allclose(prob[z], run_job(predict_dense(net, stack[z])), atol=1e-6)
    capsys.readouterr()
    for argv, words in [([str(model), str(tmp_path / "*.png")], "no image matches"),
                        ([str(tmp_path / "nomodel.pt"), str(tmp_path / "stack.tif")], "nomodel"),
                        ([str(model), str(tmp_path / "stack.tif"), "--scheduler", "tcp://127.0.0.1:9",
                          "--scheduler-timeout", "1"],
                         "cannot reach the dask scheduler")]:
        assert main(["membranes", "predict", *argv, "-o", str(tmp_path / "o2")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0] and "Traceback" not in err[0], err
