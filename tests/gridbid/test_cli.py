"""The `gridbid` command's shape: a parser per verb with only its own options, each with
help; --version and --help without the heavy libraries; reads that make nothing."""

import argparse
import importlib.metadata
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.platform import BASE, World

from gridbid import cli
from hub.store import Store

ROOT = Path(__file__).resolve().parents[2]
FRAMES = json.loads((ROOT / "tests" / "protocol" / "vectors" / "frames.json").read_text())
PLATFORM_READS = [
    ["credit", "balances"],
    ["credit", "reconcile"],
    ["rec", "show"],
    ["rec", "show", "--status", "listed"],
    ["gov", "proposals"],
    ["gov", "rewards", "--epoch", "0"],
]


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
    with pytest.raises(SystemExit):
        cli.main(["credit", "balances", "--keys", "wallets"])  # a read opens no wallet
    assert "unrecognized arguments: --keys" in capsys.readouterr().err


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


# --- reads make nothing -------------------------------------------------------------------


def files(folder):
    """{relative path: bytes} of every file under folder, and its folders (None)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}  # fmt: skip


def tables(path):
    conn = sqlite3.connect(path)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
    finally:
        conn.close()


@pytest.mark.parametrize(
    "argv, config",
    [(argv, config) for argv in PLATFORM_READS for config in (False, True)]
    + [(["settlement", "status"], True)],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "--config" if v else "defaults",
)
def test_a_read_in_an_empty_folder_makes_nothing(argv, config, tmp_path, monkeypatch, capsys):
    shutil.copy(ROOT / "hub" / "hub.example.toml", tmp_path / "hub.toml")
    with open(tmp_path / "hub.toml", "a") as f:
        f.write("\n[settlement]\n\n[platform]\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv + (["--config", "hub.toml"] if config else [])) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("error: no store at "), out
    assert len(out.err.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["hub.toml"]


def test_etp_makes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["etp", "decode", FRAMES["vectors"][3]["frame"], "--no-verify"]) == 0
    assert cli.main(["etp", "encode", '{"type": "terminate", "termination_code": 1}', "--raw"]) == 0
    assert os.listdir(tmp_path) == []


def test_a_read_of_a_store_without_platform_tables_adds_none(tmp_path, capsys):
    Store(tmp_path / "hub.sqlite").close()  # a hub that ran without [platform]
    before = tables(tmp_path / "hub.sqlite")
    for argv in PLATFORM_READS:
        assert cli.main(argv + ["--db", str(tmp_path / "hub.sqlite")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: the store ") and "no platform tables yet" in err, err
    assert tables(tmp_path / "hub.sqlite") == before
    assert sorted(os.listdir(tmp_path)) == ["hub.sqlite"]


def test_reads_of_a_platform_store_change_no_file(tmp_path, capsys):
    world = World(tmp_path)
    world.contract(101, BASE, 1.0, 1.0)
    world.close()
    (tmp_path / "hub.toml").write_text(
        '[hub]\nstore = "hub.sqlite"\n\n[[aggregator]]\nkey_id = 1\n'
    )
    before = files(tmp_path)
    store, wallets = ["--db", str(tmp_path / "hub.sqlite")], ["--keys", str(tmp_path / "wallets")]
    for argv in PLATFORM_READS:
        extra = wallets if argv[1] == "reconcile" else []
        assert cli.main(argv + store + extra) == 0, capsys.readouterr().err
    assert cli.main(["settlement", "status", "--config", str(tmp_path / "hub.toml")]) == 0
    assert "batches" in capsys.readouterr().out
    assert files(tmp_path) == before
    # A check needs the chain's wallets: a missing one is an error, not made.
    (tmp_path / "wallets" / "platform-authority.json").unlink()
    before = files(tmp_path)
    assert cli.main(["credit", "reconcile", *store, *wallets]) == 2
    assert "no wallet file" in capsys.readouterr().err
    assert files(tmp_path) == before
