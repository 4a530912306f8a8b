"""The `gridbid` command's shape: a parser per verb with only its own options, each with
help; --version and --help without the heavy libraries."""

import argparse
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gridbid import cli

ROOT = Path(__file__).resolve().parents[2]


def gridbid(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "gridbid.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip


def parsers(parser, path=()):
    """(command words, parser) of the root and every subcommand under it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, path + (name,))


def test_every_positional_and_option_has_help():
    found, missing = set(), []
    for path, parser in parsers(cli.build_parser(full=cli.COMMANDS)):
        found.add(path)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                missing += [path + (name,) for name in action.choices if name not in helped]
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(path + (action.dest,))
    assert not missing
    assert {("hub", "keys"), ("device", "sim"), ("settlement", "status"), ("gov", "rewards"),
            ("etp", "encode"), ("demo",), ("experiment",)} <= found  # fmt: skip


def test_each_action_has_only_its_own_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["hub", "keys", "--help"])
    keys = capsys.readouterr().out
    assert "--battery" in keys and "--template" in keys and "--slots" not in keys
    with pytest.raises(SystemExit, match="2"):
        cli.main(["hub", "run", "--config", "x", "--battery", "1"])
    assert "unrecognized arguments: --battery" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["device", "sim", "--help"])
    assert "--tcp-port" in capsys.readouterr().out  # simulator/devicesim.py's own options


@pytest.mark.parametrize(
    "argv, verbosity",
    [(["etp", "decode", "00"], 0), (["-v", "etp", "decode", "00"], 1),
     (["etp", "decode", "00", "-q"], -1), (["-q", "hub", "keys", "--config", "x", "-v"], 1)],
)  # fmt: skip
def test_verbosity_before_or_after_the_command(argv, verbosity):
    parser = cli.build_parser(full=[w for w in argv if not w.startswith("-")][:1])
    assert parser.parse_args(argv).verbosity == verbosity


def test_no_command_shows_the_commands_and_exits_2(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: gridbid") and "settlement" in err and "--version" in err


LOADED = """import sys
from gridbid import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(sorted({m.split(".")[0] for m in sys.modules} & set(%r)))"""


@pytest.mark.parametrize(
    "argv, heavy",
    [(["--help"], ["solana", "solders", "numpy", "pymodbus", "matplotlib", "hub"]),
     (["--version"], ["solana", "solders", "numpy", "pymodbus", "matplotlib", "hub"]),
     (["device", "sim", "--help"], ["pymodbus", "solana", "solders"])],
)  # fmt: skip
def test_help_and_version_load_no_heavy_library(argv, heavy):
    done = subprocess.run([sys.executable, "-c", LOADED % heavy, *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_version():
    done = gridbid("--version")
    assert (done.returncode, done.stdout) == (0, "gridbid %s\n" % importlib.metadata.version(
        "gridbid"))  # fmt: skip
