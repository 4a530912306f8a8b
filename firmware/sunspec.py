"""Start-up check of each device against its register map: SunSpec discovery, and sane ranges.

    problems = await sunspec.check_plant(plant, now_ms)   # [] or one line per problem
    base, chain = await sunspec.walk(read)                # read(address, count) -> registers

A SunSpec device has 'SunS' at base 0, 40000 or 50000, then a chain of models, each
a header (model id, length L) and L registers, ended by id 0xFFFF. Devices order and
lay out their models as they like, so a SunSpec map (register_map.py) places its
points by model and offset, and this binds them to the addresses the device's chain
gives. The walk is bounded (_MAX_MODELS headers, and never past register 65535): a
garbled or hostile device can neither loop it nor make it allocate without bound.

A map that does not match the device (a model missing or of another length, a value
outside a point's "range" on the first read) is never read silently: each problem is
one line, and app.py keeps the battery in safe idle (no offers, no setpoints) until the
device answers as its map says. Only start-up needs this module: app.py drops it then.
gridbid device scan (CPython) walks a chain with the same walk().
"""

import modbus

from protocol.compat import const

_MAX_MODELS = const(32)  # a real device has < 15; the bound of a walk
_END = const(0xFFFF)
BASES = (0, 40000, 50000)
MARKER = [0x5375, 0x6E53]  # 'SunS'


class NotSunSpec(ValueError):
    """No 'SunS' marker or a broken model chain; the message says what was found."""


async def walk(read):
    """(base, [(model id, start, length)]) of the device that read(address, count) reads;
    NotSunSpec when there is no marker or the chain is broken, ModbusError when no base
    answers at all (a dead device)."""
    base, error = None, None
    for at in BASES:
        try:
            if list(await read(at, 2)) == MARKER:
                base = at
                break
            error = False  # it answered: a device, not SunSpec there
        except modbus.ModbusExceptionResponse:  # an address it does not have: the next
            error = False
        except modbus.ModbusError as exc:  # no reply, or no link
            error = error if error is False else exc
    if base is None:
        if error:
            raise error  # not one base answered: the device is not there
        raise NotSunSpec("no SunSpec marker 'SunS' at 0, 40000 or 50000")
    chain, address = [], base + 2
    while True:
        if len(chain) == _MAX_MODELS:
            raise NotSunSpec("chain from %d: no end after %d models" % (base, _MAX_MODELS))
        if address > 0x10000 - 2:
            raise NotSunSpec("chain from %d runs past register 65535 without an end" % base)
        try:
            model, length = await read(address, 2)
        except modbus.ModbusExceptionResponse as exc:
            raise NotSunSpec("chain from %d: no header at %d (%s)" % (base, address, exc)) from None
        if model == _END:
            return base, chain
        if address + 2 + length > 0x10000:
            raise NotSunSpec("model %d at %d: length %d runs past register 65535"
                             % (model, address, length))  # fmt: skip
        chain.append((model, address, length))
        address += 2 + length


def bind(device, base, chain):
    """Give a SunSpec map's points their addresses on this device's chain; ValueError
    (one line) when a model the map needs is missing or not of its length."""
    found = {}
    for model, start, length in chain:
        found.setdefault(model, (start, length))  # the first, as readers take it
    register_map, problems = device.map, []
    for entry in register_map["sunspec"]:
        model, length = entry[0], entry[1]
        if model not in found:
            ids = ", ".join(str(m[0]) for m in chain) or "none"
            problems.append("model %d expected, device offers %s" % (model, ids))
            continue
        got = found[model][1]
        repeat = entry[2] if len(entry) > 2 else 0
        if got != length and not (repeat and got > length and (got - length) % repeat == 0):
            problems.append("model %d has length %d, the map expects %d" % (model, got, length))
    if problems:
        raise ValueError("; ".join(problems))
    specs = device.specs
    for name, model in register_map.pop("_unbound").items():
        spec = specs[name]
        specs[name] = spec[:1] + (found[model][0] + spec[1],) + spec[2:]
    end = chain[-1][1] + 2 + chain[-1][2] if chain else base + 2
    register_map["blocks"] = [[base, end - base]]  # a chain is contiguous registers
    device.planned()


def _where(role, device):
    client = device.client
    link = getattr(client, "host", None)
    link = "%s:%s" % (link, client.port) if link else "serial"
    return "%s (map %s, unit %d on %s)" % (role, device.name, device.unit, link)


async def check_device(device, now_ms):
    """[] when the device matches its map, else one line per problem."""
    problems = []
    if device.map.get("_unbound") is not None:

        async def read(address, count):
            return await device.client.read_holding(device.unit, address, count)

        try:
            base, chain = await walk(read)
            bind(device, base, chain)
        except (ValueError, modbus.ModbusError) as exc:  # NotSunSpec, a mismatch, no answer
            return ["%s: %s" % (type(exc).__name__, exc)]
    if not await device.read(now_ms):
        return ["no answer: %s" % device.last_error]
    for name, (lo, hi) in device.map.pop("_ranges", {}).items():
        value = device.value(name, now_ms)  # None: "not implemented", as the map allows
        if value is not None and not lo <= value <= hi:
            problems.append("%s = %s, outside its sane range [%s, %s]" % (name, value, lo, hi))
    return problems


async def check_plant(plant, now_ms):
    """Each device of the plant against its map: [] or one line per problem, naming it."""
    lines = []
    for role in ("meter", "battery", "inverter"):
        device = getattr(plant, role)
        lines += ["%s: %s" % (_where(role, device), p) for p in await check_device(device, now_ms)]
    return lines
