"""The serial link under Modbus RTU: a board's UART, or a tty/pty path on Linux.

    port = serial_port.open_port({"path": "/dev/ttyUSB0", "baud": 9600})  # Pi, unix port
    port = serial_port.open_port({"path": "/tmp/ttyV1"})     # a socat pty: no wire, no baud
    port = serial_port.open_port({"uart": 2}, {"id": 2, "tx": 17, "rx": 16, "de": 4})  # ESP32

Every port has the small interface modbus.RtuClient uses: `await write(data)`
(returns when the bytes are on the wire, so the RS-485 driver can be released),
`await read(n)` (1..n bytes, waiting for the first), `discard()` (drop unread
input), `close()` and `baudrate` (None on a pty: no line timing to respect).
The ports share no base class, so serial_uart.py and serial_cpython.py import
nothing from here: this module only picks one.

A tty path on MicroPython lives here; a board's UART in serial_uart.py and a tty
on CPython in serial_cpython.py, imported only where they run: on MicroPython
every name a loaded module uses stays interned in the heap, used or not.
"""

import asyncio
import sys

from protocol.compat import const

try:
    import termios  # the unix port; absent on boards
except ImportError:
    termios = None

_VTIME = const(5)  # Linux c_cc indices; the unix port's termios does not name them
_VMIN = const(6)


class PathPort:
    """A tty or pty opened by path on the unix port, raw, reads never blocking
    (VMIN=0, VTIME=0), wrapped in asyncio.StreamReader (which polls the descriptor)."""

    def __init__(self, path, baudrate=None):
        self.path = path
        self.baudrate = baudrate
        self._file = open(path, "r+b")
        if termios is not None:
            fd = self._file.fileno()
            termios.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[6][_VMIN] = 0
            attrs[6][_VTIME] = 0
            speed = getattr(termios, "B%d" % baudrate, None) if baudrate else None
            if speed is not None:  # a real tty; a pty ignores the speed
                attrs[4] = attrs[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._reader = asyncio.StreamReader(self._file)

    async def read(self, n):
        """1..n bytes, waiting for the first."""
        while True:
            data = await self._reader.read(n)
            if data:
                return data

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


def open_port(link, uart=None):
    """A port for a device link config: {"path": ..., "baud": ...} (a tty or pty) or
    {"uart": N, "baud": ...}; uart is the board profile's entry for that UART
    ({"id", "tx", "rx", "de", "baud"}), the link's own keys win."""
    if "uart" in link:
        import serial_uart

        return serial_uart.open_port(link, uart)
    if "path" not in link:
        raise ValueError("an rtu link needs a 'path' or a 'uart'")
    if sys.implementation.name != "micropython":
        import serial_cpython

        return serial_cpython.PathPort(link["path"], link.get("baud"))
    return PathPort(link["path"], link.get("baud"))
