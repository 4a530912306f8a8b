"""Shared by tests/hil: driving a board through its REPL with pytest-embedded's `dut`,
and tools/flash.py.

The same calls work on a board's USB serial port and on the MicroPython VM's pty
(tests/hil/virtual_board.py); where the two differ (how the app starts, how a board resets)
the board profile given with --hil-board decides.
"""

import subprocess
import sys
import time
from pathlib import Path

from helpers import waiting

ROOT = Path(__file__).resolve().parent.parent.parent

CTRL_C, CTRL_D = b"\x03", b"\x04"


def raw(dut, data):
    """Bytes as they are (dut.write adds a newline)."""
    dut.serial.proc.write(data)


_marks = [0]


def sync(dut, timeout=10):
    """Wait until the REPL has run everything sent so far. A prompt alone proves nothing:
    two Ctrl-Cs leave two prompts, and a stale one matched early let the next line race
    the one before it (CI once reset the VM before a file write had run). The mark is
    computed on the board, so the line's own echo cannot match it."""
    _marks[0] += 1
    dut.write("print('mark', %d + 1)" % _marks[0])
    dut.expect("mark %d" % (_marks[0] + 1), timeout=timeout)
    dut.expect(">>>", timeout=timeout)


def repl(dut, timeout=10):
    """Stop main.py if it runs (Ctrl-C) and wait until the prompt answers."""
    dut.write("\x03\x03")
    dut.expect(">>>", timeout=timeout)
    sync(dut, timeout)


def run(dut, line, expect, timeout=10):
    """Send a line; expecting ">>>" means: until the board has finished it."""
    dut.write(line)
    if expect == ">>>":
        return sync(dut, timeout)
    return dut.expect(expect, timeout=timeout)


def boot(dut, board):
    """Start the app afresh, as a board does after a reset: main.py with board.json and
    config.json beside it. A board soft-resets (Ctrl-D at its prompt: a new interpreter,
    then boot.py and main.py). The VM ends at Ctrl-D; its wrapper (tests/hil/virtual_board.py)
    starts a new one on the same files, which imports main.py as a board runs it. (An
    `import main` in the old one would run the interrupted app's tasks too.)"""
    repl(dut)
    raw(dut, CTRL_D)
    if board == "unix":
        dut.expect("MicroPython", timeout=10)  # the new VM's banner
        dut.expect(">>>", timeout=10)
        dut.write("import main")


def reset(dut, board):
    """Reset the board wherever its app stands; it then starts again.

    ESP32 DevKitC: EN pulled low through RTS (the auto-reset circuit esptool uses), a
    hardware reset. Pico W and the VM: Ctrl-C, then a soft reset (boot()): a hard reset
    would drop the Pico W's USB serial port from under the test."""
    if board != "esp32-devkitc":
        return boot(dut, board)
    port = dut.serial.proc
    port.dtr = False
    port.rts = True
    time.sleep(0.1)
    port.rts = False


def until(check, timeout, what):
    """helpers/waiting.py's until(), polling a board every 50 ms (each poll is a REPL
    round trip)."""
    return waiting.until(check, timeout, what, every=0.05)


def tool(*args, timeout=300):
    """tools/flash.py VERB ... as a user runs it. -> (exit code, output)."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "flash.py"), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return done.returncode, done.stdout + done.stderr
