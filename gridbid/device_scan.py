"""`gridbid device scan`: what a Modbus device offers, before a register map names it.

    gridbid device scan --host 192.168.1.40 [--port 502] --unit 2       Modbus TCP
    gridbid device scan --serial /dev/ttyUSB0 [--baud 9600] --unit 1     Modbus RTU

A SunSpec device lists its base and models (id, name, start, length), found as the
battery finds them at boot (firmware/sunspec.py find()). Any other device gets a
register probe: which holding (3) and input (4) register ranges answer, read
PROBE_CHUNK registers at a time up to --probe-to, a refused chunk again in tenths, and
one by one where a range ends (bounded: at most 31 reads per chunk; progress on stderr).

The battery's own Modbus client (firmware/modbus.py, and serial_cpython.py for a
tty) does the reads, loaded from its files, so a scan sees what the battery would.
"""

import asyncio
import sys

from simulator import model

# The SunSpec models' labels (github.com/sunspec/models json/model_<id>.json, "label").
MODEL_NAMES = {
    1: "Common", 101: "Inverter (Single Phase)", 102: "Inverter (Split-Phase)",
    103: "Inverter (Three Phase)", 111: "Inverter (Single Phase) FLOAT",
    112: "Inverter (Split Phase) FLOAT", 113: "Inverter (Three Phase) FLOAT", 120: "Nameplate",
    121: "Basic Settings", 122: "Measurements_Status", 123: "Immediate Controls",
    124: "Storage", 160: "Multiple MPPT Inverter Extension", 201: "Meter (Single Phase)",
    202: "Meter (Split Single Phase)", 203: "Meter (Wye Three Phase)",
    204: "Meter (Delta Three Phase)", 701: "DER AC Measurement", 702: "DER Capacity",
    703: "Enter Service", 704: "DER AC Controls", 705: "DER Volt-Var", 706: "DER Volt-Watt",
    707: "DER Trip LV", 708: "DER Trip HV", 709: "DER Trip LF", 710: "DER Trip HF",
    711: "DER Frequency Droop", 712: "DER Watt-Var", 713: "DER Storage Capacity",
    714: "DER DC Measurement", 715: "DERCtl", 801: "Energy Storage Base (deprecated)",
    802: "Battery Base", 803: "Lithium-Ion Battery Bank", 804: "Lithium-Ion String",
}  # fmt: skip
PROBE_CHUNK = 100  # registers a probe read asks for (a device may allow fewer: then 1)


def add_arguments(scan):
    link = scan.add_mutually_exclusive_group(required=True)
    link.add_argument("--host", help="Modbus TCP: the device's or gateway's address")
    link.add_argument("--serial", metavar="PORT", help="Modbus RTU: a serial port or pty")
    scan.add_argument("--port", type=int, default=502, help="Modbus TCP port (502)")
    scan.add_argument("--baud", type=int, default=9600, help="RTU baud rate (9600)")
    scan.add_argument("--unit", type=int, required=True, help="Modbus unit id, 1..247")
    scan.add_argument("--timeout", type=float, default=0.5, help="seconds a reply may take")
    scan.add_argument(
        "--probe-to",
        type=int,
        default=10000,
        help="without SunSpec: probe addresses 0..N-1 of each table (10000: at most 3,100 "
        "requests a table)",
    )
    # fmt: skip


def firmware(name):
    """The battery's own module (simulator/model.py firmware), under its own name."""
    return model.firmware(name, own_name=True)


def check(args):
    """One line naming the bad argument, or None."""
    if not 1 <= args.unit <= 247:
        return "--unit must be 1..247, not %d" % args.unit
    if not 1 <= args.port <= 65535:
        return "--port must be 1..65535, not %d" % args.port
    if not 0.01 <= args.timeout <= 30:
        return "--timeout must be 0.01..30 s"
    if not 1 <= args.probe_to <= 0x10000:
        return "--probe-to must be 1..65536"
    if args.baud <= 0:
        return "--baud must be positive"
    return None


def open_client(args):
    modbus = firmware("modbus")
    timeout_ms = int(args.timeout * 1000)
    if args.host:
        return modbus.TcpClient(args.host, args.port, timeout_ms)
    port = firmware("serial_cpython").PathPort(args.serial, args.baud)
    return modbus.RtuClient(port, timeout_ms)


def where(args):
    link = (
        "%s:%d" % (args.host, args.port)
        if args.host
        else "%s at %d baud" % (args.serial, args.baud)
    )
    return "unit %d on %s" % (args.unit, link)


async def scan(args, out, err):
    """Print what the device offers to out (progress to err); the exit code."""
    modbus = firmware("modbus")
    firmware("register_map")
    sunspec = firmware("sunspec")  # after modbus and register_map: it imports them
    client = open_client(args)

    async def read(address, count, function=modbus.READ_HOLDING):
        try:
            if function == modbus.READ_INPUT:
                return await client.read_input(args.unit, address, count)
            return await client.read_holding(args.unit, address, count)
        except modbus.ModbusExceptionResponse:
            return None

    try:
        try:
            base, chain = await sunspec.find(read)
        except sunspec.MapError as exc:
            print("not SunSpec (%s): probing registers" % exc, file=out)
            return await probe(read, args, out, err)
        print("SunSpec at base %d (%s), %d models:" % (base, where(args), len(chain)), file=out)
        for model, start, length in chain:
            name = MODEL_NAMES.get(model, "unknown")
            print("  model %5d  %-32s start %5d  length %3d" % (model, name, start, length),
                  file=out)  # fmt: skip
        end = chain[-1][1] + 2 + chain[-1][2] if chain else base + 2
        print("  end marker at %d" % end, file=out)
        return 0
    except modbus.ModbusError as exc:  # no answer at all: timeout, refused, no such host
        print("error: no answer from %s: %s" % (where(args), exc), file=err)
        return 1
    finally:
        await client.close()


async def probe(read, args, out, err):
    """Which register ranges answer, per table; 0 if any did."""
    modbus = firmware("modbus")
    found_any = False
    for function, table in ((modbus.READ_HOLDING, "holding"), (modbus.READ_INPUT, "input")):
        ranges, tenth, address = [], max(1, args.probe_to // 10), 0
        while address < args.probe_to:
            count = min(PROBE_CHUNK, args.probe_to - address)
            if address // tenth != (address + count) // tenth:
                print("probing %s registers: %d of %d" % (table, address + count, args.probe_to),
                      file=err, flush=True)  # fmt: skip
            for first, last in await _answering(read, function, address, count):
                if ranges and ranges[-1][1] == first - 1:
                    ranges[-1][1] = last
                else:
                    ranges.append([first, last])
            address += count
        found_any = found_any or bool(ranges)
        text = ", ".join("%d-%d" % (a, b) if a != b else str(a) for a, b in ranges) or "none"
        print("%s registers (function %d) answering: %s" % (table, function, text), file=out)
    if not found_any:
        print("error: no register of %s answers below %d" % (where(args), args.probe_to),
              file=err)  # fmt: skip
    return 0 if found_any else 1


async def _answers(read, function, address, count):
    """True if a read of address..+count answers; False if refused or silent."""
    try:
        return await read(address, count, function) is not None
    except Exception:  # a device silent for this range: nothing here
        return False


async def _answering(read, function, address, count):
    """[(first, last)] of address..+count that answer: the chunk; or, when the device
    refuses it, its tenths, and one register at a time in a refused tenth beside an
    answering one (where a range ends). At most 1 + 10 + 2 x 10 reads; none more when
    the chunk gets no answer at all (no waiting for ten more timeouts)."""
    try:
        if await read(address, count, function) is not None:
            return [(address, address + count - 1)]
    except Exception:
        return []
    step = max(1, count // 10)
    tenths = [
        (a, min(a + step, address + count) - 1) for a in range(address, address + count, step)
    ]
    ok = [await _answers(read, function, a, b - a + 1) for a, b in tenths] if count > 1 else [False]
    got = []
    for i, (first, last) in enumerate(tenths):
        if ok[i]:
            got.append((first, last))
        elif first != last and ((i and ok[i - 1]) or (i + 1 < len(ok) and ok[i + 1])):
            got += [(a, a) for a in range(first, last + 1) if await _answers(read, function, a, 1)]
    return sorted(got)


def run(args):
    bad = check(args)
    if bad:
        print("error: %s" % bad, file=sys.stderr)
        return 2
    try:
        return asyncio.run(scan(args, sys.stdout, sys.stderr))
    except OSError as exc:  # a serial port that does not open
        print("error: %s: %s" % (args.serial or args.host, exc), file=sys.stderr)
        return 2
