"""Boot: the firmware tools/flash.py uploaded is what the board runs, and it starts.

pytest -p pytest_embedded tests/hil -m hil --embedded-services serial --port PORT ...
"""

import re

import pytest
from benchlib import ROOT, boot, repl, run, tool

pytestmark = pytest.mark.hil


def test_verify_reads_back_the_version_and_the_config(bench):
    code, out = tool("verify", "--board", bench.board, "--port", bench.port,
                     "--hub-config", bench.hub_toml, "--device-id", bench.device_id)  # fmt: skip
    assert code == 0, out
    ours = re.search(r'VERSION = "(.+)"', (ROOT / "firmware" / "version.py").read_text())[1]
    assert "firmware %s on %s (this tree: %s)" % (ours, bench.port, ours) in out
    assert "(matches %s)" % (bench.folder / ("battery-%d.json" % bench.device_id)) in out


def test_the_board_imports_the_uploaded_bytecode(bench, dut):
    repl(dut)
    found = run(dut, "import version, node; print('from', version.__file__, node.__file__)",
                r"from (\S+) (\S+)")  # fmt: skip
    assert found.group(1).decode().endswith("version.mpy")
    assert found.group(2).decode().endswith("node.mpy")


def test_the_board_boots_and_reports_ready(bench, dut):
    boot(dut, bench.board)
    dut.expect(r"contracts: \d+ live, \d+ to report", timeout=30)
    dut.expect("battery %d ready on" % bench.device_id, timeout=30)
    heap = dut.expect(r"heap: used (\d+), free (\d+)", timeout=15)
    print("heap on this board after start-up: %s used, %s free"
          % (heap.group(1).decode(), heap.group(2).decode()))  # fmt: skip
    repl(dut)


def test_a_broken_config_leaves_the_board_in_safe_idle(bench, dut):
    repl(dut)
    run(dut, "import os; os.rename('config.json', 'config.good')", ">>>")
    try:
        run(dut, "f = open('config.json', 'w'); f.write('{'); f.close()", ">>>")
        boot(dut, bench.board)
        dut.expect("CONFIG ERROR: config.json is not valid JSON", timeout=30)
        dut.expect("safe idle: no trading, no setpoints", timeout=5)
    finally:
        repl(dut)
        # Whatever step failed, the good config goes back: later tests boot on it.
        run(dut, "import os; d = os.listdir(); 'config.json' in d and os.remove('config.json');"
                 " os.rename('config.good', 'config.json')", ">>>")  # fmt: skip
    run(dut, "print('restored', len(open('config.json').read()) > 100)", "restored True")
