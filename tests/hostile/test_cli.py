"""The command line under user errors (issue 18, defects 14 and 15): outputs
are checked before any work, a user error is one ``expertloop: error:`` line
(exit 2, never a traceback), an unexpected error is one line plus "run with
--debug", and ``--debug`` shows the traceback."""

from __future__ import annotations

import errno
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from expertloop import cli
from expertloop.cli import main


def _run(capsys, argv):
    rc = main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    return rc, out.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("expertloop")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def volume(tmp_path):
    p = tmp_path / "vol.tif"
    tifffile.imwrite(p, np.random.default_rng(0).random((6, 24, 24), dtype=np.float32))
    return p


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in (root ignores file modes:
    then a sysfs folder, where nobody can create files)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    d = Path("/sys/kernel")
    try:
        with tempfile.NamedTemporaryFile(dir=d):
            pass
    except OSError:
        yield d
        return
    pytest.skip("no folder this (root) process cannot write to")


def test_output_folder_that_is_a_file_is_refused_before_work(tmp_path, capsys, volume):
    target = tmp_path / "taken"
    target.write_text("keep me")
    rc, err = _run(capsys, ["spots", "phantom", str(volume), "-o", str(target)])
    assert rc == 2
    assert "exists and is a file" in _one_error_line(err)
    assert target.read_text() == "keep me"


def test_training_with_an_unwritable_model_path_fails_before_training(tmp_path, capsys, volume,
                                                                      unwritable):
    table = tmp_path / "clicks.csv"
    table.write_text("z,y,x,latency_s\n2,5,5,1.0\n")
    t = time.perf_counter()
    rc, err = _run(capsys, ["spots", "train", str(volume), str(table), "-o", str(unwritable / "m")])
    assert rc == 2
    assert "cannot write in" in _one_error_line(err)
    assert "spot patches" not in err  # no image was even prepared
    assert time.perf_counter() - t < 10


@pytest.mark.parametrize("kind", ["file_parent", "folder_as_file", "unwritable"])
def test_every_output_kind_is_checked(tmp_path, unwritable, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    (tmp_path / "adir").mkdir()
    path, what = {"file_parent": (blocker / "out.csv", "file"),
                  "folder_as_file": (tmp_path / "adir", "file"),
                  "unwritable": (unwritable / "x" / "out.csv", "file")}[kind]
    with pytest.raises(cli.OutputError):
        cli.check_output(path, what)
    with pytest.raises(cli.OutputError):
        cli.check_output(blocker / "sub", "folder")
    with pytest.raises(cli.OutputError):
        cli.check_output(blocker / "model", "model")


def test_store_export_to_a_folder_path_is_one_line(tmp_path, capsys):
    assert main(["store", "init", str(tmp_path / "p"), "--admin", "ada"]) == 0
    capsys.readouterr()
    rc, err = _run(capsys, ["store", "export", str(tmp_path / "p"), "c", "--format", "csv",
                            "-o", str(tmp_path), "--as", "ada"])
    assert rc == 2 and "is a folder" in _one_error_line(err)


def test_store_init_on_an_existing_project_says_the_admin_was_not_added(tmp_path, capsys):
    """Defect 15: it printed 'admin eve' but eve was never created."""
    assert main(["store", "init", str(tmp_path / "p"), "--admin", "ada"]) == 0
    capsys.readouterr()
    rc, err = _run(capsys, ["store", "init", str(tmp_path / "p"), "--admin", "eve"])
    assert rc == 2
    line = _one_error_line(err)
    assert "already exists with admin(s) ada" in line and "eve was not added" in line
    from expertloop.store import Store

    with Store.open(str(tmp_path / "p")) as st:
        assert [u.name for u in st.users()] == ["ada"]


def test_bad_flim_spec_is_one_line(tmp_path, capsys):
    img = tmp_path / "i.tif"
    tifffile.imwrite(img, np.zeros((16, 16), np.float32))
    mk = tmp_path / "m.txt"
    mk.write_text("2 16 16\n1 1 1 0\n8 8 2 1\n")
    spec = tmp_path / "arch.yaml"
    spec.write_text("layers: [ {kernel_size: 3\n  - oops: : :\n")
    rc, err = _run(capsys, ["flim", "fit", str(img), "--markers", str(mk), "--spec", str(spec),
                            "-o", str(tmp_path / "m")])
    assert rc == 2 and "neither JSON nor YAML (line" in _one_error_line(err)


@pytest.mark.parametrize("n", ["0", "-3"])
def test_phantom_refuses_zero_or_negative_spots(tmp_path, capsys, volume, n):
    with pytest.raises(SystemExit) as info:
        main(["spots", "phantom", str(volume), "-o", str(tmp_path / "o"), "--spots", n])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err
    from expertloop.engine.spots.phantom import make_phantom

    with pytest.raises(ValueError, match="n_spots must be at least 1"):
        make_phantom(np.ones((8, 8, 8), np.float32), int(n))


def test_flim_without_a_step_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["flim"])
    assert info.value.code == 2


def test_3d_spot_model_on_a_2d_png_says_so(tmp_path, capsys):
    from skimage.io import imsave

    from expertloop.engine.spots.lcnn import SpotConfig, SpotDetector, build_spotnet

    model = SpotDetector(build_spotnet(2, 9), SpotConfig()).save(tmp_path / "spots")
    imsave(tmp_path / "flat.png", np.zeros((20, 20), np.uint8), check_contrast=False)
    rc, err = _run(capsys, ["spots", "detect", str(model), str(tmp_path / "flat.png"),
                            "-o", str(tmp_path / "out")])
    assert rc == 1 and "a 2D image" in err and "3D grey-level volumes" in err
    assert not list((tmp_path / "out").glob("*.csv"))


def test_full_disk_is_named_not_a_traceback(monkeypatch, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/regions.csv")

    monkeypatch.setattr(cli, "cmd_info", full)
    rc, err = _run(capsys, ["info"])
    assert rc == 2
    assert _one_error_line(err) == "expertloop: error: /data/out/regions.csv: the disk is full"


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    def bug(args):
        raise RuntimeError("something nobody expected\nsecond line")

    monkeypatch.setattr(cli, "cmd_info", bug)
    rc, err = _run(capsys, ["info"])
    assert rc == 1
    assert "expertloop: unexpected error: RuntimeError: something nobody expected" in err
    assert "run with --debug" in err and "second line" not in err
    for argv in (["--debug", "info"], ["info", "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "RuntimeError" in err and "run with --debug" not in err


def test_user_error_with_debug_shows_the_traceback_too(tmp_path, capsys):
    assert main(["spots", "phantom", str(tmp_path / "missing.nii"), "-o", str(tmp_path / "o"),
                 "--debug"]) == 2
    assert "missing.nii" in capsys.readouterr().err


def test_store_read_only_and_full_disk_are_not_called_corrupt():
    import sqlite3

    from expertloop.store.core import _db_error_hint

    assert "read-only" in _db_error_hint(sqlite3.OperationalError("attempt to write a readonly database"))
    assert "disk is full" in _db_error_hint(sqlite3.OperationalError("database or disk is full"))
    assert "damaged" in _db_error_hint(sqlite3.DatabaseError("file is not a database"))


def _leaf_parsers(parser, prefix=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaf_parsers(sub, prefix + (name,))


def test_every_subcommand_that_writes_declares_its_outputs():
    """Future subcommands keep the 'check outputs before work' guarantee:
    an -o/--output, --project or --save-* option must be in ``outputs``."""
    writes = {"output", "project", "save_source", "history"}
    missing = []
    for names, p in _leaf_parsers(cli.build_parser()):
        declared = set(p.get_default("outputs") or {})
        opts = {a.dest for a in p._actions if a.option_strings}
        for dest in (opts & writes) - declared:
            missing.append(f"{' '.join(names)} --{dest}")
        if names[:2] == ("flim", "convert-markers"):
            assert "output" in declared
    assert not missing, missing


@pytest.mark.parametrize("argv", [
    ["spots", "phantom", "{tmp}/missing.nii", "-o", "{tmp}/o"],
    ["spots", "train", "{tmp}/only-an-image.tif", "-o", "{tmp}/m.pt"],
    ["spots", "detect", "{tmp}/missing.pt", "{tmp}/x.tif", "-o", "{tmp}/o"],
])
def test_every_user_error_line_names_the_command(tmp_path, capsys, argv):
    rc, err = _run(capsys, [a.format(tmp=tmp_path) for a in argv])
    assert rc == 2
    line = _one_error_line(err)
    assert line.startswith(f"expertloop {argv[0]}: error:") or line.startswith("expertloop: error:"), line
