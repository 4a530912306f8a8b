"""The serial link under Modbus RTU: a board's UART, or a tty/pty path on Linux.

    port = serial_port.open_uart(1, 9600, tx=17, rx=16, de=4)   # ESP32 + RS-485 transceiver
    port = serial_port.open_path("/dev/ttyUSB0", 9600)           # Pi, unix port, CPython
    port = serial_port.open_path("/tmp/ttyV1")                   # a socat pty: no wire, no baud

Every port has the small interface modbus.RtuClient uses: `await write(data)`
(returns when the bytes are on the wire, so the RS-485 driver can be released),
`await readexactly(n)`, `discard()` (drop unread input), `close()` and
`baudrate` (None on a pty: no line timing to respect).
"""

import asyncio
import os
import sys

try:
    import termios  # unix port and CPython; absent on boards
except ImportError:
    termios = None

try:
    from tty import setraw  # CPython keeps setraw in tty
except ImportError:
    setraw = getattr(termios, "setraw", None)  # the unix port keeps it in termios

try:
    import machine  # boards
except ImportError:
    machine = None

_CPYTHON = sys.implementation.name != "micropython"
_VTIME = 5  # Linux c_cc indices; the unix port's termios does not name them
_VMIN = 6


def _set_once(future):
    if not future.done():  # the loop may call a reader again before we remove it
        future.set_result(None)


class _Port:
    async def readexactly(self, n):
        data = b""
        while len(data) < n:
            data += await self.read(n - len(data))
        return data


class PathPort(_Port):
    """A tty or pty opened by path, raw, reads never blocking (VMIN=0, VTIME=0).

    On MicroPython the file is wrapped in asyncio.StreamReader, which polls its
    descriptor; CPython's asyncio cannot wrap a file, so it waits with add_reader.
    """

    def __init__(self, path, baudrate=None):
        self.path = path
        self.baudrate = baudrate
        if _CPYTHON:  # O_NOCTTY: a pty must not become our controlling terminal
            self._file = open(os.open(path, os.O_RDWR | os.O_NOCTTY), "r+b", buffering=0)
        else:
            self._file = open(path, "r+b")
        self._raw()
        self._reader = None if _CPYTHON else asyncio.StreamReader(self._file)

    def _raw(self):
        if termios is None:
            return
        fd = self._file.fileno()
        setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[6][getattr(termios, "VMIN", _VMIN)] = 0
        attrs[6][getattr(termios, "VTIME", _VTIME)] = 0
        speed = getattr(termios, "B%d" % self.baudrate, None) if self.baudrate else None
        if speed is not None:  # a real tty; a pty ignores the speed
            attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)

    async def read(self, n):
        """1..n bytes, waiting for the first."""
        while True:
            if self._reader is not None:
                data = await self._reader.read(n)
            else:
                await self._readable()
                data = self._file.read(n)
            if data:
                return data

    async def _readable(self):
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._file.fileno()
        loop.add_reader(fd, _set_once, ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)

    async def write(self, data):
        # A pty/tty takes a Modbus frame (<= 256 bytes) into its buffer at once.
        view = memoryview(data)
        while len(view):
            done = self._file.write(view)
            view = view[done or 0 :]
            if len(view):
                await asyncio.sleep(0.001)

    def discard(self):
        while self._file.read(256):
            pass

    def close(self):
        self._file.close()


class UartPort(_Port):
    """machine.UART behind asyncio streams, with an optional RS-485 driver-enable pin."""

    def __init__(self, uart, baudrate, de_pin=None):
        self.uart = uart
        self.baudrate = baudrate
        self.de = de_pin
        if de_pin is not None:
            de_pin.value(0)  # listen until we talk
        self._reader = asyncio.StreamReader(uart)
        self._writer = asyncio.StreamWriter(uart, {})

    async def read(self, n):
        while True:
            data = await self._reader.read(n)
            if data:
                return data

    async def write(self, data):
        if self.de is not None:
            self.de.value(1)
        try:
            self._writer.write(data)
            await self._writer.drain()
            # drain() returns when the bytes are in the UART buffer, not on the wire:
            # sleep most of the transmit time, then flush() waits out the rest.
            tx_ms = len(data) * 11000 // self.baudrate
            if tx_ms > 1:
                await asyncio.sleep((tx_ms - 1) / 1000)
            if hasattr(self.uart, "flush"):
                self.uart.flush()
        finally:
            if self.de is not None:
                self.de.value(0)

    def discard(self):
        while self.uart.any():
            self.uart.read()

    def close(self):
        if hasattr(self.uart, "deinit"):
            self.uart.deinit()


def open_path(path, baudrate=None):
    return PathPort(path, baudrate)


def open_uart(uart_id, baudrate=9600, tx=None, rx=None, de=None):
    """A board UART (pins by number; de = RS-485 driver-enable pin, high to transmit)."""
    if machine is None or not hasattr(machine, "UART"):
        raise ValueError("this port has no machine.UART: use a tty path")
    kwargs = {"baudrate": baudrate}
    if tx is not None:
        kwargs["tx"] = tx
    if rx is not None:
        kwargs["rx"] = rx
    uart = machine.UART(uart_id, **kwargs)
    pin = machine.Pin(de, machine.Pin.OUT) if de is not None else None
    return UartPort(uart, baudrate, pin)


def open_port(link, uart=None):
    """A port for a device link config: {"path": ..., "baud": ...} (a tty or pty) or
    {"uart": N, "baud": ...}; uart is the board profile's entry for that UART
    ({"id", "tx", "rx", "de", "baud"}), the link's own keys win."""
    if "path" in link:
        return open_path(link["path"], link.get("baud"))
    if "uart" in link:
        pins = uart or {}
        return open_uart(
            pins.get("id", link["uart"]), link.get("baud", pins.get("baud", 9600)),
            link.get("tx", pins.get("tx")), link.get("rx", pins.get("rx")),
            link.get("de", pins.get("de")),
        )  # fmt: skip
    raise ValueError("an rtu link needs a 'path' or a 'uart'")
