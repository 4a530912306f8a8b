"""Run the HIL test file (tests/hil) against the MicroPython VM's REPL on a pty,
exactly as the bench runs it against a board's USB serial port (GUIDE recipe)."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from hub import micropython

pytestmark = pytest.mark.timeout(120)


def test_the_hil_suite_passes_against_the_vm_on_a_pty(tmp_path):
    if micropython.binary() is None or not shutil.which("socat"):
        pytest.skip("needs the MicroPython VM and socat")
    tty = tmp_path / "ttyV0"
    path = "\\:".join([".frozen", str(micropython.ROOT), str(micropython.FIRMWARE)])
    repl = "EXEC:env MICROPYPATH=%s %s,pty,raw,echo=0,stderr,setsid,ctty" % (
        path, micropython.binary(),
    )  # fmt: skip
    socat = subprocess.Popen(["socat", "PTY,link=%s,raw,echo=0" % tty, repl])
    try:
        for _ in range(100):
            if tty.exists():
                break
            time.sleep(0.05)
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "pytest_embedded", "tests/hil", "-m", "hil",
             "--embedded-services", "serial", "--port", str(tty), "-q", "-s",
             "-p", "no:cacheprovider"],
            cwd=micropython.ROOT, capture_output=True, text=True, timeout=100,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )  # fmt: skip
    finally:
        socat.kill()
        socat.wait()
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "4 passed" in out, out
    assert "HMAC tag on this board:" in out
