"""Every shipped register map (hardware/registers/*.json), read by the firmware.

Per site profile (simulator/registers.py PROFILES: a meter, a battery and an
inverter map), the simulator serves the three maps over Modbus TCP and the
firmware on the MicroPython VM (tests/firmware/device/modbus_probe.py) reads
them and commands the inverter: the values, their scale and sign must be the
simulator's, and the simulator must act on the setpoint as written. The SunSpec
profile has its own, longer tests in test_modbus_devices.py; each other profile
costs one VM run here (~2 s).
"""

import asyncio
import json
import struct
import subprocess
import time

import pytest

from protocol import message
from simulator import vm
from simulator.registers import MAPS_DIR, PROFILES

CPYTHON_ONLY = "pymodbus devices for the firmware on the VM"

# firmware/ and this folder are on the path (tests/conftest.py, pytest's rootdir)
import devices  # noqa: E402
import register_map  # noqa: E402
from test_firmware_integration import HEAP_TEST_PROFILE  # noqa: E402
from test_modbus_devices import MAPS, SimThread, assert_matches_sim, probe, tcp_config  # noqa: E402

SHIPPED = sorted(path.stem for path in MAPS_DIR.glob("*.json"))
VENDOR_PROFILES = sorted(name for name in PROFILES if name != "sunspec")


@pytest.fixture
def site(request):
    served = SimThread(capacity_kwh=13.5, soc_pct=80.0, speed=60.0, maps=PROFILES[request.param])
    served.call(served.sim.start, 0)
    deadline = time.monotonic() + 5  # the state settles at the first step (as in sim())
    while not served.call(lambda: served.sim.state["elapsed_s"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    yield served
    served.close()


def test_every_shipped_map_is_served_by_a_profile():
    """So each map has a simulator profile and, through it, a test below."""
    served = {name for profile in PROFILES.values() for name in profile.values()}
    assert sorted(set(SHIPPED) - served) == []


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_map_loads_and_says_where_it_comes_from(name):
    raw = json.loads((MAPS_DIR / (name + ".json")).read_text())
    loaded = register_map.load_map(str(MAPS_DIR / (name + ".json")))  # checked, or MapError
    assert raw["name"] == name and len(raw["source"]) > 40 and raw["notes"]
    for point, spec in raw["points"].items():
        lo, hi = spec.get("range", (0, 1))
        assert isinstance(lo, (int, float)) and lo < hi, (name, point)
    assert loaded["kind"] in ("meter", "battery", "inverter")


@pytest.mark.parametrize("site", VENDOR_PROFILES, indirect=True)
def test_the_firmware_reads_and_commands_each_profile(site, tmp_path):
    meter = site.sim.points["meter"]
    phase = meter.get("l1_power_w")
    steps = [
        {"do": "poll"},
        {"do": "set_power", "watts": 3000},
        {"do": "sleep", "ms": 400},
        {"do": "poll"},
        {"do": "set_power", "watts": -2000},
        {"do": "sleep", "ms": 300},
        {"do": "poll"},
        {"do": "set_power", "watts": 0},
    ]
    if phase:  # a three-phase meter: one phase's power, raw, as the meter holds it
        steps.insert(4, {"do": "read", "role": "meter", "function": 4,
                         "address": phase["address"], "count": 2})  # fmt: skip
    state = site.call(lambda: dict(site.sim.state))
    out = probe(tmp_path, tcp_config(site), steps)
    first, discharging, charging = [s for s in out if s["do"] == "poll"]
    commanded = [s["commanded"] for s in out if s["do"] == "set_power"]
    assert first["ok"] == [True, True, True] and first["fault"] is None
    assert_matches_sim(first, state)
    assert first["health"] == message.HEALTH_GOOD and first["power_w"] == 0
    assert commanded == [3000, -2000, 0]
    # + = discharging on the inverter and the battery current, + = export on the meter
    assert discharging["power_w"] == pytest.approx(3000)
    assert discharging["current_a"] > 0  # SoC can stay put: SMA's is in whole percent
    assert discharging["soc_pct"] <= first["soc_pct"] and discharging["remaining_kwh"] > 0
    assert discharging["grid_power_w"] == pytest.approx(3000, abs=1)
    assert discharging["export_kwh"] > 0
    assert charging["power_w"] == pytest.approx(-2000) and charging["current_a"] < 0
    assert charging["import_kwh"] > 0
    if phase:
        regs = [s for s in out if s["do"] == "read"][0]["regs"]
        raw = struct.unpack(">f", struct.pack(">2H", *regs))[0]
        assert raw == pytest.approx(-1000, abs=1)  # Eastron: import +, so export reads -
    # Each command is one write-multiple (value and enable registers together); SunSpec
    # 124 takes three (the charge/discharge mode, the mirrored rates, the enable). The
    # simulated inverter reads it back as the firmware meant it.
    writes = [w for w in site.call(lambda: list(site.sim.writes)) if w[0] == "inverter"]
    per_command = 3 if site.sim.maps["inverter"]["name"] == "sunspec_inverter_103_124" else 1
    assert len(writes) == 3 * per_command, writes
    assert site.call(lambda: site.sim.state["soc_pct"]) < state["soc_pct"]  # it discharged
    assert site.call(site.sim.setpoint_w) == 0


@pytest.mark.parametrize("site", ["sma_storage"], indirect=True)
def test_a_fault_state_without_alarm_bits_is_a_bms_alarm(site):
    """SMA has no alarm bit field: its Condition enum is the alarm (FAULT 35)."""

    async def scenario():
        plant = devices.open_plant(tcp_config(site), MAPS)
        await plant.poll_battery_alarms()
        before = plant.bms_fault()
        site.call(site.sim.set_alarm, 1)
        await plant.poll_battery_alarms()
        after = plant.bms_fault()
        await plant.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before is None
    assert after == (message.FAIL_BMS_ALARM, "BMS alarm: state FAULT")


def test_no_site_costs_more_heap_than_the_one_the_heap_test_loads(tmp_path):
    """The ESP32 heap budget (test_firmware_integration.py) is measured with the maps of
    HEAP_TEST_PROFILE; a site loads only the three maps its config names, so no
    profile's three loaded maps may cost more than those."""
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine")
    script = tmp_path / "map_heap.py"
    script.write_text(
        "import gc, json, sys\nimport jsonfile, register_map  # their code is not a map's\n"
        "for name in sys.argv[1:]:\n"
        "    gc.collect(); before = gc.mem_alloc()\n"
        "    kept = register_map.load_map('%s/' + name + '.json')\n"
        "    gc.collect(); print(json.dumps([name, gc.mem_alloc() - before]))\n"
        "    kept = None\n" % MAPS
    )
    argv, env, _name = vm.command(script, *SHIPPED, heap="100k")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    costs = dict(json.loads(line) for line in result.stdout.splitlines() if line.startswith("["))
    assert sorted(costs) == SHIPPED, result.stdout + result.stderr
    totals = {name: sum(costs[m] for m in profile.values()) for name, profile in PROFILES.items()}
    print("heap of each loaded map (bytes, 64-bit VM):", costs, "per profile:", totals)
    heaviest = max(totals, key=totals.get)
    assert totals[heaviest] <= totals[HEAP_TEST_PROFILE], (
        "%s's maps cost more heap than %s's, with which the ESP32 heap test runs: make it"
        " HEAP_TEST_PROFILE there %s" % (heaviest, HEAP_TEST_PROFILE, totals)
    )
