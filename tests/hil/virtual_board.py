"""A board made of the MicroPython unix VM: its REPL on a pty, as a board's USB serial port.

    .venv/bin/python tests/hil/virtual_board.py FOLDER      # FOLDER/ttyV0 until Ctrl-C

then `tools/flash.py upload --port FOLDER/ttyV0`, or `pytest -m hil --port FOLDER/ttyV0
--hil-board unix` (hardware/HIL.md). The GUIDE's recipe (socat, a pty, the VM), with:

- the VM's working directory, FOLDER/flash, is the board's filesystem: what mpremote
  copies lands there, and main.py, board.json and config.json are read from there;
- the pty keeps ISIG on (`raw,isig=1`), so a Ctrl-C interrupts running code as on a
  board (a fully raw pty passes it to a VM that reads nothing while it runs);
- when the VM exits (Ctrl-D at the REPL), a new one starts on the same pty with the
  same files, as a board comes back after a reset.

mpremote must `resume` on it (its soft reset would end the VM), which tools/flash.py
does for --board unix.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HEAP = "256k"  # hardware/boards/unix.json


def micropython():
    beside = Path(sys.executable).parent / "micropython"
    return str(beside) if beside.exists() else shutil.which("micropython")


def available():
    return micropython() is not None and shutil.which("socat") is not None


class VirtualBoard:
    def __init__(self, folder, heap=HEAP):
        self.folder = Path(folder)
        self.flash = self.folder / "flash"
        self.port = self.folder / "ttyV0"
        self.heap = heap
        self.process = None

    def start(self, timeout=5.0):
        self.flash.mkdir(parents=True, exist_ok=True)
        script = self.folder / "board.sh"
        # ':' and ',' end a socat address: the VM's command line lives in a script.
        script.write_text(
            "#!/bin/sh\n"
            "trap : INT\n"  # Ctrl-C is for the VM; this loop stays
            "cd '%s'\n"
            "while :; do MICROPYPATH=.frozen:lib '%s' -X heapsize=%s; sleep 0.05; done\n"
            % (self.flash, micropython(), self.heap)
        )
        script.chmod(0o700)
        self.process = subprocess.Popen(
            ["socat", "PTY,link=%s,raw,echo=0" % self.port,
             "EXEC:%s,pty,raw,isig=1,echo=0,stderr,setsid,ctty" % script],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.port.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.stop()
                raise RuntimeError("socat made no pty at %s" % self.port)
            time.sleep(0.02)
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # socat, the loop and the VM
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv):
    if len(argv) != 2:
        raise SystemExit("usage: vm.py FOLDER")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a `kill` cleans up too
    with VirtualBoard(argv[1]) as board:
        print("a MicroPython VM's REPL on %s, its files in %s (Ctrl-C ends it)"
              % (board.port, board.flash), flush=True)  # fmt: skip
        try:
            board.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main(sys.argv)
