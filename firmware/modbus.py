"""Modbus client for the battery controller: RTU and TCP, asyncio, MicroPython and CPython.

    client = modbus.TcpClient("192.168.1.50", 502, timeout_ms=500)
    client = modbus.RtuClient(serial_port.open_path("/dev/ttyUSB0", 9600))
    regs = await client.read_holding(unit, address, count)   # list of u16
    await client.write_registers(unit, address, [hi, lo])

Functions 3 (read holding), 4 (read input), 6 (write single), 16 (write
multiple). Addresses are 0-based protocol addresses. One request at a time per
link: concurrent callers wait on a lock, as a half-duplex RS-485 bus needs and
a TCP gateway expects. Every request has a deadline; a timeout closes a TCP
link (a late reply must not be taken for the next one) and the next request
reconnects. The framing and parsing are pure functions, tested on both runtimes
in tests/firmware/test_modbus_codec.py. `data` is a PDU (function code and its
fields) wherever a function takes one.
"""

import asyncio
import struct

from protocol.compat import const, ticks_diff, ticks_us

READ_HOLDING = const(3)
READ_INPUT = const(4)
_WRITE_SINGLE = const(6)
_WRITE_MULTIPLE = const(16)
MAX_READ = const(125)  # registers per read (the PDU limit of 253 bytes)
_MAX_WRITE = const(123)  # registers per write multiple


class ModbusError(Exception):
    """Any failed Modbus request (link down, timeout, bad frame, exception reply)."""


class ModbusTimeout(ModbusError):
    """No (complete) reply within the request's deadline."""


class ModbusFrameError(ModbusError):
    """A reply that is not a valid answer to the request: bad CRC, unit, function, length."""


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception (code 1..11)."""

    def __init__(self, code, function):
        self.code = code
        self.function = function
        names = (
            None, "illegal function", "illegal data address", "illegal data value",
            "server device failure", "acknowledge", "server device busy",
            "negative acknowledge", "memory parity error", None, "gateway path unavailable",
            "gateway target device failed to respond",
        )  # fmt: skip
        name = names[code] if 0 <= code < len(names) else None
        super().__init__("function %d: exception %d (%s)" % (function, code, name or "unknown"))


# The CRC table, built on first use (TCP-only controllers never pay for it): the
# 16-bit table split into its high and low bytes, two 256-byte bytearrays (512
# bytes of heap, where a list of ints takes 2 KB on a 64-bit VM), so the loop in
# crc16() needs no 16-bit shifts (the Modbus spec's own table-driven form), and
# runs 8x faster per frame than bit by bit.
_crc = []


def crc16(data):
    """CRC-16/Modbus (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    if not _crc:
        high, low = bytearray(256), bytearray(256)
        for byte in range(256):
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
            high[byte], low[byte] = crc >> 8, crc & 0xFF
        _crc.extend((high, low))
    high, low = _crc
    hi = lo = 0xFF
    for byte in data:
        i = lo ^ byte
        lo = hi ^ low[i]
        hi = high[i]
    return hi << 8 | lo


def _check_u16(value, name):
    # MicroPython's struct truncates out-of-range ints silently: check first.
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError("%s must be 0..65535, not %r" % (name, value))


def read_request(function, address, count):
    """PDU of a read holding (3) / read input (4) request."""
    if function not in (READ_HOLDING, READ_INPUT):
        raise ValueError("not a read function: %r" % (function,))
    _check_u16(address, "address")
    if not isinstance(count, int) or not 1 <= count <= MAX_READ or address + count > 0x10000:
        raise ValueError("count must be 1..%d within the address space" % MAX_READ)
    return struct.pack(">BHH", function, address, count)


def write_single_request(address, value):
    _check_u16(address, "address")
    _check_u16(value, "register value")
    return struct.pack(">BHH", _WRITE_SINGLE, address, value)


def write_multiple_request(address, values):
    _check_u16(address, "address")
    count = len(values)
    if not 1 <= count <= _MAX_WRITE or address + count > 0x10000:
        raise ValueError("1..%d registers within the address space" % _MAX_WRITE)
    for value in values:
        _check_u16(value, "register value")
    return struct.pack(">BHHB%dH" % count, _WRITE_MULTIPLE, address, count, 2 * count, *values)


def parse_reply(request, data):
    """Check a reply PDU (data) against its request PDU: registers for a read, None for
    a write.

    Raises ModbusExceptionResponse for an exception reply and ModbusFrameError
    for anything that does not answer this request.
    """
    function = request[0]
    if not data:
        raise ModbusFrameError("empty reply")
    if data[0] == function | 0x80:
        if len(data) != 2:
            raise ModbusFrameError("exception reply of %d bytes" % len(data))
        raise ModbusExceptionResponse(data[1], function)
    if data[0] != function:
        raise ModbusFrameError("reply to function %d, expected %d" % (data[0], function))
    if function in (READ_HOLDING, READ_INPUT):
        count = (request[3] << 8) | request[4]
        if len(data) < 2 or data[1] != 2 * count or len(data) != 2 + 2 * count:
            raise ModbusFrameError("read reply of %d bytes for %d registers" % (len(data), count))
        # One list of the exact size, filled in place: struct.unpack + list() would make
        # a tuple and a list of up to 1 KB each, and in a small heap every block counts.
        registers = [0] * count
        for i in range(count):
            registers[i] = data[2 + 2 * i] << 8 | data[3 + 2 * i]
        return registers
    if len(data) != 5 or data[1:5] != request[1:5]:  # 6 and 16 echo address + value/count
        raise ModbusFrameError("write reply does not echo the request")
    return None


def tcp_frame(transaction, unit, data):
    """MBAP header (transaction id, protocol 0, length, unit) + PDU."""
    return struct.pack(">HHHB", transaction, 0, len(data) + 1, unit) + data


def rtu_frame(unit, data):
    frame = bytes((unit,)) + data
    crc = crc16(frame)
    return frame + bytes((crc & 0xFF, crc >> 8))


def rtu_reply_length(head):
    """Whole RTU reply length from its first 3 bytes (unit, function, count/first byte)."""
    function = head[1]
    if function & 0x80:
        return 5  # unit, function | 0x80, code, crc
    if function in (READ_HOLDING, READ_INPUT):
        return 5 + head[2]  # unit, function, byte count, data, crc
    if function in (_WRITE_SINGLE, _WRITE_MULTIPLE):
        return 8  # unit, function, address, value/count, crc
    raise ModbusFrameError("reply with unknown function %d" % function)


def rtu_pdu(frame, unit):
    """The PDU of a complete RTU reply, after checking its CRC and unit."""
    if len(frame) < 4:
        raise ModbusFrameError("short RTU frame (%d bytes)" % len(frame))
    crc = crc16(frame[:-2])
    if frame[-2] != crc & 0xFF or frame[-1] != crc >> 8:
        raise ModbusFrameError("bad CRC")
    if frame[0] != unit:
        raise ModbusFrameError("reply from unit %d, expected %d" % (frame[0], unit))
    return frame[1:-2]


# Values in registers: 16-bit registers are big-endian on the wire (parse_reply); a
# 32-bit value spans two, high word first ("big") or low word first ("little").
SIZES = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2}


def decode(registers, kind, word_order="big"):
    """The raw number in a point's registers (before scaling)."""
    if kind == "u16":
        return registers[0]
    if kind == "i16":
        return registers[0] - 0x10000 if registers[0] & 0x8000 else registers[0]
    hi, lo = (registers[0], registers[1]) if word_order == "big" else (registers[1], registers[0])
    if kind == "f32":
        return struct.unpack(">f", struct.pack(">HH", hi, lo))[0]
    value = (hi << 16) | lo
    if kind == "i32" and value & 0x80000000:
        value -= 0x100000000
    return value


def encode(value, kind, word_order="big"):
    """Registers holding value (a raw number, already unscaled); ValueError if it does not fit."""
    if kind == "f32":
        hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    else:
        bits = 16 * SIZES[kind]  # u16 u32: 0..2**bits-1; i16 i32: -2**(bits-1)..2**(bits-1)-1
        low = -(1 << (bits - 1)) if kind[0] == "i" else 0
        high = low + (1 << bits) - 1
        if not isinstance(value, int) or not low <= value <= high:
            raise ValueError("%r does not fit %s" % (value, kind))
        value &= 0xFFFFFFFF
        if SIZES[kind] == 1:
            return [value & 0xFFFF]
        hi, lo = value >> 16, value & 0xFFFF
    return [hi, lo] if word_order == "big" else [lo, hi]


def plan_reads(specs, names, blocks=None, max_registers=MAX_READ):
    """[(function, start, count, [names])]: few requests covering the named points.

    specs maps a point's name to a tuple starting (function, address, count),
    as register_map.py compiles them. Neighbours merge when the span stays
    within max_registers and is either contiguous or inside one of the map's
    readable blocks (a device may answer "illegal address" for registers
    between its documented ones). It lives here, not in register_map.py, because
    reads are planned at run time too, after that startup-only module is gone.
    """
    plan = []
    for function, address, size, name in sorted(
        (specs[n][0], specs[n][1], specs[n][2], n) for n in names
    ):
        end = address + size
        if plan:
            f, start, count, members = plan[-1]
            if f == function and end - start <= max_registers:
                inside = any(first <= start and end <= first + n for first, n in blocks or ())
                if address <= start + count or inside:
                    plan[-1] = (f, start, max(count, end - start), members + [name])
                    continue
        plan.append((function, address, size, [name]))
    return plan


def scaled(raw, scale=1, sf=None):
    """A raw register number in units: raw x scale x 10^sf (sf: a SunSpec scale factor)."""
    value = raw * scale if scale != 1 else raw
    if not sf:
        return value
    return value * 10**sf if sf > 0 else value / 10 ** (-sf)  # dividing keeps 0.1 exact


def unscaled(value, scale=1, sf=None):
    """The raw number that scaled() turns into value (not rounded)."""
    raw = value / scale if scale != 1 else value
    if not sf:
        return raw
    return raw / 10**sf if sf > 0 else raw * 10 ** (-sf)


class _Client:
    """Request/response over one link; subclasses move the bytes (_exchange)."""

    def __init__(self, timeout_ms):
        self.timeout_ms = timeout_ms
        self.lock = asyncio.Lock()  # one request at a time on the link

    async def read_holding(self, unit, address, count):
        return await self.request(unit, read_request(READ_HOLDING, address, count))

    async def read_input(self, unit, address, count):
        return await self.request(unit, read_request(READ_INPUT, address, count))

    async def write_register(self, unit, address, value):
        await self.request(unit, write_single_request(address, value))

    async def write_registers(self, unit, address, values):
        await self.request(unit, write_multiple_request(address, values))

    async def request(self, unit, data):
        """Send one request PDU to unit; the parsed reply (see parse_reply)."""
        async with self.lock:
            try:
                reply = await asyncio.wait_for(self._exchange(unit, data), self.timeout_ms / 1000)
                return parse_reply(data, reply)
            except asyncio.TimeoutError:
                await self._abandon()
                raise ModbusTimeout(
                    "unit %d: no reply within %d ms" % (unit, self.timeout_ms)
                ) from None
            except ModbusExceptionResponse:
                raise  # the link is fine: keep it
            except ModbusError:
                await self._abandon()
                raise
            except (OSError, EOFError) as exc:  # refused, reset, closed: reconnect next time
                await self._abandon()
                raise ModbusError("unit %d: link: %s" % (unit, exc)) from None

    async def close(self):
        await self._abandon()


class TcpClient(_Client):
    """Modbus TCP (MBAP framing); connects on first use and after any failure.

    A link found dead when reused (the peer closed it while we were idle) is
    reopened once within the same request: Modbus reads and register writes
    are idempotent, so sending again is safe.
    """

    def __init__(self, host, port=502, timeout_ms=500):
        super().__init__(timeout_ms)
        self.host = host
        self.port = port
        self._reader = None
        self._writer = None
        self.transaction = 0  # the MBAP transaction id of the last request

    async def _exchange(self, unit, data):
        fresh = self._writer is None
        while True:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            try:
                self.transaction = (self.transaction + 1) & 0xFFFF
                self._writer.write(tcp_frame(self.transaction, unit, data))
                await self._writer.drain()
                while True:
                    head = await self._reader.readexactly(7)
                    transaction, protocol, length, reply_unit = struct.unpack(">HHHB", head)
                    if protocol != 0 or not 2 <= length <= 254:
                        raise ModbusFrameError("bad MBAP header")
                    body = await self._reader.readexactly(length - 1)
                    if transaction == self.transaction:
                        break  # older transaction ids are late replies: skip them
                if reply_unit != unit:
                    raise ModbusFrameError("reply from unit %d, expected %d" % (reply_unit, unit))
                return body
            except (OSError, EOFError):
                if fresh:
                    raise
                fresh = True  # dropped while idle (gateway restart): reconnect once
                await self._abandon()

    async def _abandon(self):
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            try:
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass  # already gone: closing is all we wanted


class RtuClient(_Client):
    """Modbus RTU over a serial_port object (write, read, discard, baudrate).

    Frames are separated by at least 3.5 character times of silence (fixed at
    1.75 ms above 19200 baud, as the spec says); a port with baudrate None (a
    pty, no wire) needs no gap. Units 1..247; broadcast (unit 0) is not used.
    """

    def __init__(self, port, timeout_ms=500):
        super().__init__(timeout_ms)
        self.port = port
        baud = getattr(port, "baudrate", None)
        if not baud:
            self.silent_us = 0
        elif baud > 19200:
            self.silent_us = 1750
        else:
            self.silent_us = 38500000 // baud  # 3.5 chars x 11 bits
        self._quiet_since = ticks_us()

    async def _exchange(self, unit, data):
        if not 1 <= unit <= 247:
            raise ValueError("RTU unit must be 1..247, not %r" % (unit,))
        wait_us = self.silent_us - ticks_diff(ticks_us(), self._quiet_since)
        if wait_us > 0:
            await asyncio.sleep(wait_us / 1000000)
        self.port.discard()  # bytes left from an abandoned reply would shift this one
        await self.port.write(rtu_frame(unit, data))
        head = await self._read(3)
        rest = await self._read(rtu_reply_length(head) - 3)
        self._quiet_since = ticks_us()
        return rtu_pdu(head + rest, unit)

    async def _read(self, n):
        data = b""
        while len(data) < n:
            data += await self.port.read(n - len(data))
        return data

    async def _abandon(self):
        self._quiet_since = ticks_us()  # the device may still be talking: keep the gap

    async def close(self):
        self.port.close()
