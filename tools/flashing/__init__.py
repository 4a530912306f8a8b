"""What tools/flash.py does to a board, beyond `build`: the shared plumbing.

    image.py    flash: MicroPython itself (esptool for the ESP32, a UF2 for the Pico W)
    device.py   upload, provision, verify: files on the board's filesystem (mpremote)

Every step that touches a board is a command line (esptool, mpremote, picotool)
or a file copy, so --dry-run prints exactly what would run, and nothing else
happens. Secrets never appear in a command line or in the output: a config goes
to the board as a file (0600 here), never as text.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
BOARDS_DIR = ROOT / "hardware" / "boards"
BOARDS = tuple(sorted(p.stem for p in BOARDS_DIR.glob("*.json")))
# The unix port on a pty: mpremote's soft reset would end the process, so it resumes.
VM_BOARD = "unix"


class Fail(Exception):
    """Something the user must fix: tools/flash.py prints "error: <message>" and exits 2."""


class Mismatch(Exception):
    """verify found the board differs from this tree: exit 1."""


def profile(board):
    return json.loads((BOARDS_DIR / (board + ".json")).read_text())


def tool(name, dry_run=False):
    """A command of the venv (beside this Python) or on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        if dry_run:
            return name
        raise Fail("%s not found: run ./dev.sh setup" % name)
    return found


def need_port(port, dry_run):
    if not port:
        raise Fail(
            "--port is needed: the board's serial port "
            "(/dev/ttyUSB0 for an ESP32 DevKitC, /dev/ttyACM0 for a Pico W)"
        )
    if "://" not in port and not dry_run and not os.path.exists(port):
        raise Fail("no serial port %s: is the board plugged in? (ls /dev/ttyUSB* /dev/ttyACM*)"
                   % port)  # fmt: skip
    return port


class Script(str):
    """Python source for `mpremote exec`, shown by its name in the steps printed."""

    def __new__(cls, name, source):
        script = super().__new__(cls, source)
        script.name = name
        return script


def shown(argv):
    """A command line as a person types it: the tool by its name, not its venv path,
    and a script by its name (the scripts are in tools/flashing/device.py)."""
    words = ["<%s script>" % a.name if isinstance(a, Script) else a for a in argv[1:]]
    return shlex.join([Path(argv[0]).name, *words])


def last_line(text):
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errors = [x for x in lines if "error" in x.lower()]
    return (errors or lines or ["(no output)"])[-1]


class Plan:
    """Runs steps, or with dry_run only prints them ("would run: ...")."""

    def __init__(self, dry_run, say=print):
        self.dry_run = dry_run
        self.say = say

    def note(self, text):
        """A step that is not a command (a file written here): said, done by the caller."""
        self.say(("would " if self.dry_run else "") + text)

    def run(self, argv, what, stream=False, timeout=300):
        """Run a command line; -> its stdout (None in a dry run). Fail names `what` failed
        with the tool's own last error line. stream: its output goes to ours as it comes
        (esptool's progress); else it is captured, and shown only in that error line."""
        if self.dry_run:
            self.say("would run: " + shown(argv))
            return None
        self.say("$ " + shown(argv))
        try:
            done = subprocess.run(
                argv, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                capture_output=not stream,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise Fail("%s: %s took over %d s" % (what, Path(argv[0]).name, timeout)) from None
        if done.returncode != 0:
            output = (done.stdout or "") + (done.stderr or "")
            detail = last_line(output) if output else "see its output above"
            raise Fail("%s: %s" % (what, detail))
        return done.stdout or ""
