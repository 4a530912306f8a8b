"""Run the HIL test files (tests/hil) against the MicroPython VM's REPL on a pty, exactly
as the bench runs them against a board's USB serial port (hardware/HIL.md).

The VM (tests/hil/virtual_board.py, the GUIDE's socat recipe) starts with an empty filesystem:
the session uploads the firmware and provisions it with tools/flash.py through
mpremote, boots it, trades with a hub on this machine, and resets it mid-contract.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from hil import virtual_board

from simulator import vm

pytestmark = pytest.mark.timeout(240)


def test_the_hil_suite_passes_against_the_vm_on_a_pty(tmp_path):
    if vm.binary() is None or not virtual_board.available():
        pytest.skip("needs the MicroPython VM and socat")
    with virtual_board.VirtualBoard(tmp_path / "board") as board:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "pytest_embedded", "tests/hil", "-m", "hil",
             "--embedded-services", "serial", "--port", str(board.port), "--hil-board", "unix",
             "--basetemp", str(tmp_path / "bench"), "-q", "-s", "-p", "no:cacheprovider",
             "-W", "ignore::pytest.PytestExperimentalApiWarning"],
            cwd=vm.ROOT, capture_output=True, text=True, timeout=220,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    collected = len(
        re.findall(
            r"^def test_",
            "".join(p.read_text() for p in (vm.ROOT / "tests" / "hil").glob("test_*.py")),
            re.M,
        )
    )
    assert re.search(r"\b%d passed\b" % collected, out), out
    assert "HMAC tag on this board:" in out and "heap on this board after start-up" in out
    # What the session left on the board's filesystem: the bundle, its config, its record.
    assert (board.flash / "version.mpy").exists() and (board.flash / "protocol").is_dir()
    config = json.loads((board.flash / "config.json").read_text())
    assert config["device_id"] == 4242 and config["market_maker"] == "hil"
    assert (board.flash / "data" / "contracts.rec").exists()
