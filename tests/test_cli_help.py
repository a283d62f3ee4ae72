"""The command's help: every argument described, every default shown, and all of it without torch."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tensorbridge_launch
from tensorbridge import cli
from tensorbridge_launch.parser import build_parser

SUBCOMMANDS = ["convert", "inspect", "diff", "tour"]
HEAVY = ("torch", "numpy", "ml_dtypes", "tqdm", "tensorbridge")

# The console script's entry, in a fresh interpreter; it reports the packages it imported on stderr.
_ENTRY = """
import json, sys
from tensorbridge_launch import main
sys.argv = ["tensorbridge", *sys.argv[1:]]
try:
    code = main()
finally:
    sys.stderr.write(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
sys.exit(code)
"""


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return {"tensorbridge": parser, **{f"tensorbridge {n}": p for n, p in subparsers(parser).items()}}


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("sub", [None, *SUBCOMMANDS])
def test_help_imports_neither_torch_nor_numpy(sub: str | None) -> None:
    argv = ["--help"] if sub is None else [sub, "--help"]
    proc = subprocess.run(
        [sys.executable, "-c", _ENTRY, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: tensorbridge{'' if sub is None else ' ' + sub} ")
    assert not set(json.loads(proc.stderr)) & set(HEAVY), "imported for --help"


def test_the_installed_console_script_answers_help_without_torch() -> None:
    script = Path(sys.executable).with_name("tensorbridge.exe" if sys.platform == "win32" else "tensorbridge")
    if not script.is_file():
        pytest.skip("the package is not installed with its console script")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}  # -X importtime: one line per module imported
    for argv in (["--help"], *([s, "--help"] for s in SUBCOMMANDS)):
        proc = subprocess.run([script, *argv], capture_output=True, text=True, timeout=60, check=False, env=env)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: tensorbridge"), proc.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
        assert not {m.split(".")[0] for m in imported} & set(HEAVY), argv


def test_a_usage_error_is_still_reported_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    saved, sys.argv = sys.argv, ["tensorbridge", "diff", "only-one.npz"]
    try:
        with pytest.raises(SystemExit) as stop:
            tensorbridge_launch.main()
    finally:
        sys.argv = saved
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tensorbridge diff") and "the following arguments are required: B" in err


def test_the_command_parses_with_the_same_parser() -> None:
    assert cli._parser is build_parser


@pytest.mark.parametrize("name", list(all_parsers()))
def test_every_argument_is_described_and_every_default_shown(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping, so each help text is on one line
    parser = all_parsers()[name]
    text = flat(parser.format_help())
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert actions or name == "tensorbridge tour"
    for action in actions:
        shown = action.option_strings or [action.metavar or action.dest]
        assert action.help and action.help is not argparse.SUPPRESS, f"{name} {shown}: no description"
        assert flat(action.help) in text, f"{name} {shown}"
        if action.default is not None and action.default is not argparse.SUPPRESS:
            assert f"{flat(action.help)} (default: {action.default})" in text, f"{name} {shown}: default not shown"


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        ("diff", ["--rtol RTOL relative tolerance", "(default: 0.0)", "A the first file", "B the second file"]),
        ("convert", ["src the file or directory to read", "dst the file or directory to write", "--dtype DTYPE"]),
        ("convert", ["--max-shard-size SIZE", "--strip-prefix PREFIX", "--only PATTERN", "--from FORMAT"]),
        ("tour", ["--quiet print nothing", "(default: False)"]),
    ],
)
def test_the_help_names(sub: str, expected: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "10000")
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as stop:
        cli.main([sub, "--help"])
    assert stop.value.code == 0
    text = flat(out.getvalue())
    for words in expected:
        assert words in text
