"""config.json checks and board adapters — on CPython and the MicroPython VM."""

import asyncio
import json

import board
import config
from checks import TempDir, raises, unhex

from protocol import auth

KEY = "11" * 32


def good():
    device = {"map": "m", "link": "tcp", "host": "127.0.0.1", "port": 5020, "unit": 1}
    return {
        "device_id": 1001, "key_id": 1001, "keys": {"1": KEY, "2": "22" * 32},
        "group": "33" * 32,
        "devices": {"meter": device, "battery": dict(device), "inverter": dict(device)},
    }  # fmt: skip


def test_a_good_config_gets_defaults_and_a_keyring():
    cfg = config.check(good())
    assert cfg["tcp_port"] == config.DEFAULTS["tcp_port"] and cfg["status_ms"] <= 2000
    # The keyring holds the pair key of each trusted aggregator, and none of its own.
    assert 1 in cfg["keyring"] and 2 in cfg["keyring"] and 1001 not in cfg["keyring"]
    assert cfg["keyring"].get(1).tag(b"x") == auth.HmacKey(unhex(KEY)).tag(b"x")
    assert cfg["keyring"].group is not None and cfg.get("coap_key") is None


def test_no_trusted_aggregator_yet_and_a_coap_key_are_a_good_config():
    data = good()
    data["keys"] = {}  # a battery provisioned by the hub, not yet enrolled with anyone
    data["coap_key"] = "44" * 32
    cfg = config.check(data)
    assert len(cfg["keyring"]) == 0 and cfg["keyring"].group is not None
    assert cfg["coap_key"].tag(b"x") == auth.HmacKey(b"\x44" * 32).tag(b"x")
    assert "44" * 32 not in repr(cfg["coap_key"])  # a key is never shown
    data.pop("keys")  # no "keys" at all: the same
    assert len(config.check(data)["keyring"]) == 0


def test_a_key_under_the_batterys_own_id_is_the_old_scheme_and_refused():
    data = good()
    data["keys"]["1001"] = "55" * 32  # the old shared keys: the battery's own key
    err = str(raises(config.ConfigError, config.check, data, "config.json"))
    assert err.startswith("config.json: ") and "\n" not in err  # one line
    assert "own id (1001)" in err and "old shared-key scheme" in err
    assert "gridbid hub keys" in err and "--battery 1001" in err  # what to run
    assert "gridbid aggregator enroll" in err
    assert "55" * 32 not in err and KEY not in err  # and no key


def test_broken_configs_say_what_is_wrong():
    cases = (
        ({"device_id": 0}, "device_id"),
        ({"device_id": "1001"}, "device_id"),
        ({"key_id": 2**32}, "key_id"),
        ({"keys": {"1001": KEY}}, "own id"),
        ({"keys": {"1": "zz"}}, "hex"),
        ({"keys": {"one": KEY}}, "integers"),
        ({"keys": {"1": "22" * 8}}, "at least"),
        ({"keys": ["1", KEY]}, "keys must map"),
        ({"coap_key": "zz"}, "coap_key"),
        ({"coap_key": "22" * 8}, "coap_key"),
        ({"coap_key": 7}, "coap_key"),
        ({"group": None}, "group"),
        ({"devices": {"meter": {}}}, "battery"),
        ({"reserve_floor": -1}, "reserve_floor"),
        ({"min_soc_pct": 120}, "min_soc_pct"),
        ({"max_peers": 40}, "max_peers"),
        ({"status_ms": 5000}, "BESS_STATUS"),
    )
    for change, word in cases:
        data = good()
        data.update(change)
        err = raises(config.ConfigError, config.check, data)
        assert word in str(err), (change, str(err))
    raises(config.ConfigError, config.check, ["not", "an", "object"])


def test_a_torn_or_missing_file_is_a_config_error():
    path = "/tmp/gridbid-test-config.json"
    text = json.dumps(good())
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])  # a write cut by a power loss
    err = raises(config.ConfigError, config.load, path)
    assert "not valid JSON" in str(err)
    raises(config.ConfigError, config.load, "/nonexistent/config.json")
    with open(path, "w") as f:
        f.write(text)
    assert config.load(path)["device_id"] == 1001


class FakeRadio:
    """Stands in for network.WLAN, which only exists on a board with a radio:
    the link comes up on the third attempt and drops once later."""

    def __init__(self):
        self.attempts = 0
        self.up = False

    def active(self, on):
        pass

    def connect(self, ssid, password):
        self.attempts += 1
        self.up = self.attempts >= 3

    def isconnected(self):
        return self.up

    def ifconfig(self):
        return ("192.168.4.2", "255.255.255.0", "192.168.4.1", "192.168.4.1")


def test_wifi_reconnects_with_backoff():
    lines = []
    radio = FakeRadio()
    wifi_board = board.Board({"name": "test", "network": "wifi"}, log=lines.append)
    wifi_board_sleeps = []
    real_sleep = asyncio.sleep

    async def fast_sleep(seconds):
        wifi_board_sleeps.append(seconds)
        await real_sleep(0)

    async def scenario():
        asyncio.sleep = fast_sleep
        try:
            task = asyncio.create_task(
                wifi_board.keep_connected({"ssid": "site", "password": "pw"}, radio)
            )
            while radio.attempts < 3 or not radio.up:
                await real_sleep(0)
            radio.up = False  # the access point reboots
            while radio.attempts < 4:
                await real_sleep(0)
            task.cancel()
        finally:
            asyncio.sleep = real_sleep

    asyncio.run(scenario())
    backoffs = [s for s in wifi_board_sleeps if s >= 1]
    assert backoffs[:2] == [1, 2], backoffs  # doubled after each failed attempt
    assert any("connected as 192.168.4.2" in line for line in lines)
    assert not any("pw" in line for line in lines)  # the password is never logged


def test_clock_is_unix_milliseconds():
    now = board.Board({"name": "unix", "network": "loopback"}).now_ms()
    assert 1700000000000 < now < 4102444800000  # between 2023 and 2100


def test_a_board_clock_starts_at_2000_until_set():
    """A board profile's "clock_at_boot_s" makes the VM's clock start where a real
    board's does after a power cut (board_clock.py then sets board.OFFSET_MS)."""
    before = board.OFFSET_MS
    try:
        unset = board.Board({"name": "unix", "network": "loopback", "clock_at_boot_s": 946684800})
        assert 946684800000 <= unset.now_ms() < 946684800000 + 1000  # 2000-01-01 00:00:00
        host = board.Board({"name": "unix", "network": "loopback"})
        assert abs(host.now_ms() - unset.now_ms()) < 100  # one clock per machine
    finally:  # the clock as it was, for the other tests in this process
        board.OFFSET_MS = before
    assert host.now_ms() > 1700000000000


def test_a_board_profile_with_a_bad_clock_setting_is_refused():
    for key, value in (("host_keeps_time", "yes"), ("host_keeps_time", 1),
                       ("clock_at_boot_s", -1), ("clock_at_boot_s", "2000"),
                       ("clock_at_boot_s", True), ("clock_at_boot_s", 1.5)):  # fmt: skip
        with TempDir() as folder:
            path = folder + "/board.json"
            with open(path, "w") as f:
                json.dump({"name": "x", "network": "wifi", key: value}, f)
            err = str(raises(ValueError, board.load_profile, path))
            assert key in err, err


def test_bad_ntp_settings_are_refused_at_load():
    """board_clock.py's settings are checked with the rest (config.check): one line each."""
    cases = (
        ("ntp_servers", ([], "pool.ntp.org", ["a"] * 5, [5], [""], ["a:0"], ["a:70000"],
                         ["a:x"], [":123"], ["a b"], ["a" * 201], None)),
        ("ntp_timeout_ms", (99, 10001, float("1e999"), "2000")),
        ("ntp_resync_s", (0, 86401, "3600")),
        ("ntp_max_step_ms", (-1, 2001, None)),
    )  # fmt: skip
    for name, values in cases:
        for value in values:
            data = good()
            data[name] = value
            err = str(raises(config.ConfigError, config.check, data, "config.json"))
            assert err.startswith("config.json: " + name) and "\n" not in err, err
    data = good()
    data["ntp_servers"] = ["127.0.0.1:123", "ntp.example.org"]
    assert config.check(data)["ntp_servers"] == ["127.0.0.1:123", "ntp.example.org"]
    assert config.check(good())["ntp_servers"] == ["pool.ntp.org"]  # the default
