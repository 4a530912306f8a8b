"""`gridbid demo` end to end: batteries (the firmware on the MicroPython VM, with
simulated Modbus devices) and competing aggregators on CPython."""

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
        if proc.name.isdigit() and b"main.py" in cmdline and b"gridbid-demo-" in cmdline:
            pids.append(int(proc.name))
    return pids


def test_competition_pays_more_than_the_reserve_and_contracts_agree():
    result = demo("--devices", "3", "--aggregators", "3", "--rounds", "2", "--seed", "7")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    runtime = "MicroPython" if micropython.binary() else "CPython"
    assert out.count("(%s)" % runtime) == 3  # every battery says what it runs on
    assert "6 auctions, 6 sold" in out
    assert len(re.findall(r"won battery", out)) == 6
    assert out.count("accepted ") == 6 and out.count("auction closed: 3 bids") == 6
    assert "derived the same 6 contract ids" in out
    improvement = float(re.search(r"\(([+-][\d.]+)%\)", out).group(1))
    assert improvement > 0
    worst = int(re.search(r"max (\d+) ms \(deadline 500\)", out).group(1))
    assert worst < 500
    assert "Traceback" not in out and "CONFIG ERROR" not in out


def test_a_single_buyer_pays_the_reserve():
    result = demo("--devices", "2", "--aggregators", "1", "--rounds", "2", "--reserve", "13.5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "with 1 aggregator(s) bidding" in result.stdout
    assert "on average (+0.0%)" in result.stdout  # a lone buyer pays exactly the reserve
    reserves = [float(x) for x in re.findall(r"reserve ([\d.]+)\)", result.stdout)]
    assert reserves and min(reserves) >= 13.5  # the floor, raised by SoC (reserve.py)


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
