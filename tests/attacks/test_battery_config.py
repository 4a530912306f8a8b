"""Bad battery config.json values on the real firmware (the MicroPython VM, as `gridbid
device run` starts it), issue 17 row 11. Before, these gave a traceback and a crash loop
(bad bind, data_dir a file, a 2 MB config, deep nesting) or a battery that booted and
then lost its discovery task silently (bad group_addr, max_kw 2e6, reserve_floor 2e5).
Now each is one CONFIG ERROR line naming the setting, then safe idle: the process stays
up, trades nothing and prints no traceback. Failed before the fix (checked)."""

import json
import os
import subprocess
import time

import pytest
from helpers.processes import read_until, stop

from simulator import vm
from simulator.fleet import UNIX_BOARD, free_port

pytestmark = pytest.mark.timeout(120)


def config(tmp_path):
    link = {"link": "tcp", "host": "127.0.0.1", "port": free_port()}
    maps = {"meter": ("eastron_sdm120", 1), "battery": ("sunspec_battery_802", 2),
            "inverter": ("sunspec_der_704", 3)}  # fmt: skip
    return {
        "device_id": 7001, "key_id": 7001, "keys": {"1": os.urandom(32).hex()},
        "group": os.urandom(32).hex(), "bind": "127.0.0.61", "tcp_port": free_port(),
        "group_port": free_port(), "data_dir": str(tmp_path / "data"),
        "devices": {r: {**link, "map": m, "unit": u} for r, (m, u) in maps.items()},
    }  # fmt: skip


CASES = (
    ({"bind": "not-an-ip"}, "bind"),
    ({"group_addr": "not-an-ip"}, "group_addr"),
    ({"group_addr": "10.0.0.1"}, "group_addr"),
    ({"max_kw": 2e6}, "max_kw"),
    ({"reserve_floor": 2e5}, "reserve_floor"),
    ({"data_dir": "FILE"}, "data_dir"),
    ({"data_dir": "/nonexistent/a/b"}, "data_dir"),
    ("map", "max_registers"),  # a string max_registers in the battery's register map
    ("2 MB", "bytes"),
    ("deep", "nests"),
)


@pytest.mark.parametrize("change, word", CASES, ids=[w for _c, w in CASES])
def test_a_bad_value_is_one_config_error_line_and_safe_idle(tmp_path, change, word):
    path = tmp_path / "config.json"
    cfg = config(tmp_path)
    if change == "2 MB":
        text = json.dumps({**cfg, "pad": "x" * 2 * 2**20})
    elif change == "map":
        registers = tmp_path / "registers"
        registers.mkdir()
        for source in (vm.ROOT / "hardware" / "registers").glob("*.json"):
            data = json.loads(source.read_text())
            if data["kind"] == "battery":
                data["max_registers"] = "125"
            (registers / source.name).write_text(json.dumps(data))
        text = json.dumps({**cfg, "registers_dir": str(registers)})
    elif change == "deep":
        text = json.dumps({**cfg, "pad": "@"}).replace('"@"', "[" * 5000 + "]" * 5000)
    else:
        cfg.update(change)
        if cfg["data_dir"] == "FILE":
            cfg["data_dir"] = str(path)  # the config file itself: a file, not a folder
        text = json.dumps(cfg)
    path.write_text(text)
    argv, env, _runtime = vm.command(vm.FIRMWARE / "main.py", str(UNIX_BOARD), str(path))
    device = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = read_until(device, "safe idle", 20)
        time.sleep(1)
        assert device.poll() is None, "safe idle, not a crash loop"
        lines += [line.rstrip() for line in iter(device.stdout.readline, "")]  # non-blocking
    finally:
        stop(device)  # (Ctrl-C: the VM's own KeyboardInterrupt report is not ours)
    errors = [line for line in lines if "CONFIG ERROR" in line]
    assert errors and word in errors[0], lines
    assert not any("Traceback" in line or "ready on" in line for line in lines), lines
