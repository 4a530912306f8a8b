"""A tty or pty path as a serial port on CPython (a Raspberry Pi): serial_port.py's
interface. CPython's asyncio cannot wrap a file in a stream, so reads wait for the
descriptor with add_reader. Kept apart so that MicroPython never loads it."""

import asyncio
import os

try:
    import termios
    from tty import setraw
except ImportError:  # CPython without termios (not Linux): no tty to open
    termios = setraw = None


def _set_once(future):
    if not future.done():  # the loop may call a reader again before we remove it
        future.set_result(None)


class PathPort:
    """Raw, reads never blocking (VMIN=0, VTIME=0)."""

    def __init__(self, path, baudrate=None):
        if termios is None:
            raise OSError("a tty path needs termios (Linux)")
        self.path = path
        self.baudrate = baudrate
        # O_NOCTTY: a pty must not become our controlling terminal
        self._file = open(os.open(path, os.O_RDWR | os.O_NOCTTY), "r+b", buffering=0)
        fd = self._file.fileno()
        setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        speed = getattr(termios, "B%d" % baudrate, None) if baudrate else None
        if speed is not None:  # a real tty; a pty ignores the speed
            attrs[4] = attrs[5] = speed
        termios.tcsetattr(fd, termios.TCSANOW, attrs)

    async def read(self, n):
        """1..n bytes, waiting for the first."""
        while True:
            loop = asyncio.get_running_loop()
            ready = loop.create_future()
            fd = self._file.fileno()
            loop.add_reader(fd, _set_once, ready)
            try:
                await ready
            finally:
                loop.remove_reader(fd)
            data = self._file.read(n)
            if data:
                return data

    async def write(self, data):
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
