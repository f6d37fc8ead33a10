"""Issue 16: every expertloop command explains itself, --json means one thing
everywhere, and the exit codes are documented in ``expertloop --help``."""

import argparse
import json
from pathlib import Path

import pytest

from expertloop.cli import build_parser, main
from expertloop.commands._cli import JSON_HELP


def _commands(parser, path=("expertloop",)):
    """(path, parser) of every command that runs something (the leaves)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for a in subs:
        for name, p in a.choices.items():
            yield from _commands(p, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_there_are_commands():
    names = {" ".join(p) for p, _ in COMMANDS}
    assert {"expertloop info", "expertloop spots detect", "expertloop store report",
            "expertloop blood predict", "expertloop flim recommend"} <= names
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=lambda x: " ".join(x) if isinstance(x, tuple) else "")
def test_every_command_has_description_examples_and_option_help(path, parser):
    desc = (parser.description or "").strip()
    assert len(desc) >= 12 and desc.endswith("."), path
    assert parser.epilog and parser.epilog.startswith("examples:"), path
    examples = [ln.strip() for ln in parser.epilog.splitlines()[1:] if ln.strip().startswith("expertloop")]
    assert examples, path
    for ex in examples:
        assert ex.startswith(" ".join(path) + " ") or ex == " ".join(path), (path, ex)
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        assert a.help and a.help.strip(), (path, a.dest)
        if "--json" in a.option_strings:  # the same meaning everywhere
            assert isinstance(a, argparse._StoreTrueAction) and a.help == JSON_HELP, path
    text = parser.format_help()
    assert "examples:" in text and "usage: " + " ".join(path) in text


def test_top_level_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for code, words in (("0", "done"), ("1", "skipped"), ("2", "nothing done"), ("130", "interrupted")):
        assert any(line.split()[:1] == [code] and words in line for line in out.splitlines()), code
    assert "--json" in out


def test_commands_that_print_results_offer_json():
    with_json = {" ".join(p) for p, parser in COMMANDS
                 if any("--json" in a.option_strings for a in parser._actions)}
    expected = {"info", "spots phantom", "spots train", "spots detect", "membranes loop", "flim fit",
                "flim segment", "flim recommend", "flim convert-markers", "blood predict", "blood train",
                "semiauto simulate", "semiauto export", "semiauto push-to-store", "semiauto pull-from-store",
                "store report", "store search", "store missing", "membranes predict", "features"}
    assert {f"expertloop {e}" for e in expected} <= with_json


def test_json_output_is_one_document_on_stdout(capsys, data_dir, tmp_path):
    assert main(["info", "--device", "cpu", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["napari-expertloop"] and info["device"].startswith("cpu")

    markers = data_dir / "flim" / "dsb2018_nuclei_128_markers.txt"
    out = tmp_path / "m.tif"
    assert main(["flim", "convert-markers", str(markers), str(out), "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res == {"output": str(out), "marked_pixels": res["marked_pixels"]} and res["marked_pixels"] > 0
    assert main(["flim", "convert-markers", str(markers), str(out)]) == 0  # without: a sentence
    assert capsys.readouterr().out.startswith(f"wrote {out}")

    assert main(["spots", "phantom", str(data_dir / "colin27_crop.nii.gz"), "-o", str(tmp_path / "ph"),
                 "--spots", "5", "--json"]) == 0
    cap = capsys.readouterr()
    ph = json.loads(cap.out)
    assert ph["spots"] == 5 and all(Path(f).is_file() for f in ph["files"])
    assert "simulated clicks" in cap.err
