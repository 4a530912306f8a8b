"""Issue 17 row 11: bad battery config.json and register-map values, table-driven. Each is
refused at load with one ConfigError/MapError line that names the setting, never a
traceback nor a task that dies later (before, 7 tracebacks and 3 silent task deaths:
bad bind, data_dir missing or a file, a 2 MB config, deep nesting, a string
max_registers, a bad group_addr, max_kw 2e6, reserve_floor 2e5). Runs on CPython and the
MicroPython VM; failed before the fix (most values were taken, or raised TypeError)."""

import json
import os

import config
import register_map
from checks import TempDir, raises

# The test's own tables, and config and register_map compiled from source on the VM (a
# board runs them precompiled, and drops them after start-up)
MICROPYTHON_HEAP = "160k"

KEY = "11" * 32
INF = float("1e999")  # what JSON's 1e999 parses to
DEVICE = {"map": "m", "link": "tcp", "host": "127.0.0.1", "port": 5020, "unit": 1}


def good():
    return {"device_id": 1001, "key_id": 1001, "keys": {"1": KEY}, "group": "33" * 32,
            "devices": {"meter": dict(DEVICE), "battery": dict(DEVICE),
                        "inverter": dict(DEVICE)}}  # fmt: skip


# (setting, bad value): the message must name the setting.
NUMBERS = (
    ("group_port", (0, 65536, -1, 1.5, "47400", None, True, INF)),
    ("tcp_port", (0, 70000, 2.5, "x", [], INF)),
    ("reserve_floor", (-1, 2e5, INF, "14", None, [1])),
    ("min_soc_pct", (-0.1, 101, INF, "20")),
    ("sell_pct", (-5, 100.5, "all")),
    ("max_kw", (2e6, -1, INF, "5", {})),
    ("slot_s", (0, 8.5, 86401, "900")),
    ("gate_s", (-1, 1.5, "300")),
    ("slots_ahead", (0, 97, 1.5)),
    ("auction_ms", (-1, 60001, INF)),
    ("confirm_ms", (0, 10**9)),
    ("max_peers", (0, 17, 2.5, "8")),
    ("max_unauthenticated", (0, 9, "2")),
    ("auth_ms", (0, 10**7, INF)),
    ("status_ms", (5000, 0)),
    ("register_s", (0, 10**6)),
    ("hub_status_s", (0, INF)),
    ("hub_id", (-1, 2**32, 1.5)),
    ("poll_ms", (1, INF)),
    ("tick_ms", (0, "1000")),
    ("alarm_poll_ms", (0, 5000)),
    ("success_share", (1.5, -0.1, INF)),
    ("flush_s", (-1, INF)),
    ("heap_report_s", (0, INF)),
    ("coap_reconcile_s", (0, INF)),
    ("coap_ack_ms", (0, INF)),
    ("device_id", (0, -1, 2**64, "1001", 1.5, None)),
    ("key_id", (0, 2**32, "x")),
)
OTHERS = (
    ("bind", ("not-an-ip", "256.1.1.1", "1.2.3", 7, None, "")),
    ("group_addr", ("not-an-ip", "10.0.0.1", "240.0.0.1", 239, "")),
    ("data_dir", ("", 5, None)),
    ("registers_dir", ("", 5)),
    ("market_maker", ("", 7)),
    ("coap_hub", (5, "")),
    ("wifi", ("ssid", {"ssid": "a"}, {"ssid": 1, "password": "b"})),
    ("keys", ([], "x", {"1": "zz"}, {"1": 5})),
    ("group", (None, 5)),
    ("coap_key", ("zz", 7)),
    ("source", ("coal", 5)),
    ("max_peer", (8,)),  # a typo
)
DEVICES = (
    ("port", (0, 70000, "502")),
    ("unit", (0, 248, "1")),
    ("timeout_ms", (0, INF, "500")),
    ("link", ("udp", None)),
    ("host", ("", 5)),
    ("map", ("", 5)),
    ("baud", (-1, "9600")),
    ("parity", ("E",)),  # unknown
)


def refused(change, word):
    data = good()
    data.update(change)
    err = str(raises(config.ConfigError, config.check, data, "config.json"))
    assert "\n" not in err and err.startswith("config.json: "), err
    assert word in err, (change, err)


def test_every_bad_battery_setting_is_one_clear_line():
    count = 0
    for name, values in NUMBERS + OTHERS:
        for value in values:
            refused({name: value}, name)
            count += 1
    for name, values in DEVICES:
        for value in values:
            devices = good()["devices"]
            devices["battery"][name] = value
            refused({"devices": devices}, "devices.battery")
            count += 1
    refused({"devices": {"meter": DEVICE, "battery": DEVICE, "inverter": DEVICE, "x": 1}}, "x")
    refused({"devices": {"meter": DEVICE}}, "devices.battery")
    assert count >= 100, count


def test_bad_files_are_one_clear_line():
    with TempDir() as folder:
        path = folder + "/config.json"
        cases = (
            (None, "bytes"),  # a 2 MB config: refused before it is read
            ("[" * 5000 + "]" * 5000, "nests"),
            ('{"a": ' * 9 + "1" + "}" * 9, "nests"),
            ('{"device_id": 1001', "not valid JSON"),
        )
        for text, word in cases:
            with open(path, "w") as f:
                for _ in range(512 if text is None else 1):
                    f.write("x" * 4096 if text is None else text)
            err = str(raises(config.ConfigError, config.load, path))
            assert word in err and "\n" not in err, err
        data = good()
        for data_dir, word in ((path, "is a file"), (folder + "/no/such/dir", "cannot be made")):
            data["data_dir"] = data_dir
            with open(path, "w") as f:
                f.write(json.dumps(data))
            err = str(raises(config.ConfigError, config.load, path))
            assert "data_dir" in err and word in err, err
        os.remove(path)


MAP = {
    "name": "t", "kind": "meter", "max_registers": 10, "blocks": [[0, 20]],
    "defaults": {"function": 4, "type": "f32"}, "points": {
        "voltage_v": {"address": 0}, "current_a": {"address": 2}, "power_w": {"address": 4},
        "import_kwh": {"address": 6}, "export_kwh": {"address": 8, "scale": 0.001}},
}  # fmt: skip
MAP_CASES = (
    ({"max_registers": "125"}, "max_registers"),
    ({"max_registers": 0}, "max_registers"),
    ({"max_registers": 126}, "max_registers"),
    ({"blocks": [[0, 70000]]}, "blocks"),
    ({"blocks": [[-1, 2]]}, "blocks"),
    ({"blocks": "0-20"}, "blocks"),
    ({"blocks": [[0]]}, "blocks"),
    ({"defaults": {"colour": 1}}, "colour"),
    ({"defaults": []}, "defaults"),
    ({"not_implemented": {"u16": "x"}}, "not_implemented"),
    ({"not_implemented": {"u8": 1}}, "u8"),
    ({"kind": "heater"}, "kind"),
    ({"points": {}}, "points"),
    ({"points": []}, "points"),
    ({"extra": 1}, "extra"),
    ({"name": [1]}, "name"),
)
POINT_CASES = (
    ({"address": 65535}, "address"),  # an f32 needs two registers
    ({"address": -1}, "address"),
    ({"address": "0"}, "address"),
    ({"address": 1.5}, "address"),
    ({"address": None}, "address"),
    ({"type": "u64"}, "type"),
    ({"function": 6}, "function"),
    ({"word_order": "middle"}, "word_order"),
    ({"scale": 0}, "scale"),
    ({"scale": INF}, "scale"),
    ({"scale": "1"}, "scale"),
    ({"scale": 1e12}, "scale"),
    ({"sf": "nowhere"}, "sf"),
    ({"sf": 5}, "sf"),
    ({"unit": 5}, "unit"),
    ({"colour": "red"}, "colour"),
    ({"derive": "voltage_v"}, "derive"),
    ({"derive": [1]}, "derive"),
)


def test_every_bad_register_map_value_is_one_clear_line():
    count = 0
    for change, word in MAP_CASES:
        bad = json.loads(json.dumps(MAP))
        bad.update(change)
        err = str(raises(register_map.MapError, register_map.check_map, bad, "t.json"))
        assert word in err and "\n" not in err and err.startswith("t.json"), (change, err)
        count += 1
    for change, word in POINT_CASES:
        bad = json.loads(json.dumps(MAP))
        bad["points"]["power_w"].update(change)
        err = str(raises(register_map.MapError, register_map.check_map, bad, "t.json"))
        assert "power_w" in err and word in err and "\n" not in err, (change, err)
        count += 1
    err = str(raises(register_map.MapError, register_map.load_map, "/nonexistent/m.json"))
    assert "cannot read" in err
    assert count >= 30, count
