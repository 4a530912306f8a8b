"""`gridbid hub keys`: the hub's keys file made and extended as a new user does, and
each battery's share of the secrets, which its firmware config accepts."""

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import config as firmware_config  # firmware/config.py (conftest puts firmware/ on the path)
import pytest

from gridbid import platform_cli
from hub.config import hub_toml, keys_file
from protocol import auth, pairing

ROOT = Path(__file__).resolve().parents[3]
HEX_KEY = re.compile(r"[0-9a-f]{64}")


def gridbid(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "gridbid.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def site(tmp_path):
    shutil.copy(ROOT / "hub" / "hub.example.toml", tmp_path / "hub.toml")
    return tmp_path


def keys_of(path):
    return json.loads(path.read_text())


def test_run_without_a_keys_file_says_how_to_make_one(site):
    code, out = gridbid("hub", "run", "--config", "hub.toml", cwd=site)
    assert code == 2
    assert "no keys file" in out and "gridbid hub keys" in out


def test_keys_made_private_complete_and_never_printed(site):
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001", cwd=site)
    assert code == 0, out
    path = site / "hub-keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = keys_of(path)
    assert sorted(data) == ["group", "master"] and data["group"] != data["master"]
    assert not HEX_KEY.search(out), "a key was printed"
    # the hosted aggregators' own identity files, each with its own master secret
    masters = []
    for key_id in (1, 2, 3):
        own = site / ("aggregator-%d.json" % key_id)
        assert stat.S_IMODE(own.stat().st_mode) == 0o600
        assert keys_of(own)["id"] == key_id
        masters.append(keys_of(own)["master"])
    assert len({*masters, data["master"], data["group"]}) == 5  # all different
    cfg = hub_toml.load(site / "hub.toml")  # the hub now starts with it
    battery = site / "battery-1001.json"
    assert stat.S_IMODE(battery.stat().st_mode) == 0o600
    share = keys_of(battery)
    assert share["coap_key"] == cfg["keys"].coap_key(1001).hex()
    assert share["group"] == data["group"]
    assert not share.get("keys"), "a battery trusts no aggregator until its owner enrolls one"
    # nothing of an aggregator's is in the hub's keys file: no master, no pair key
    hub_file = path.read_text()
    for master in masters:
        assert master not in hub_file
        assert pairing.derive(bytes.fromhex(master), pairing.LABEL_ETP, 1001).hex() not in hub_file


def test_an_old_shared_keys_file_is_rewritten_and_old_battery_keys_dropped(site):
    """The old format held a key per party (aggregators' too) and every battery held every
    aggregator's key. The hub refuses it with the command to run; that command keeps the
    group key, drops the shared keys, and gives the battery its pair keys' place empty."""
    old_keys = {"1": "11" * 32, "2": "22" * 32, "3": "33" * 32, "1001": "44" * 32}
    (site / "hub-keys.json").write_text(json.dumps({"keys": old_keys, "group": "55" * 32}))
    os.chmod(site / "hub-keys.json", 0o600)
    template = keys_of(ROOT / "firmware" / "config.example.json")
    (site / "battery-1001.json").write_text(
        json.dumps(
            {**template, "device_id": 1001, "key_id": 1001, "keys": old_keys, "group": "55" * 32}
        )
    )
    with pytest.raises(
        firmware_config.ConfigError, match="old shared-key scheme.*gridbid hub keys"
    ):
        firmware_config.check(keys_of(site / "battery-1001.json"))
    code, out = gridbid("hub", "run", "--config", "hub.toml", cwd=site)
    assert code == 2 and "old shared keys" in out and "gridbid hub keys" in out, out
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001", cwd=site)
    assert code == 0 and "old shared keys dropped" in out, out
    data = keys_of(site / "hub-keys.json")
    assert "keys" not in data and data["group"] == "55" * 32  # batteries keep the group
    again = keys_of(site / "battery-1001.json")
    assert again["keys"] == {} and firmware_config.check(again)["devices"] == template["devices"]


def test_keys_extended_keep_what_batteries_already_hold(site):
    assert gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001", cwd=site)[0] == 0
    before = keys_of(site / "hub-keys.json")
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1002", cwd=site)
    assert code == 0, out
    after = keys_of(site / "hub-keys.json")
    assert after == before  # the master and group keys every battery's keys come from
    assert "already complete" in out.split("\n")[0] and "battery 1002" in out
    assert keys_of(site / "battery-1002.json")["group"] == before["group"]
    code, out = gridbid("hub", "keys", "--config", "hub.toml", cwd=site)
    assert code == 0 and "already complete" in out
    assert keys_of(site / "hub-keys.json") == after


def test_battery_config_from_template_boots_with_the_hub_settings(site):
    template = ROOT / "firmware" / "config.example.json"
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001",
                        "--template", str(template), "--out", "batteries", cwd=site)  # fmt: skip
    assert code == 2 and "no folder" in out, out
    assert not (site / "hub-keys.json").exists(), "nothing written when it cannot all be"
    (site / "batteries").mkdir()
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001",
                        "--template", str(template), "--out", "batteries", cwd=site)  # fmt: skip
    assert code == 0, out
    data = keys_of(site / "batteries" / "battery-1001.json")
    cfg = firmware_config.check(data)  # the firmware's own boot-time check
    hub = hub_toml.load(site / "hub.toml")
    assert cfg["devices"] == keys_of(template)["devices"]
    for battery_name, hub_name in (
        ("market_maker", "name"),
        ("slot_s", "slot_s"),
        ("gate_s", "gate_s"),
        ("group_addr", "group_addr"),
        ("group_port", "group_port"),
        ("tcp_port", "device_port"),
    ):
        assert cfg[battery_name] == hub[hub_name], battery_name  # fmt: skip
    assert list(cfg["keyring"]) == [0]  # the hub's key only: no aggregator before enrollment
    assert cfg["keyring"].get(0).tag(b"x") == auth.HmacKey(hub["keys"].etp_key(1001)).tag(b"x")
    assert cfg["coap_key"].tag(b"x") == hub["keys"].coap.get(1001).tag(b"x")


def test_keys_again_keep_the_batterys_own_settings(site):
    """A re-run refreshes the keys and the settings shared with the hub, and keeps
    everything else battery-<id>.json holds (its devices, reserve, ...)."""
    template = ROOT / "firmware" / "config.example.json"
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001",
                        "--template", str(template), cwd=site)  # fmt: skip
    assert code == 0, out
    battery = site / "battery-1001.json"
    # the owner's own change, and an aggregator it trusts (enrollment)
    first = {**keys_of(battery), "reserve_floor": 15.5, "keys": {"2": "66" * 32}}
    battery.write_text(json.dumps(first))
    toml = (site / "hub.toml").read_text().replace("slot_s = 900", "slot_s = 600")
    (site / "hub.toml").write_text(toml + "\n[[aggregator]]\nkey_id = 4\n")
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1001", cwd=site)
    assert code == 0 and "its own settings kept" in out, out
    assert not HEX_KEY.search(out), "a key was printed"
    again, hub_keys = keys_of(battery), keys_of(site / "hub-keys.json")
    assert set(again) == set(first)
    for name in set(first) - {"keys", "slot_s"}:
        assert again[name] == first[name], name
    assert set(keys_of(template)) <= set(again)  # devices, source, reserve_floor, ...
    assert again["slot_s"] == 600  # the hub's, refreshed
    assert again["keys"] == first["keys"]  # the hub adds no aggregator's key (it has none)
    assert "66" * 32 not in json.dumps(hub_keys)
    assert stat.S_IMODE(battery.stat().st_mode) == 0o600
    firmware_config.check(again)
    (site / "battery-1002.json").write_text("{not json")  # a broken one changes nothing
    before = (site / "hub-keys.json").read_bytes()
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1002", cwd=site)
    assert code == 2 and "battery-1002.json is not valid JSON" in out, out
    assert (site / "hub-keys.json").read_bytes() == before


@pytest.mark.parametrize(
    "args, fault",
    [
        (("--battery", "0"), "battery ids are 1..2^32-1"),
        (("--battery", str(2**32)), "battery ids are 1..2^32-1"),
        (("--battery", "5", "--template", "missing.json"), "cannot read the template"),
        (("--battery", "5", "--template", "hub.toml"), "is not valid JSON"),
    ],
)
def test_bad_keys_requests_are_one_line_and_change_nothing(site, args, fault):
    assert gridbid("hub", "keys", "--config", "hub.toml", cwd=site)[0] == 0
    before = (site / "hub-keys.json").read_bytes()
    code, out = gridbid("hub", "keys", "--config", "hub.toml", *args, cwd=site)
    assert code == 2 and fault in out and len(out.strip().splitlines()) == 1, out
    assert (site / "hub-keys.json").read_bytes() == before
    assert not list(site.glob("battery-*.json"))


def test_a_keys_file_others_can_read_is_refused_not_extended(site):
    assert gridbid("hub", "keys", "--config", "hub.toml", cwd=site)[0] == 0
    path = site / "hub-keys.json"
    os.chmod(path, 0o644)
    before = path.read_bytes()
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "9", cwd=site)
    assert code == 2 and "chmod 600" in out
    assert path.read_bytes() == before


def test_a_batterys_declared_source_reaches_the_platform(site):
    """config.json names what charges the battery (firmware config `source`); the hub
    reads it from the battery configs it provisioned, for its certificates (RECs)."""
    template = site / "solar-home.json"
    template.write_text(json.dumps({**keys_of(ROOT / "firmware" / "config.example.json"),
                                    "source": "solar"}))  # fmt: skip
    for battery, used in (("1001", template), ("1002", ROOT / "firmware" / "config.example.json")):
        code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", battery,
                            "--template", str(used), cwd=site)  # fmt: skip
        assert code == 0, out
    assert firmware_config.check(keys_of(site / "battery-1001.json"))["source"] == "solar"
    with pytest.raises(firmware_config.ConfigError, match="source is solar, wind, hydro or grid"):
        firmware_config.check({**keys_of(site / "battery-1002.json"), "source": "diesel"})
    assert keys_file.battery_sources(site / "hub-keys.json") == {1001: "solar", 1002: "grid"}
    args = argparse.Namespace(config=str(site / "hub.toml"), source=["1002=wind"], db=None,
                              keys=None, backend=None)  # fmt: skip
    sources = platform_cli.settings_from(args)["platform"]["sources"]
    assert sources == {1001: "solar", 1002: "wind"}  # the command line wins


def test_a_battery_provisioned_after_governance_moved_the_grid_gets_the_new_length(site):
    """hub/controls.py kept a governed slot_s in the store: a battery provisioned now is
    given it (the hub would not trade one without CoAP on the old length)."""
    from hub import controls
    from hub.store import Store

    cfg = hub_toml.load(site / "hub.toml", keys=False)
    with Store(cfg["store"]) as store:
        store.set_control(controls.GRID, [900, 1_800_000_000, 600], "hub")
    code, out = gridbid("hub", "keys", "--config", "hub.toml", "--battery", "1003", cwd=site)
    assert code == 0, out
    assert keys_of(site / "battery-1003.json")["slot_s"] == 600
    assert "slot_s = 900" in (site / "hub.toml").read_text()  # hub.toml is left as it was
