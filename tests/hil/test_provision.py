"""Provisioning and enrollment: tools/flash.py provision gave the board its config.json
(its CoAP pair key with the hub, the group key), each hosted aggregator enrolled the
battery (its pair key, through `gridbid device trust`), and nothing printed a secret."""

import hashlib
import json
import re
import stat

import pytest
from benchlib import repl, run, tool

from aggregator import identity
from hub.config import keys_file
from protocol import auth

pytestmark = pytest.mark.hil
HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
PROBE = b"gridbid-hil"  # a known message: the board shows its CoAP key's tag of it


def hub_keys(bench):
    return json.loads((bench.folder / "hub-keys.json").read_text())


def battery_file(bench):
    return json.loads((bench.folder / ("battery-%d.json" % bench.device_id)).read_text())


def pair_key(bench, key_id):
    """The pair key hosted aggregator key_id derives for the battery (from its identity)."""
    me = identity.load(bench.folder / ("aggregator-%d.json" % key_id))
    return me.pair_key(bench.device_id).hex()


def test_provisioning_printed_no_secret(bench):
    out = bench.outputs["provision"]
    assert "battery %d provisioned on %s" % (bench.device_id, bench.port) in out
    assert "battery %d trusts aggregator 1, 2" % bench.device_id in out
    for said in (out, bench.outputs["enroll"]):
        assert not HEX_KEY.search(said), "a key was printed:\n" + said
    assert sorted(hub_keys(bench)) == ["group", "master"]  # the hub's own secrets only
    secrets = ["hub-keys.json", "battery-%d.json" % bench.device_id, "aggregator-1.json",
               "aggregator-2.json", "enroll-1-%d.json" % bench.device_id]  # fmt: skip
    for path in (bench.folder / name for name in secrets):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_the_board_accepts_its_config_and_holds_the_hubs_key(bench, dut):
    repl(dut)
    run(dut, "import config; c = config.load('config.json')", ">>>")
    got = run(dut, "print('cfg', c['device_id'], c['key_id'], c['market_maker'], len(c['keys']))",
              r"cfg (\d+) (\d+) (\S+) (\d+)")  # fmt: skip
    # Its keys: one per aggregator it trusts, none under its own id.
    assert [x.decode() for x in got.groups()] == [str(bench.device_id)] * 2 + ["hil", "2"]
    # The keys are the parties' own, shown by digests and tags: no key crosses the wire.
    run(dut, "import hashlib, binascii", ">>>")
    digest = "binascii.hexlify(hashlib.sha256(c['keys']['%d'].encode()).digest())[:16]"
    for key_id in (1, 2):  # the pair key the aggregator derives from its own secret
        got = run(dut, "print('pair', %s)" % (digest % key_id), r"pair b'([0-9a-f]{16})'")
        expected = hashlib.sha256(pair_key(bench, key_id).encode()).hexdigest()[:16]
        assert got.group(1).decode() == expected
    got = run(dut, "print('coap', binascii.hexlify(c['coap_key'].tag(%r)))" % PROBE,
              r"coap b'([0-9a-f]{32})'")  # fmt: skip
    hub = keys_file.load(bench.folder / "hub-keys.json")  # the key the hub derives for it
    assert got.group(1).decode() == auth.HmacKey(hub.coap_key(bench.device_id)).tag(PROBE).hex()


def test_provisioning_again_keeps_the_key(bench):
    before, hub_before = battery_file(bench), hub_keys(bench)
    code, out = tool(*bench.provision_args)
    assert code == 0 and "already complete" in out, out
    assert not HEX_KEY.search(out)
    after = battery_file(bench)
    assert after["coap_key"] == before["coap_key"] and after["keys"] == before["keys"]
    assert after["keys"] == {"1": pair_key(bench, 1), "2": pair_key(bench, 2)}
    assert hub_keys(bench) == hub_before
    code, out = tool("verify", "--board", bench.board, "--port", bench.port,
                     "--hub-config", bench.hub_toml, "--device-id", bench.device_id)  # fmt: skip
    assert code == 0 and "(matches " in out, out
