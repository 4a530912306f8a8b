"""A socat pty pair: two linked serial ports with no wire, for Modbus RTU tests."""

import shutil
import subprocess
import time

import pytest


@pytest.fixture
def pty_pair(tmp_path):
    """(path A, path B): what one side writes, the other reads."""
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (apt-get install socat)")
    a, b = tmp_path / "ttyA", tmp_path / "ttyB"
    socat = subprocess.Popen(
        ["socat", "pty,raw,echo=0,link=%s" % a, "pty,raw,echo=0,link=%s" % b],
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        if a.exists() and b.exists():
            break
        time.sleep(0.02)
    yield str(a), str(b)
    socat.terminate()
    socat.wait(5)
