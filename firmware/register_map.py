"""Register maps (hardware/registers/*.json): loading and checking them, and read planning.

    register_map = load_map(path)       # checked, points compiled; MapError names what is wrong
    check_map(a_dict, where)            # the same for a map already in memory
    plan_reads(specs, names, blocks)    # [(function, start, count, [names])] (modbus.py)

A SunSpec map ("sunspec": the models it needs) places its points by model and offset:
until sunspec.py has found the models on the device and bound the points, a point's
address is -(model << 16 | offset), never a register. A point's "range" [lo, hi] is
checked on the first read at boot (sunspec.check; "range": {point: (lo, hi)} in the
checked map).

Code talks to a kind of device (a "nature", as in OpenEMS), never to a model:
every map of a kind names its points the same (REQUIRED below), and where a
register sits, its type, word order, scale, scale-factor register and sign
are data in the map (format: hardware/registers/README.md). A checked map holds
its points as spec tuples in "_specs" (fields _F.._NI below), its derived
points in "_derived" and its warning bits as one alarm "warning_mask";
devices.py reads and writes devices through them.

Only start-up needs this module: app.py drops it once the plant is open (its
code then goes back to the heap), so nothing used at run time lives here.

Every name a module holds stays interned for good on MicroPython, even after the
module is dropped: so the spec fields are const() (folded, no names), and devices.py
keeps its own copy of them. Short texts (< 10 characters) are interned too: the map
keys only this module reads are taken from one text, whose words are not (app.py: the
firmware sits at that count's limit).

A checked map refers to a point by the very string object that keys it in
"_specs" (a scale factor, a derived point's inputs, the alarm and setpoint
points), not by a second copy of the name parsed from the JSON: on the 64-bit VM
each copy of a name is a 64-byte object, kept for as long as the plant.
"""

import gc

import modbus
from modbus import plan_reads  # noqa: F401  (part of this module's interface)

from protocol.compat import const

# The points the code reads, by kind; every map of a kind has them.
REQUIRED = {
    "meter": "voltage_v current_a power_w import_kwh export_kwh",
    "battery": "soc_pct soh_pct capacity_kwh remaining_kwh voltage_v current_a temperature_c",
    "inverter": "power_w",
}
SIZES = modbus.SIZES

# The fields of a point spec tuple (devices.py has the same).
_F = const(0)  # Modbus function: 3 holding, 4 input
_A = const(1)  # address
_N = const(2)  # registers
_T = const(3)  # type: u16 i16 u32 i32 f32
_W = const(4)  # word order: big, little
_S = const(5)  # scale
_SF = const(6)  # the scale-factor point's name, or None
_NI = const(7)  # the type's "not implemented" marker, or None


class MapError(ValueError):
    """A register map that cannot be used; the message names the file and the point."""


def load_map(path):
    """Read and check a register map; MapError (a ValueError) names what is wrong."""
    import jsonfile  # its size and nesting bounded, as config.json's

    register_map = jsonfile.read(path, MapError)
    check_map(register_map, path)
    # Keep what the code uses: the points are compiled into _specs, and the notes are for
    # people. A SunSpec map parsed is ~16 KB of heap on the unix port; this halves it.
    # Only a battery's alarms are acted on (devices.Plant.bms_fault: the BMS stops the
    # battery), so a meter's or an inverter's alarm section goes. Points the code never
    # reads go too (each costs ~250 bytes of heap, read and kept): it reads the kind's
    # REQUIRED ones and those the alarm and setpoint sections name, with what they
    # are derived from and their scale factors.
    if register_map["kind"] != "battery":
        register_map.pop("alarm", None)
    specs, derived = register_map["_specs"], register_map["_derived"]
    used = REQUIRED[register_map["kind"]].split()
    for section in (register_map.get("alarm") or {}, register_map.get("setpoint") or {}):
        used += [section.get(k) for k in ("point", "state_point", "max_charge_w")]
        used += [section.get(k) for k in ("max_discharge_w", "of")]
        used += [pair[0] for pair in section.get("enable", ())]
    for name in used:  # grows as it goes: inputs and scale factors join the end
        if name in derived:
            used += [i for i in derived[name][0] if i not in used]
        elif name in specs and specs[name][_SF] and specs[name][_SF] not in used:
            used.append(specs[name][_SF])
    for table in (specs, derived, register_map["range"]):
        for name in [n for n in table if n not in used]:
            del table[name]
    for key in ("points", "defaults", "not_implemented", "notes", "source", "model", "constants"):
        register_map.pop(key, None)
    alarm = register_map.get("alarm")
    # Warnings only count (health): check_map's warning_mask is all the code reads; the
    # good state is for simulators, the code knows faults. (Texts in a tuple: not interned.)
    for key in ("warning_bits", "ok_state") if alarm else ():
        alarm.pop(key, None)
    gc.collect()
    return register_map


def _need(ok, where, text):
    if not ok:
        raise MapError("%s: %s" % (where, text))


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(data, names, where):
    """data is a JSON object of the fields names (a space-separated text) only."""
    _need(isinstance(data, dict), where, "must be a JSON object")
    names = names.split()
    for name in data:
        _need(name in names, where, "unknown field %.40r (a typo?)" % (name,))


def _check_int(value, start, stop):
    return isinstance(value, int) and not isinstance(value, bool) and start <= value <= stop


def check_map(register_map, where="map"):
    """Validate a map (dict) in place and compile its points into spec tuples."""
    _need(isinstance(register_map, dict), where, "a map is a JSON object")
    kind, points = register_map.get("kind"), register_map.get("points")
    _need(kind in ("meter", "battery", "inverter"), where, "kind must be meter, battery or "
          "inverter, not %r" % (kind,))  # fmt: skip
    _need(isinstance(points, dict) and points, where, "no points")
    _need(len(points) <= 200, where, "more than 200 points")
    # The map's own fields: known ones only, each of its type (the maps' README).
    _check(register_map, "name kind model source notes defaults not_implemented blocks "
           "max_registers points alarm setpoint constants sunspec", where)  # fmt: skip
    top = register_map.get("max_registers", modbus.MAX_READ)
    _need(_check_int(top, 1, modbus.MAX_READ), where, "max_registers must be 1..125")
    blocks = register_map.get("blocks", [])
    _need(isinstance(blocks, list), where, "blocks must be a list of [start, count]")
    for block in blocks:
        ok = isinstance(block, list) and len(block) == 2 and _check_int(block[0], 0, 0xFFFF)
        ok = ok and _check_int(block[1], 1, 0x10000 - block[0])
        _need(ok, where, "blocks: %.40r is not [start, count] within 0..65535" % (block,))
    defaults = register_map.get("defaults", {})
    _check(defaults, "function type word_order scale", where + ": its defaults")
    missing = register_map.get("not_implemented", {})
    _check(missing, " ".join(SIZES), where + ": its not_implemented")
    for typ, raw in missing.items():
        _need(_number(raw), where, "not_implemented: %s must be a number" % typ)
    for key in ("name", "model", "source"):
        _need(isinstance(register_map.get(key, ""), (str, int)), where, "%s must be a text" % key)
    # SunSpec's keys, as one text: its words are not interned names (app.py)
    model_key, offset_key, mirror, derive = "model offset mirror derive".split()
    models = register_map.get("sunspec")  # [[id, length(, repeat)]]: a SunSpec map
    if models is not None:
        ok = isinstance(models, list) and 0 < len(models) <= 16 and "blocks" not in register_map
        _need(ok, where, "sunspec: 1..16 models [id, length(, repeat)]; no blocks: the chain's")
        for entry in models:  # repeat: a repeating group's size (32 for a model 803 string)
            ok = isinstance(entry, list) and len(entry) in (2, 3)
            ok = ok and all(_check_int(v, 0, 0xFFFE) for v in entry) and entry[0] > 0
            ok = ok and [m[0] for m in models].count(entry[0]) == 1
            _need(ok, where, "sunspec: %.40r is not [id, length(, repeat)]" % (entry,))
        models = {m[0]: m[1] for m in models}
    specs, derived, ranges = {}, {}, {}
    same = {name: name for name in points}  # -> the key object itself (see the top)
    for name, point in points.items():
        here = "%s: point %r" % (where, name)
        _check(point, "address model offset function type word_order scale sf unit derive "
               "range", here)  # fmt: skip
        _need(isinstance(point.get("unit", ""), str), here, "unit must be a text")
        if "range" in point:  # a sane range [lo, hi], checked at boot on the first read
            lo_hi = point["range"]
            ok = isinstance(lo_hi, list) and len(lo_hi) == 2 and all(_number(v) for v in lo_hi)
            _need(ok and lo_hi[0] <= lo_hi[1], here, "range must be [lo, hi], lo <= hi")
            ranges[same[name]] = (lo_hi[0], lo_hi[1])
        if derive in point:  # a product of other points (x scale), e.g. SoC x capacity
            inputs, scale = point[derive], point.get("scale", 1)
            ok = isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs)
            ok = ok and _number(scale) and 1e-9 <= abs(scale) <= 1e9
            _need(ok, here, "bad derive: a list of point names, and a scale")
            derived[name] = ([same.get(i, i) for i in inputs], scale)
            continue
        p = dict(defaults)
        p.update(point)
        size, address, scale = SIZES.get(p.get("type")), p.get("address"), p.get("scale", 1)
        _need(size, here, "type must be one of %s" % "/".join(SIZES))
        if models is None:
            ok = model_key not in p and offset_key not in p
            _need(ok, here, "model/offset: a SunSpec map's")
            ok = _check_int(address, 0, 0x10000 - size)
            _need(ok, here, "address must be 0..%d" % (0x10000 - size))
        else:  # the offset from the model's ID register (ID 0, L 1, the first point 2)
            model, offset = p.get(model_key), p.get(offset_key)
            _need("address" not in p, here, "address or model+offset")
            _need(model in models, here, "model must be one of the map's sunspec models")
            ok = _check_int(offset, 2, models[model] + 2 - size)
            _need(ok, here, "offset must be 2..%d in model %d" % (models[model] + 2 - size, model))
            address = -(model << 16 | offset)  # bind() gives it its register
        _need(p.get("function") in (3, 4), here, "function must be 3 (holding) or 4 (input)")
        _need(p.get("word_order", "big") in ("big", "little"), here, "word_order: big/little")
        ok = _number(scale) and 1e-9 <= abs(scale) <= 1e9  # not 0, NaN or inf (1e999)
        _need(ok, here, "scale must be a non-zero number within +-1e9")
        sf = p.get("sf")
        _need(sf is None or isinstance(sf, str), here, "sf must name a point")
        specs[name] = (
            p["function"], address, size, p["type"], p.get("word_order", "big"), scale,
            same.get(sf, sf), missing.get(p["type"]),
        )  # fmt: skip
    for name, spec in specs.items():
        sf = spec[_SF]
        ok = sf is None or (sf in specs and specs[sf][_T] == "i16" and not specs[sf][_SF])
        _need(ok, "%s: point %r" % (where, name), "sf %r must name an i16 point" % (sf,))
    for name, (inputs, _scale) in derived.items():
        for other in inputs:
            _need(other in specs, "%s: point %r" % (where, name), "unknown point %r" % other)
    for name in REQUIRED[kind].split():
        _need(name in specs or name in derived, where, "a %s map needs point %r" % (kind, name))
    alarm = register_map.get("alarm")
    _need(kind != "battery" or isinstance(alarm, dict), where, "a battery map needs 'alarm'")
    if alarm is not None:
        here = where + ": its alarm section"
        _check(alarm, "point alarm_bits warning_bits state_point fault_states ok_state", here)
        for key in ("point", "state_point"):
            _need(isinstance(alarm.get(key, ""), str), here, "%s must name a point" % key)
        _need(alarm.get("point") in specs, here, "'point' must name a point")
        bits = 16 * specs[alarm["point"]][_N]
        for section in ("alarm_bits", "warning_bits", "fault_states"):
            _need(isinstance(alarm.get(section, {}), dict), here, "%s: an object" % section)
        for section in ("alarm_bits", "warning_bits"):
            for name, bit in alarm.get(section, {}).items():
                ok = _check_int(bit, 0, bits - 1) and name and " " not in name
                _need(ok, where, "alarm: %s %r: a name without spaces, bit 0..%d"
                      % (section, name, bits - 1))  # fmt: skip
        for name, value in alarm.get("fault_states", {}).items():
            ok = _check_int(value, -0x80000000, 0xFFFFFFFF)
            _need(ok, here, "fault state %.40r: a number" % name)
        ok = "fault_states" not in alarm or alarm.get("state_point") in specs
        _need(ok, where, "alarm: fault_states need a state_point")
        for key in ("point", "state_point"):
            if isinstance(alarm.get(key), str):
                alarm[key] = same.get(alarm[key], alarm[key])
        # warnings only count (health), they need no names: one mask
        alarm["warning_mask"] = sum(1 << bit for bit in alarm.get("warning_bits", {}).values())
        # The alarm bits as (mask, their bits, their names in one text, in that order): a
        # dict of 16 names (SunSpec 802's) kept 0.8 KB more heap for as long as the plant
        # runs, and the names are only read when a bit is set (devices.Device.alarms). A
        # plain loop: each generator is one more function object where .mpy code is in
        # the heap (tests/firmware/test_device_build.py runs it in 100 KB).
        named, mask, order, names = alarm.get("alarm_bits", {}), 0, (), ""
        for bit, name in sorted(zip(named.values(), named.keys())):
            mask, order, names = mask | 1 << bit, order + (bit,), names + " " + name
        alarm["alarm_bits"] = (mask, order, names[1:])
    setpoint = register_map.get("setpoint")
    _need(kind != "inverter" or isinstance(setpoint, dict), where, "an inverter needs 'setpoint'")
    if setpoint is not None:
        here = where + ": its setpoint section"
        _check(setpoint, "point mirror unit of sign enable max_charge_w max_discharge_w", here)
        for key in ("point", mirror, "unit", "of", "max_charge_w", "max_discharge_w"):
            _need(isinstance(setpoint.get(key, ""), str), here, "%s must be a text" % key)
        _need(isinstance(setpoint.get("enable", []), list), here, "enable must be a list")
        writable = [n for n, s in specs.items() if s[_F] == modbus.READ_HOLDING]
        _need(setpoint.get("point") in writable, here, "'point' must be a holding register")
        ok = mirror not in setpoint or setpoint[mirror] in writable
        _need(ok, here, "'mirror' must be a holding register")
        _need(setpoint.get("sign", 1) in (1, -1), here, "sign is 1 or -1")
        unit = setpoint.get("unit", "W")
        _need(unit == "W" or (unit == "%" and setpoint.get("of") in specs), here, "unit W or %+of")
        for pair in setpoint.get("enable", []):
            ok = isinstance(pair, list) and len(pair) == 2 and pair[0] in writable
            ok = ok and _check_int(pair[1], -0x8000, 0xFFFF)
            _need(ok, here, "enable is a list of [holding point, value]")
            pair[0] = same.get(pair[0], pair[0])
        for key in ("max_charge_w", "max_discharge_w"):  # a setpoint is always clamped
            _need(setpoint.get(key) in specs, here, "%s must name the limit's point" % key)
        if mirror in setpoint:  # written with -value: an enable pair with None (devices.py)
            pair = [same[setpoint.pop(mirror)], None]
            setpoint["enable"] = setpoint.get("enable", []) + [pair]
        for key in ("point", "max_charge_w", "max_discharge_w", "of"):
            if isinstance(setpoint.get(key), str):
                setpoint[key] = same.get(setpoint[key], setpoint[key])
    register_map["_specs"], register_map["_derived"] = specs, derived
    register_map["range"] = ranges
    return register_map
