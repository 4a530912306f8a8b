"""Boot entry point. On a board MicroPython runs this file after boot.py:
board.json and config.json sit beside it. On the unix port:

    micropython firmware/main.py hardware/boards/unix.json CONFIG.json

A ROMFS build (tools/flash.py build --romfs) keeps the modules in flash: a
board's MicroPython mounts that at /rom itself. The unix port has no flash:
tools/romvm.py maps the image read-only outside the heap and says where in
GRIDBID_ROMFS, and rom() mounts it the same way before the first import.
"""

import os
import sys


def rom():
    where = getattr(os, "getenv", lambda name: None)("GRIDBID_ROMFS")  # boards have no getenv
    if where:
        try:
            import uctypes
            import vfs
        except ImportError:  # CPython (a Pi): a ROMFS image is for the MicroPython VM
            raise SystemExit("GRIDBID_ROMFS is set, but this is not MicroPython") from None
        address, size = where.split(":")
        vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(address, 16), int(size))), "/rom")
        sys.path.append("/rom")


rom()
import app  # noqa: E402  (from /rom when the image is mounted)

app.main(*(sys.argv[1:3] if len(sys.argv) > 2 else ()))
