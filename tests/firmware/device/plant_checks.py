"""The register-map layer (firmware/register_map.py, devices.py) with a fake Modbus client.

Plain test_* functions with asserts, like the portable tests (tests/protocol/,
tests/firmware/), run on CPython and on
the MicroPython VM by tests/firmware/test_modbus_devices.py (through tests/portable/mprun.py, at
the unix board's heap: devices.py with its maps does not fit the 100 KB the
portable tests get when compiled from source on the VM).
"""

import asyncio
import json

import devices
import modbus
import sunspec
from checks import raises
from register_map import MapError, check_map, load_map, plan_reads

from protocol import message

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
MAPS = _HERE + "/../../../hardware/registers"


class FakeClient:
    """Registers from a dict; records writes; can fail or throw like a device."""

    def __init__(self, regs):
        self.regs = regs
        self.reads = []
        self.writes = []
        self.error = None

    async def read_holding(self, unit, address, count):
        return self._read(3, address, count)

    async def read_input(self, unit, address, count):
        return self._read(4, address, count)

    def _read(self, function, address, count):
        self.reads.append((function, address, count))
        if self.error is not None:
            raise self.error
        return [self.regs.get(a, 0) for a in range(address, address + count)]

    async def write_register(self, unit, address, value):
        await self.write_registers(unit, address, [value])

    async def write_registers(self, unit, address, values):
        if self.error is not None:
            raise self.error
        self.writes.append((address, list(values)))
        for i, value in enumerate(values):
            self.regs[address + i] = value

    async def close(self):
        pass


def battery_map():
    return {
        "name": "test_battery",
        "kind": "battery",
        "defaults": {"function": 3, "type": "u16"},
        "not_implemented": {"u16": 65535, "i16": -32768},
        "blocks": [[100, 20]],
        "points": {
            "capacity_kwh": {"address": 100, "scale": 0.001, "sf": "cap_sf"},
            "soc_pct": {"address": 101, "sf": "pct_sf"},
            "soh_pct": {"address": 102, "sf": "pct_sf"},
            "voltage_v": {"address": 103, "scale": 0.1},
            "current_a": {"address": 104, "type": "i16", "scale": 0.1},
            "temperature_c": {"address": 105, "type": "i16", "sf": "pct_sf"},
            "events": {"address": 106, "type": "u32"},
            "state": {"address": 108},
            "cap_sf": {"address": 110, "type": "i16"},
            "pct_sf": {"address": 111, "type": "i16"},
            "remaining_kwh": {"derive": ["soc_pct", "capacity_kwh"], "scale": 0.01},
        },
        "alarm": {
            "point": "events",
            "alarm_bits": {"OVER_TEMP_ALARM": 1, "HIGH_ALARM": 20},
            "warning_bits": {"OVER_TEMP_WARNING": 2},
            "state_point": "state",
            "fault_states": {"FAULT": 99},
        },
    }


def battery_regs():
    return {
        100: 1350,
        101: 8050,
        102: 9500,
        103: 512,
        104: 0xFFFF - 99,
        105: 2510,
        106: 0,
        107: 0,
        108: 3,
        110: 1,
        111: 0xFFFE,
    }


def run(coro):
    return asyncio.run(coro)


def test_map_decoding_scale_factors_signs_and_derived_points():
    client = FakeClient(battery_regs())
    battery = devices.Device("battery", check_map(battery_map(), "test"), client, 2)
    assert run(battery.read(1000)) is True
    assert client.reads == [(3, 100, 12)]  # one request: the points share a readable block
    assert battery.value("capacity_kwh", 1000) == 13.5  # 1350 x 0.001 x 10^1
    assert abs(battery.value("soc_pct", 1000) - 80.5) < 1e-9  # 8050 x 10^-2
    assert abs(battery.value("current_a", 1000) + 10.0) < 1e-9  # i16 -100 x 0.1
    assert abs(battery.value("remaining_kwh", 1000) - 10.8675) < 1e-9
    assert battery.value("soc_pct", 7000, max_age_ms=5000) is None  # stale is unknown
    client.regs[102] = 65535  # "not implemented"
    run(battery.read(2000))
    assert battery.value("soh_pct", 2000) is None
    assert battery.point("soh_pct")[2] == "not available"


def test_a_failed_read_is_never_the_last_good_value():
    client = FakeClient(battery_regs())
    battery = devices.Device("battery", check_map(battery_map(), "test"), client, 2)
    run(battery.read(1000))
    client.error = modbus.ModbusTimeout("unit 2: no reply within 500 ms")
    assert run(battery.read(1100)) is False
    assert battery.value("soc_pct", 1100) is None
    assert battery.value("remaining_kwh", 1100) is None
    value, at_ms, error = battery.point("soc_pct")
    assert value is None and at_ms == 1100 and "ModbusTimeout" in error
    assert battery.last_ok_ms == 1000


def test_read_planning_groups_contiguous_and_block_registers():
    specs = check_map(battery_map(), "test")["_specs"]
    assert len(plan_reads(specs, specs, [[100, 20]])) == 1
    apart = plan_reads(specs, specs)  # no blocks: only contiguous registers merge
    assert [(p[1], p[2]) for p in apart] == [(100, 9), (110, 2)]
    small = plan_reads(specs, specs, [[100, 20]], max_registers=8)
    assert [(p[1], p[2]) for p in small] == [(100, 8), (108, 4)]


def test_map_errors_name_the_file_and_the_point():
    bad = battery_map()
    bad["points"]["soc_pct"]["type"] = "u8"
    assert "'soc_pct'" in str(raises(MapError, check_map, bad, "x.json"))
    bad = battery_map()
    bad["points"]["soc_pct"]["sf"] = "nope"
    assert "x.json: point 'soc_pct'" in str(raises(ValueError, check_map, bad, "x.json"))
    bad = battery_map()
    del bad["points"]["soh_pct"]
    assert "soh_pct" in str(raises(MapError, check_map, bad, "x.json"))
    bad = battery_map()
    del bad["alarm"]
    raises(MapError, check_map, bad, "x.json")
    bad = battery_map()
    bad["alarm"]["alarm_bits"]["TOO HOT"] = 3  # the names are kept as one text: no spaces
    assert "'TOO HOT'" in str(raises(MapError, check_map, bad, "x.json"))
    assert "nowhere" in str(raises(MapError, load_map, MAPS + "/nowhere.json"))


def test_shipped_maps_load():
    for name, kind in (
        ("eastron_sdm120", "meter"),
        ("sunspec_battery_802", "battery"),
        ("sunspec_der_704", "inverter"),
    ):
        register_map = load_map(MAPS + "/" + name + ".json")
        assert register_map["kind"] == kind and register_map["name"] == name
        device = bound(devices.Device(kind, register_map, FakeClient({}), 1))
        assert len(device.plan) <= 2  # every map reads in one or two requests


def standard_chain(register_map, base=40000, order=None):
    """The (model, start, length) chain of a device laying out the map's models from base,
    after the common model (1, L 66), in the order of its "sunspec" list."""
    models = [[1, 66]] + register_map["sunspec"]
    if order:
        models = [m for o in order for m in models if m[0] == o]
    chain, address = [], base + 2
    for entry in models:
        chain.append((entry[0], address, entry[1]))
        address += 2 + entry[1]
    return chain


def bound(device, base=40000):
    """A SunSpec map's device bound to the usual layout (models from 40000 in map order)."""
    if device.plan is None:
        sunspec.bind(device, (base, standard_chain(device.map, base)))
    return device


def make_plant(battery_client, inverter_map=None):
    meter = devices.Device("meter", load_map(MAPS + "/eastron_sdm120.json"), FakeClient({}), 1)
    battery = devices.Device("battery", check_map(battery_map(), "b"), battery_client, 2)
    inverter_map = inverter_map or load_map(MAPS + "/sunspec_der_704.json")
    regs = {40186: 0, 40259: 5000, 40260: 4000, 40270: 0, 40332: 0xFFFE}
    inverter = bound(devices.Device("inverter", inverter_map, FakeClient(regs), 3))
    return devices.Plant(meter, battery, inverter, link_timeout_ms=1000)


def test_bms_fault_alarm_bits_state_and_lost_link():
    client = FakeClient(battery_regs())
    plant = make_plant(client)
    assert plant.bms_fault(0) is None  # never polled: nothing failed yet
    run(plant.poll(1000))
    assert plant.bms_fault(1000) is None
    assert plant.health_code(1000) == message.HEALTH_GOOD
    client.regs[107] = 1 << 1  # low word of the big-endian u32: OVER_TEMP_ALARM
    run(plant.poll_battery_alarms(1050))
    assert plant.bms_fault(1050) == (message.FAIL_BMS_ALARM, "BMS alarm: OVER_TEMP_ALARM")
    assert plant.health_code(1050) == message.HEALTH_FAULT
    client.regs[106], client.regs[107] = 1 << 4, 0  # bit 20
    run(plant.poll_battery_alarms(1100))
    assert plant.bms_fault(1100)[1] == "BMS alarm: HIGH_ALARM"
    client.regs[107] = 1 << 1  # and bit 1: each bit keeps its own name
    run(plant.poll_battery_alarms(1120))
    assert plant.bms_fault(1120)[1] == "BMS alarm: HIGH_ALARM, OVER_TEMP_ALARM"
    client.regs[106], client.regs[107], client.regs[108] = 0, 0, 99
    run(plant.poll_battery_alarms(1150))
    assert plant.bms_fault(1150)[1] == "BMS alarm: state FAULT"
    client.regs[108], client.error = 3, modbus.ModbusTimeout("no reply")
    run(plant.poll_battery_alarms(1200))
    assert plant.bms_fault(1200) is None  # not yet: the link has 1000 ms
    run(plant.poll_battery_alarms(2149))
    assert plant.bms_fault(2149) is None
    cause, text = plant.bms_fault(2150)
    assert cause == message.FAIL_BMS_LINK and "no reply" in text


def test_health_thresholds():
    client = FakeClient(battery_regs())
    plant = make_plant(client)
    for soh, code in (
        (9500, message.HEALTH_GOOD),
        (8000, message.HEALTH_GOOD),
        (7999, message.HEALTH_DEGRADED),
        (6000, message.HEALTH_DEGRADED),
        (5999, message.HEALTH_POOR),
        (65535, message.HEALTH_DEGRADED),
    ):
        client.regs[102] = soh
        run(plant.poll(1000))
        assert plant.health_code(1000) == code, soh
    client.regs[102], client.regs[107] = 9500, 1 << 2  # a warning only degrades
    run(plant.poll(1000))
    assert plant.health_code(1000) == message.HEALTH_DEGRADED and plant.bms_fault(1000) is None


def test_set_power_clamps_scales_and_writes_one_request():
    plant = make_plant(FakeClient(battery_regs()))
    inverter = plant.inverter.client
    assert run(plant.set_power(3000, 1000)) == 3000
    assert inverter.writes[-1] == (40299, [1, 1, 0x0004, 0x93E0])  # WSetEna, WSetMod, WSet x100
    assert run(plant.set_power(99999, 1000)) == 4000  # max discharge
    assert run(plant.set_power(-99999, 1000)) == -5000  # max charge
    assert inverter.writes[-1] == (40299, [1, 1] + modbus.encode(-500000, "i32"))
    inverter.error = modbus.ModbusExceptionResponse(4, 16)
    raises_async(modbus.ModbusExceptionResponse, plant.set_power(0, 1000))


def test_set_power_as_percent_of_a_max_register():
    with open(MAPS + "/sunspec_der_704.json") as f:
        inverter_map = json.load(f)
    inverter_map["points"]["pct"] = {"model": 704, "offset": 13, "type": "i16", "scale": 0.1}
    setpoint = inverter_map["setpoint"]
    setpoint.update({"point": "pct", "unit": "%", "of": "max_power_w", "sign": -1, "enable": []})
    plant = make_plant(FakeClient(battery_regs()), check_map(inverter_map, "pct"))
    plant.inverter.client.regs[40251] = 8000  # WMax
    assert run(plant.set_power(2000, 1000)) == 2000
    assert plant.inverter.client.writes == [(40290, [modbus.encode(-250, "i16")[0]])]


def test_load_map_keeps_only_what_the_code_uses():
    register_map = load_map(MAPS + "/sunspec_battery_802.json")
    assert "points" not in register_map and "notes" not in register_map
    assert register_map["_specs"]["soc_pct"][:3] == (3, -(802 << 16 | 11), 1)  # until bound
    mask, order, names = register_map["alarm"]["alarm_bits"]  # in one text: no dict of names
    assert dict(zip(names.split(), order))["OVER_TEMP_ALARM"] == 1 and mask >> 1 & 1
    assert len(order) == 16 and mask == sum(1 << bit for bit in order)


def raises_async(exc_type, coro):
    try:
        run(coro)
    except exc_type as exc:
        return exc
    raise AssertionError("did not raise %s" % exc_type.__name__)
