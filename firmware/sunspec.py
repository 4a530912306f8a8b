"""SunSpec discovery at boot: find the models on the device, bind a map's points to them.

    where = await sunspec.find(read)               # (base, [(model id, start, length)])
    sunspec.bind(device, where)                    # a SunSpec map's points get registers
    problems = await sunspec.check({role: device}, now_ms)   # [] or one line per problem

A SunSpec device has 'SunS' at base 0, 40000 or 50000, then a chain of models, each a
header (model id, length L) and L registers, ended by id 0xFFFF; devices order and lay
out their models as they like. So a SunSpec map (register_map.py) places its points by
model and offset, and check() finds the chain on the device (find(): a bounded walk,
so a garbled or hostile device can neither loop it nor make it allocate), checks each
model's id and length, and binds the points; then, if the map has ranges, one read,
every point with a "range" within it. A map that does not match its device is never
read silently:
app.py logs each line and stays in safe idle. gridbid device scan walks a chain
with the same find().

Only start-up needs this module: app.py drops it with register_map. Its names are
MicroPython's own (find, bind) or the firmware's (check): every name a module uses
stays interned, and the firmware sits at the count where MicroPython adds a 7 KB table.
"""

import modbus
from register_map import MapError

from protocol.compat import const

_A = const(1)  # a spec tuple's address (register_map.py)
_MAX_MODELS = const(32)  # a chain's bound; a real device has < 15 models


async def find(read):
    """(base, [(model id, start, length)]) of a SunSpec device. read(address, count) ->
    its registers, or None when it refuses the address (an exception response); it
    raises when there is no answer. MapError: no marker, or a broken chain; the first
    base's error when no base answered at all (a dead device)."""
    error = None
    for base in (0, 40000, 50000):
        try:
            regs = await read(base, 2)
        except Exception as exc:  # no reply at this base (some devices stay silent)
            error = exc if error is None else error
            continue
        error = False  # a device is there
        if regs is not None and list(regs) == [0x5375, 0x6E53]:  # 'SunS'
            break
    else:
        if error:
            raise error
        raise MapError("no SunSpec marker 'SunS' at 0, 40000 or 50000")
    chain, address = [], base + 2
    while True:
        if len(chain) == _MAX_MODELS:
            raise MapError("chain from %d: no end after %d models" % (base, _MAX_MODELS))
        if address > 0x10000 - 2:
            raise MapError("chain from %d runs past register 65535 without an end" % base)
        header = await read(address, 2)
        if header is None:
            raise MapError("chain from %d: no model header at %d" % (base, address))
        model, length = header
        if model == 0xFFFF:  # the end
            return base, chain
        if address + 2 + length > 0x10000:
            raise MapError("model %d at %d: length %d runs past register 65535"
                           % (model, address, length))  # fmt: skip
        chain.append((model, address, length))
        address += 2 + length


def bind(device, where):
    """Give a SunSpec map's points their registers on the device's chain, where: find()'s
    (base, chain). MapError, one line: a model the map needs is missing, or not of its
    length."""
    (base, chain), found, problems = where, {}, []
    for model, start, length in chain:
        found.setdefault(model, (start, length))  # the first, as readers take it
    for entry in device.map["sunspec"]:
        model, length = entry[0], entry[1]
        repeat = entry[2] if len(entry) > 2 else 0
        got = found.get(model, (0, -1))[1]
        if got < 0:
            ids = ", ".join(str(m[0]) for m in chain)
            problems.append("model %d expected, device offers [%s]" % (model, ids))
        elif got != length and not (repeat and got > length and (got - length) % repeat == 0):
            problems.append("model %d has length %d, the map expects %d" % (model, got, length))
    if problems:
        raise MapError(", ".join(problems))
    specs = device.specs
    for name, spec in specs.items():
        if spec[_A] < 0:
            specs[name] = spec[:_A] + (found[-spec[_A] >> 16][0] + (-spec[_A] & 0xFFFF),) + spec[2:]
    end = chain[-1][1] + 2 + chain[-1][2]
    device.map["blocks"] = [[base, end - base]]  # a chain is contiguous registers
    device.map.pop("sunspec")  # bound: no more use
    device.__init__(device.kind, device.map, device.client, device.unit)  # plans its reads


async def check(devices, now_ms):
    """At boot, each device ({role: Device}) against its map: a SunSpec map's models found
    and bound, then one read, and every point with a "range" within it. -> [] or one
    line per problem, naming the device."""
    lines = []
    for role, device in devices.items():
        where = "%s (map %s, unit %d)" % (role, device.name, device.unit)
        try:
            if device.plan is None:  # a SunSpec map not bound yet

                async def read(address, count, device=device):  # this loop's device
                    try:
                        return await device.client.read_holding(device.unit, address, count)
                    except modbus.ModbusExceptionResponse:
                        return None

                bind(device, await find(read))
            ranges = device.map.pop("range", None)
            # Read only to check ranges: a device read (or not) later, as always, is a
            # link failure then, not a map that does not match.
            if ranges and not await device.read(now_ms):
                raise device.last_error
        except (ValueError, modbus.ModbusError) as exc:  # MapError, or no answer
            lines.append("%s: %s: %s" % (where, type(exc).__name__, exc))
            continue
        for name, (lo, hi) in (ranges or {}).items():
            value = device.value(name, now_ms)  # None: "not implemented", as the map allows
            if value is not None and not lo <= value <= hi:
                lines.append("%s: %s = %s, outside its sane range [%s, %s]"
                             % (where, name, value, lo, hi))  # fmt: skip
    return lines
