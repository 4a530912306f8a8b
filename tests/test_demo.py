"""`gridbid demo` end to end: a device on the MicroPython VM, aggregators on CPython."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hub import micropython


def demo(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", "demo", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def device_processes():
    """Pids of demo batteries still running (their config lives in a gridbid-demo- dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and b"demo_device.py" in cmdline and b"gridbid-demo-" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_competition_pays_more_than_the_reserve_and_contracts_agree():
    result = demo("--aggregators", "3", "--rounds", "3", "--seed", "7")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    runtime = "MicroPython" if micropython.binary() else "CPython"
    assert "(on %s)" % runtime in out
    assert len(re.findall(r"won at", out)) == 3
    assert out.count("-> accept") == 3 and out.count("-> reject") == 6
    assert "derived the same 3 contract ids" in out
    improvement = float(re.search(r"\(([+-][\d.]+)%\)", out).group(1))
    assert improvement > 0
    worst = int(re.search(r"max (\d+) ms \(deadline 500 ms\)", out).group(1))
    assert worst < 500
    assert "dropped" not in out  # nothing failed authentication on the way


def test_a_single_buyer_pays_the_reserve():
    result = demo("--aggregators", "1", "--rounds", "2", "--reserve", "13.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "13.50 c/kWh on average (+0.0%)" in result.stdout


def test_bad_arguments_are_refused_without_a_traceback():
    result = demo("--aggregators", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--aggregators" in result.stderr


def test_ctrl_c_stops_the_device_too():
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "demo", "--rounds", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if "round 2" in line:
                break
        assert device_processes(), "the demo battery should be running"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        rest = proc.communicate(timeout=20)[0]
        assert proc.returncode == 130, rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while device_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    leftover = device_processes()
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "Ctrl-C left the battery running"
