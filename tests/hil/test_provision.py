"""Provisioning: tools/flash.py provision gave the board its key and config.json, told
the hub (its keys file), and printed no secret."""

import hashlib
import json
import re
import stat

import pytest
from benchlib import repl, run, tool

pytestmark = pytest.mark.hil
HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def hub_keys(bench):
    return json.loads((bench.folder / "hub-keys.json").read_text())


def test_provisioning_printed_no_secret(bench):
    out = bench.outputs["provision"]
    assert "battery %d provisioned on %s" % (bench.device_id, bench.port) in out
    assert not HEX_KEY.search(out), "a key was printed:\n" + out
    keys = hub_keys(bench)
    assert str(bench.device_id) in keys["keys"]  # the hub knows the battery now
    for path in (bench.folder / "hub-keys.json",
                 bench.folder / ("battery-%d.json" % bench.device_id)):  # fmt: skip
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_board_accepts_its_config_and_holds_the_hubs_key(bench, dut):
    repl(dut)
    run(dut, "import config; c = config.load('config.json')", ">>>")
    got = run(dut, "print('cfg', c['device_id'], c['key_id'], c['market_maker'], len(c['keys']))",
              r"cfg (\d+) (\d+) (\S+) (\d+)")  # fmt: skip
    assert [x.decode() for x in got.groups()] == [str(bench.device_id)] * 2 + ["hil", "3"]
    # The board's own key is the hub's, shown by a digest of it: no key crosses the wire.
    run(dut, "import hashlib, binascii", ">>>")
    line = "print('own', binascii.hexlify(hashlib.sha256(c['keys']['%d'].encode()).digest())[:16])"
    got = run(dut, line % bench.device_id, r"own b'([0-9a-f]{16})'")
    key = hub_keys(bench)["keys"][str(bench.device_id)]
    assert got.group(1).decode() == hashlib.sha256(key.encode()).hexdigest()[:16]


def test_provisioning_again_keeps_the_key(bench):
    before = hub_keys(bench)["keys"][str(bench.device_id)]
    code, out = tool(*bench.provision_args)
    assert code == 0 and "already complete" in out, out
    assert not HEX_KEY.search(out)
    assert hub_keys(bench)["keys"][str(bench.device_id)] == before
    code, out = tool("verify", "--board", bench.board, "--port", bench.port,
                     "--hub-config", bench.hub_toml, "--device-id", bench.device_id)  # fmt: skip
    assert code == 0 and "(matches " in out, out
