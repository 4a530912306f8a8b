"""SunSpec discovery and binding (firmware/sunspec.py) with a fake Modbus client.

Plain test_* functions, run on CPython and on the MicroPython VM (at the unix board's
heap) by tests/firmware/test_sunspec.py, as plant_checks.py is.
"""

import json

import devices
import modbus
from checks import raises
from plant_checks import MAPS, FakeClient, run, standard_chain
from register_map import MapError, check_map, load_map
from sunspec import bind, find


def reader(client, unit=2):
    async def read(address, count):  # as check_device's: None for a refused address
        try:
            return await client.read_holding(unit, address, count)
        except modbus.ModbusExceptionResponse:
            return None

    return read


def serve_chain(chain, base):
    """Registers of a device with that chain: 'SunS', the headers, the end marker."""
    regs = {base: 0x5375, base + 1: 0x6E53}
    for model, start, length in chain:
        regs[start], regs[start + 1] = model, length
    end = chain[-1][1] + 2 + chain[-1][2]
    regs[end], regs[end + 1] = 0xFFFF, 0
    return regs


def test_sunspec_walk_finds_any_base_and_order_and_binds_by_model():
    register_map = load_map(MAPS + "/sunspec_battery_802.json")
    for base in (0, 40000, 50000):
        chain = standard_chain(register_map, base, order=[803, 1, 802])
        client = FakeClient(serve_chain(chain, base))
        device = devices.Device("battery", load_map(MAPS + "/sunspec_battery_802.json"), client, 2)
        got_base, got = run(find(reader(client)))
        assert (got_base, got) == (base, chain)
        bind(device, (got_base, got))
        start_802 = [c[1] for c in chain if c[0] == 802][0]
        assert device.specs["soc_pct"][1] == start_802 + 11  # SoC: offset 11 in model 802
        assert device.map["blocks"] == [[base, chain[-1][1] + 2 + chain[-1][2] - base]]
        assert device.plan and all(spec[1] >= 0 for spec in device.specs.values())


def test_sunspec_walk_is_bounded_on_a_broken_chain():
    def walk(regs):
        client = FakeClient(regs)
        error = raises(MapError, run, find(reader(client)))
        return str(error), len(client.reads)

    text, reads = walk({40000: 0x5375, 40001: 0x6E53})  # then zeros: (0, L 0) for ever
    assert "no end after 32 models" in text and reads == 2 + 32  # bases 0, 40000, headers
    text, _ = walk({40000: 0x5375, 40001: 0x6E53, 40002: 802, 40003: 65000})
    assert "length 65000 runs past register 65535" in text
    text, _ = walk({})
    assert text == "no SunSpec marker 'SunS' at 0, 40000 or 50000"
    dead = FakeClient({})
    dead.error = modbus.ModbusTimeout("unit 2: no reply within 300 ms")
    error = raises(modbus.ModbusTimeout, run, find(reader(dead)))
    assert "no reply" in str(error) and len(dead.reads) == 3  # each base once, then says so


def test_sunspec_bind_reports_a_wrong_model_or_length():
    register_map = load_map(MAPS + "/sunspec_battery_802.json")
    chain = [(1, 40002, 66), (801, 40070, 62), (803, 40134, 26 + 32 * 2)]  # two strings: fine
    device = devices.Device("battery", register_map, FakeClient({}), 2)
    text = str(raises(MapError, bind, device, (40000, chain)))
    assert text == "model 802 expected, device offers [1, 801, 803]" and device.plan is None
    chain = [(1, 40002, 66), (802, 40070, 60), (803, 40134, 27)]
    text = str(raises(MapError, bind, device, (40000, chain)))
    assert text == (
        "model 802 has length 60, the map expects 62, model 803 has length 27, the map expects 26"
    )
    assert run(device.read(0)) is False and device.client.reads == []  # never at a guess
    assert "SunSpec models not found" in str(device.last_error)


def test_sunspec_and_range_keys_are_checked_at_load():
    def bad(change):
        with open(MAPS + "/sunspec_battery_802.json") as f:
            register_map = json.load(f)
        change(register_map)
        return str(raises(MapError, check_map, register_map, "x.json"))

    def points(register_map):
        return register_map["points"]

    assert "address or model+offset" in bad(lambda m: points(m)["soc_pct"].update(address=1))
    assert "offset must be 2..63 in model 802" in bad(
        lambda m: points(m)["soc_pct"].update(offset=64)
    )
    assert "model must be one of" in bad(lambda m: points(m)["soc_pct"].update(model=804))
    assert "range must be [lo, hi]" in bad(lambda m: points(m)["soc_pct"].update(range=[9, 1]))
    assert "range must be [lo, hi]" in bad(lambda m: points(m)["soc_pct"].update(range="0-100"))
    assert "sunspec: " in bad(lambda m: m.update(sunspec=[[802, 62], [802, 62]]))
    assert "no blocks: the chain's" in bad(lambda m: m.update(blocks=[[40000, 10]]))
    with open(MAPS + "/eastron_sdm120.json") as f:
        meter = json.load(f)
    meter["points"]["power_w"]["model"] = 1
    assert "a SunSpec map's" in str(raises(MapError, check_map, meter, "m.json"))
