"""The firmware's Modbus layer against the simulated meter, battery and inverter.

The simulator (simulator/devicesim.py, pymodbus) runs in this process on its own
event loop thread; the firmware runs on the MicroPython VM (tests/device/
modbus_probe.py, steps in, one JSON line per step out) over Modbus TCP on
loopback and over Modbus RTU through a socat pty pair, and on CPython where
that is cheap (the same modules imported directly).
"""

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import serial_pty

from protocol import message
from simulator import devicesim, vm

ROOT = vm.ROOT
PROBE = ROOT / "tests" / "firmware" / "device" / "modbus_probe.py"
MAPS = str(ROOT / "hardware" / "registers")
sys.path[:0] = [str(ROOT / "tests" / "firmware" / "device"), str(ROOT / "tests" / "portable")]

import devices  # noqa: E402  (firmware/, on the path from tests/conftest.py)
import modbus  # noqa: E402
import plant_checks  # noqa: E402
import sunspec  # noqa: E402

pty_pair = serial_pty.pty_pair  # the fixture, used by name
CPYTHON_ONLY = "pymodbus devices for the firmware on the VM"

ROLES = ("meter", "battery", "inverter")
TIMEOUT_MS = 300


class SimThread:
    """A Simulation served from its own event loop thread; call() runs code on that loop."""

    def __init__(self, **kwargs):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sim = devicesim.Simulation(**kwargs)

    def call(self, fn, *args):
        async def run():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self):
        if self.loop.is_closed():
            return
        self.call(self.sim.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def sim():
    served = SimThread(capacity_kwh=13.5, soc_pct=80.0, speed=60.0)
    served.call(served.sim.start, 0)
    # The state settles at the simulation's first step (voltage follows SoC from then):
    # a snapshot taken before it would not match what a device reads a moment later.
    deadline = time.monotonic() + 5
    while not served.call(lambda: served.sim.state["elapsed_s"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield served
    served.close()


def tcp_config(sim):
    cfg = {
        role: {
            "map": sim.sim.maps[role]["name"],
            "link": "tcp",
            "host": "127.0.0.1",
            "port": sim.sim.tcp_port,
            "unit": sim.sim.units[role],
            "timeout_ms": TIMEOUT_MS,
        }
        for role in ROLES
    }
    cfg["link_timeout_ms"] = 1000
    return cfg


def probe(tmp_path, config, steps, runtime="vm", assume_layout=False, boot=None):
    """Run the steps on the VM (or CPython); the JSON line of each step. The boot check
    must pass, unless assume_layout (a device that fails from the start: SunSpec models
    bound where the usual layout has them) or boot (a list: gets the boot line)."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"devices": config, "maps_dir": MAPS, "steps": steps,
                               "assume_layout": assume_layout}))  # fmt: skip
    if runtime == "vm":
        if vm.binary() is None:
            pytest.skip("no MicroPython VM on this machine")
        argv, env, _name = vm.command(PROBE, str(job))
    else:
        argv = [sys.executable, str(PROBE), str(job)]
        env = {**os.environ, "PYTHONPATH": "%s:%s" % (ROOT, ROOT / "firmware")}
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and len(lines) == len(steps) + 1, result.stdout + result.stderr
    if boot is None:
        assert lines[0]["problems"] == [], lines[0]
    else:
        boot.append(lines[0])
    return lines[1:]


def assert_matches_sim(values, state):
    assert values["soc_pct"] == pytest.approx(state["soc_pct"], abs=0.02)
    assert values["capacity_kwh"] == pytest.approx(state["capacity_kwh"])
    assert values["remaining_kwh"] == pytest.approx(state["remaining_kwh"], abs=0.01)
    assert values["soh_pct"] == pytest.approx(state["soh_pct"])
    assert values["voltage_v"] == pytest.approx(state["voltage_v"], abs=0.1)
    assert values["temperature_c"] == pytest.approx(state["temperature_c"], abs=0.5)


# --- the register-map layer through a fake client, on both runtimes ----------------------

CHECKS = sorted(n for n in dir(plant_checks) if n.startswith("test_"))


@pytest.mark.parametrize("name", CHECKS)
def test_plant_checks_on_cpython(name):
    getattr(plant_checks, name)()


def test_plant_checks_on_micropython():
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine")
    extra = [ROOT / "tests" / "firmware" / "device", ROOT / "tests" / "portable"]
    argv, env, _name = vm.command(
        ROOT / "tests" / "portable" / "mprun.py", "plant_checks", heap="128k", extra_path=extra
    )
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "%d passed, 0 failed" % len(CHECKS) in result.stdout, result.stdout + result.stderr


# --- the firmware on the VM against the simulator ------------------------------------------


@pytest.mark.parametrize("runtime", ["vm", "cpython"])
def test_reads_all_three_devices_and_sets_power_over_tcp(sim, tmp_path, runtime):
    steps = [
        {"do": "poll"},
        {"do": "set_power", "watts": 3000},
        {"do": "sleep", "ms": 400},
        {"do": "poll"},
        {"do": "set_power", "watts": 99999},
        {"do": "set_power", "watts": -2000},
        {"do": "sleep", "ms": 300},
        {"do": "poll"},
        {"do": "set_power", "watts": 0},
    ]
    state = sim.call(lambda: dict(sim.sim.state))
    first, set1, _sleep, second, clamped, charge, _sleep2, third, idle = probe(
        tmp_path, tcp_config(sim), steps, runtime
    )
    assert first["ok"] == [True, True, True]
    assert_matches_sim(first, state)
    assert first["power_w"] == 0 and first["fault"] is None
    assert first["health"] == message.HEALTH_GOOD
    assert set1["commanded"] == 3000
    assert second["power_w"] == 3000 and second["grid_power_w"] == pytest.approx(3000)
    assert second["soc_pct"] < first["soc_pct"] - 0.1  # discharging at 60x real time
    assert second["export_kwh"] > 0 and second["current_a"] > 0
    assert clamped["commanded"] == sim.sim.max_power_w
    assert charge["commanded"] == -2000
    assert third["power_w"] == -2000 and third["import_kwh"] > 0
    assert idle["commanded"] == 0 and sim.call(sim.sim.setpoint_w) == 0


def test_reads_and_sets_power_over_rtu(tmp_path, pty_pair):
    device_end, firmware_end = pty_pair
    served = SimThread(capacity_kwh=10.0, soc_pct=50.0, speed=60.0)
    try:
        served.call(served.sim.start, None, "127.0.0.1", device_end, 115200)
        config = {
            role: {
                "map": served.sim.maps[role]["name"],
                "link": "rtu",
                "path": firmware_end,
                "unit": served.sim.units[role],
                "timeout_ms": TIMEOUT_MS,
            }
            for role in ROLES
        }
        first, commanded, _sleep, second = probe(
            tmp_path,
            config,
            [
                {"do": "poll"},
                {"do": "set_power", "watts": 2500},
                {"do": "sleep", "ms": 400},
                {"do": "poll"},
            ],
        )
        assert first["ok"] == [True, True, True]
        assert first["soc_pct"] == pytest.approx(50.0) and first["capacity_kwh"] == 10.0
        assert commanded["commanded"] == 2500
        assert second["power_w"] == 2500 and second["soc_pct"] < 50.0
    finally:
        served.close()


def test_a_silent_device_times_out_within_its_deadline(sim, tmp_path):
    sim.call(sim.sim.fail, "battery")
    read, poll = probe(
        tmp_path,
        tcp_config(sim),
        [{"do": "read", "role": "battery", "address": 40081, "count": 1}, {"do": "poll"}],
        assume_layout=True,
    )
    assert read["error"] == "ModbusTimeout"
    assert TIMEOUT_MS - 5 <= read["elapsed_ms"] < TIMEOUT_MS + 200  # ms clocks: +-1 tick
    assert poll["ok"] == [True, False, True]  # the others are still read
    assert poll["soc_pct"] is None and poll["remaining_kwh"] is None
    assert poll["grid_power_w"] == 0 and poll["power_w"] == 0


def test_exception_responses_carry_their_code(sim, tmp_path):
    sim.call(sim.sim.throw, "inverter", 2)
    sim.call(sim.sim.throw, 1, 4)
    meter, setpoint = probe(
        tmp_path,
        tcp_config(sim),
        [
            {"do": "read", "role": "meter", "function": 4, "address": 0, "count": 2},
            {"do": "set_power", "watts": 1000},  # reading the limits fails first
        ],
        assume_layout=True,
    )
    assert (meter["error"], meter["code"]) == ("ModbusExceptionResponse", 4)
    assert "device failure" in meter["message"]
    assert (setpoint["error"], setpoint["code"]) == ("ModbusExceptionResponse", 2)


def test_bms_alarm_is_seen_within_200_ms(sim, tmp_path):
    job = tmp_path / "job.json"
    steps = [{"do": "poll"}, {"do": "watch", "ms": 5000, "period_ms": 50}]
    job.write_text(json.dumps({"devices": tcp_config(sim), "maps_dir": MAPS, "steps": steps}))
    argv, env, _name = vm.command(PROBE, str(job))
    probe = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        started = json.loads(probe.stdout.readline())
        assert json.loads(probe.stdout.readline())["fault"] is None  # the first poll
        time.sleep(0.3)
        raised_ms = time.time_ns() // 1000000
        sim.call(sim.sim.set_alarm, 1 << 1)  # OVER_TEMP_ALARM
        watch = json.loads(probe.stdout.readline())
    finally:
        probe.wait(10)
    assert started["runtime"] in ("micropython", "cpython")
    cause, text = watch["fault"]
    assert cause == message.FAIL_BMS_ALARM and "OVER_TEMP_ALARM" in text
    assert watch["seen_wall_ms"] - raised_ms < 200


def test_lost_bms_link_becomes_a_link_failure(sim, tmp_path):
    sim.call(sim.sim.fail, "battery")
    steps = [{"do": "alarms"}, {"do": "watch", "ms": 3000, "period_ms": 50}]
    first, watch = probe(tmp_path, tcp_config(sim), steps, assume_layout=True)
    assert first["ok"] is False and first["fault"] is None  # not yet: the link has 1000 ms
    cause, text = watch["fault"]
    assert cause == message.FAIL_BMS_LINK and "ModbusTimeout" in text
    assert 1000 - TIMEOUT_MS <= watch["elapsed_ms"] < 2000


# --- the same modules on CPython, in this process -----------------------------------------


def test_cpython_client_reconnects_after_the_gateway_restarts():
    loop = asyncio.new_event_loop()
    sims = []

    def restart(soc_pct, port):
        if sims:
            sims[-1].close()  # closes the listener and our idle connection
        sims.append(SimThread(soc_pct=soc_pct))
        sims[-1].call(sims[-1].sim.start, port)
        return sims[-1].sim.tcp_port

    port = restart(80.0, 0)
    client = modbus.TcpClient("127.0.0.1", port, timeout_ms=TIMEOUT_MS)
    soc = lambda: loop.run_until_complete(client.read_holding(2, 40081, 1))[0]  # noqa: E731
    try:
        before = soc()
        restart(55.0, port)
        after = soc()  # the dead connection is noticed and reopened within this request
        sims[-1].close()
        with pytest.raises(modbus.ModbusError, match="link"):
            soc()  # nobody listens: an error now, a new connection on the next request
        restart(30.0, port)
        again = soc()
    finally:
        loop.run_until_complete(client.close())
        loop.close()
        sims[-1].close()
    assert (before, after, again) == (8000, 5500, 3000)  # SoC x 100 (SoC_SF = -2)


def test_cpython_plant_against_the_simulator(sim):
    async def scenario():
        plant = devices.open_plant(tcp_config(sim), MAPS)
        roles = {"meter": plant.meter, "battery": plant.battery, "inverter": plant.inverter}
        assert await sunspec.check(roles, devices.monotonic_ms()) == []
        ok = await plant.poll()
        values = {"soc_pct": plant.soc_pct, "capacity_kwh": plant.capacity_kwh}
        sim.call(sim.sim.set_alarm, 1 << 20)  # CONTACTOR_ERROR
        await plant.poll_battery_alarms()
        fault = plant.bms_fault()
        health = plant.health_code()
        await plant.close()
        return ok, values, fault, health

    ok, values, fault, health = asyncio.run(scenario())
    assert ok == [True, True, True]
    assert values["soc_pct"] == pytest.approx(80.0, abs=0.05) and values["capacity_kwh"] == 13.5
    assert fault == (message.FAIL_BMS_ALARM, "BMS alarm: CONTACTOR_ERROR, state FAULT")
    assert health == message.HEALTH_FAULT


def test_open_plant_rejects_bad_config():
    good = {
        role: {
            "map": devicesim.DEFAULT_MAPS[role],
            "link": "tcp",
            "host": "127.0.0.1",
            "port": 5020,
            "unit": unit,
        }
        for role, unit in zip(ROLES, (1, 2, 3))
    }
    plant = devices.open_plant(good, MAPS)
    assert plant.meter.client is plant.battery.client is plant.inverter.client  # one link
    for role, key, value, words in (
        ("battery", "map", "eastron_sdm120", "is a meter map"),
        ("meter", "link", "udp", "link must be tcp or rtu"),
        ("inverter", "unit", 0, "unit must be 1..247"),
        ("meter", "map", "nope", "nope.json"),
        ("battery", "host", None, "needs 'host'"),
    ):
        bad = json.loads(json.dumps(good))
        bad[role][key] = value
        with pytest.raises(ValueError, match=words):
            devices.open_plant(bad, MAPS)
    with pytest.raises(ValueError, match="meter: missing"):
        devices.open_plant({"battery": good["battery"]}, MAPS)
