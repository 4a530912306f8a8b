"""SunSpec discovery (firmware/sunspec.py) against simulated devices, and at boot.

The simulator (simulator/devicesim.py) lays a SunSpec map's models out as a device
would: at base 0, 40000 or 50000, in any order, or wrongly (another model id, a
garbage length, a chain with no end). The firmware runs on the MicroPython VM
(tests/firmware/device/modbus_probe.py) over Modbus TCP on loopback; the fake-client
checks (tests/firmware/device/sunspec_checks.py) run on CPython and on the VM.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers.processes import read_until, started, stop
from test_modbus_devices import SimThread, probe, tcp_config

from simulator import vm
from simulator.fleet import free_port

sys.path[:0] = [str(vm.ROOT / "tests" / "firmware" / "device")]

import sunspec_checks  # noqa: E402

CPYTHON_ONLY = "pymodbus devices for the firmware on the VM"

CHECKS = sorted(n for n in dir(sunspec_checks) if n.startswith("test_"))


@pytest.mark.parametrize("name", CHECKS)
def test_sunspec_checks_on_cpython(name):
    getattr(sunspec_checks, name)()


def test_sunspec_checks_on_micropython():
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine")
    extra = [vm.ROOT / "tests" / "firmware" / "device", vm.ROOT / "tests" / "portable"]
    argv, env, _name = vm.command(
        vm.ROOT / "tests" / "portable" / "mprun.py", "sunspec_checks", heap="256k",
        extra_path=extra,
    )  # fmt: skip
    result = subprocess.run(argv, env=env, cwd=vm.ROOT, capture_output=True, text=True, timeout=60)
    assert "%d passed, 0 failed" % len(CHECKS) in result.stdout, result.stdout + result.stderr


def served(**kwargs):
    """A simulation started on a free port, past its first step."""
    sim = SimThread(capacity_kwh=13.5, soc_pct=80.0, speed=60.0, **kwargs)
    sim.call(sim.sim.start, 0)
    deadline = time.monotonic() + 5
    while not sim.call(lambda: sim.sim.state["elapsed_s"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return sim


def boot(tmp_path, sim, steps=()):
    """The boot check's line and the steps' lines, the firmware on the VM."""
    first = []
    lines = probe(tmp_path, tcp_config(sim), list(steps), boot=first)
    return first[0], lines


@pytest.mark.parametrize(
    "base, battery_order, inverter_order",
    [(0, [803, 802, 1], [704, 1, 702, 701]), (40000, None, None), (50000, [1, 803, 802], None)],
)
def test_firmware_finds_the_models_at_any_base_and_order(tmp_path, base, battery_order,
                                                         inverter_order):  # fmt: skip
    layouts = {
        "battery": {"base": base, "order": battery_order},
        "inverter": {"base": base, "order": inverter_order},
    }
    sim = served(layouts=layouts)
    try:
        first, (poll, command) = boot(
            tmp_path, sim, [{"do": "poll"}, {"do": "set_power", "watts": 2000}]
        )
        state = sim.call(lambda: dict(sim.sim.state))
        setpoint = sim.call(sim.sim.setpoint_w)
    finally:
        sim.close()
    assert first["problems"] == []
    print("boot check, base %d: %.1f ms for the 3 devices" % (base, first["check_ms"]))
    assert first["check_ms"] < 3000  # a few requests per device, not a scan
    assert first["blocks"]["battery"][0][0] == base and first["blocks"]["inverter"][0][0] == base
    assert poll["ok"] == [True, True, True] and poll["fault"] is None
    assert poll["soc_pct"] == pytest.approx(state["soc_pct"], abs=0.05)
    assert poll["capacity_kwh"] == pytest.approx(13.5)
    assert poll["temperature_c"] == pytest.approx(25.0, abs=0.5)  # model 803, before any power
    assert command["commanded"] == 2000 and setpoint == pytest.approx(2000)  # model 704


def test_a_device_with_another_model_is_reported_and_never_read(tmp_path):
    sim = served(layouts={"battery": {"ids": {802: 801}}})
    try:
        first, (poll,) = boot(tmp_path, sim, [{"do": "poll"}])
    finally:
        sim.close()
    assert first["problems"] == [
        "battery (map sunspec_battery_802, unit 2): MapError: model 802 expected, device "
        "offers [1, 801, 803]"
    ]
    assert poll["ok"] == [True, False, True] and poll["soc_pct"] is None


@pytest.mark.parametrize(
    "layout, text",
    [
        ({"filler": 40, "end": False}, "MapError: chain from 40000: no end after 32 models"),
        ({"lengths": {803: 60000}}, "model 803 at 40134: length 60000 runs past register 65535"),
        ({"end": False}, "MapError: chain from 40000: no model header at 40162"),
        ({"lengths": {803: 27}}, "model 803 has length 27, the map expects 26"),
    ],
)
def test_a_broken_chain_is_bounded_and_reported(tmp_path, layout, text):
    sim = served(layouts={"battery": layout})
    try:
        first, _ = boot(tmp_path, sim)
    finally:
        sim.close()
    assert len(first["problems"]) == 1 and text in first["problems"][0], first


def test_a_value_outside_its_sane_range_is_reported(tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    for name in ("eastron_sdm120", "sunspec_battery_802", "sunspec_der_704"):
        register_map = json.loads(
            (vm.ROOT / "hardware" / "registers" / (name + ".json")).read_text()
        )
        if name == "sunspec_battery_802":
            register_map["points"]["soc_pct"]["range"] = [0, 50]  # the simulator has 80 %
            register_map["points"]["soh_pct"]["range"] = [0, 100]
        (maps / (name + ".json")).write_text(json.dumps(register_map))
    sim = served(maps_dir=maps)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"devices": tcp_config(sim), "maps_dir": str(maps), "steps": []}))
    try:
        argv, env, _name = vm.command(MAPS_PROBE, str(job))
        result = subprocess.run(argv, env=env, cwd=vm.ROOT, capture_output=True, text=True,
                                timeout=60)  # fmt: skip
    finally:
        sim.close()
    problems = json.loads(result.stdout.splitlines()[0])["problems"]
    assert len(problems) == 1 and problems[0].startswith("battery (map sunspec_battery_802")
    assert "soc_pct = 80" in problems[0] and "outside its sane range [0, 50]" in problems[0]


MAPS_PROBE = vm.ROOT / "tests" / "firmware" / "device" / "modbus_probe.py"


def test_inverter_103_with_storage_124_is_read_and_commanded(tmp_path):
    sim = served(
        maps={"inverter": "sunspec_inverter_103_124"},
        layouts={"inverter": {"base": 50000, "order": [1, 124, 103]}},
    )
    try:
        steps = [{"do": "set_power", "watts": 1500}, {"do": "sleep", "ms": 300}, {"do": "poll"}]
        first, (command, _, poll) = boot(tmp_path, sim, steps)
        setpoint = sim.call(sim.sim.setpoint_w)
        writes = sim.call(lambda: list(sim.sim.writes))
        out, into = (sim.call(sim.sim.read_point, "inverter", n)
                     for n in ("discharge_rate_pct", "charge_rate_pct"))  # fmt: skip
        steps = [{"do": "set_power", "watts": -99999}]
        _, (charge,) = boot(tmp_path, sim, steps)
        charging = sim.call(sim.sim.setpoint_w)
    finally:
        sim.close()
    assert first["problems"] == [] and first["blocks"]["inverter"][0][0] == 50000
    assert command["commanded"] == 1500 and setpoint == pytest.approx(1500)
    assert (out, into) == (pytest.approx(30), pytest.approx(-30))  # % of WChaMax 5000 W
    assert {w[0] for w in writes} == {"inverter"} and len(writes) == 3  # 5, 12-13, 17
    assert poll["power_w"] == pytest.approx(1500, abs=1) and poll["fault"] is None
    assert charge["commanded"] == -5000 and charging == pytest.approx(-5000)


def test_firmware_reports_a_mismatch_at_boot_and_stays_in_safe_idle(tmp_path):
    """The whole firmware (app.py): one DEVICE ERROR line naming the device and the
    model, then safe idle (no listening, nothing offered), retried, never a crash."""
    sim = served(layouts={"inverter": {"ids": {704: 705}}})
    link = {"link": "tcp", "host": "127.0.0.1", "port": sim.sim.tcp_port}
    maps = {"meter": ("eastron_sdm120", 1), "battery": ("sunspec_battery_802", 2),
            "inverter": ("sunspec_der_704", 3)}  # fmt: skip
    cfg = {
        "device_id": 7002, "key_id": 7002, "keys": {"1": os.urandom(32).hex()},
        "group": os.urandom(32).hex(), "bind": "127.0.0.61", "tcp_port": free_port(),
        "group_port": free_port(), "data_dir": str(tmp_path / "data"),
        "devices": {r: {**link, "map": m, "unit": u} for r, (m, u) in maps.items()},
    }  # fmt: skip
    path = tmp_path / "config.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(cfg))
    device = started("device", "run", "--config", path)
    try:
        lines = read_until(device, "safe idle", 20)
        lines += read_until(device, "safe idle", 20)  # retried, the same one line
        assert device.poll() is None, "safe idle, not a crash loop"
    finally:
        stop(device)
        sim.close()
    errors = [line for line in lines if "DEVICE ERROR" in line]
    assert (
        errors
        == [
            "DEVICE ERROR: inverter (map sunspec_der_704, unit 3): MapError: model 704 "
            "expected, device offers [1, 701, 702, 705]"
        ]
        * 2
    ), lines
    assert not any("ready on" in line or "Traceback" in line for line in lines)
