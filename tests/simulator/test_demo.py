"""`gridbid demo` end to end: batteries (the firmware on the MicroPython VM, with
simulated Modbus devices) and competing aggregators on CPython."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from simulator import vm


def demo(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "gridbid.cli", "demo", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def device_processes(parent, what=b"main.py"):
    """Pids of the batteries (what=b"main.py") or aggregators (b"aggregator") this demo
    (pid `parent`) started and that still run (their config lives in a gridbid-demo-
    dir): never another test's or another run's."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and what in cmdline and b"gridbid-demo-" in cmdline:
            pids.append(int(proc.name))
    return pids


def running(pids):
    return [pid for pid in pids if Path("/proc/%d" % pid).exists()]


def improvement(out):
    return float(re.search(r"the market paid ([+-][\d.]+)%", out).group(1))


def test_the_hub_trades_every_slot_and_competition_pays_more_than_the_reserve():
    result = demo("--devices", "3", "--aggregators", "3", "--slots", "2", "--seed", "7")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    runtime = "MicroPython" if vm.binary() else "CPython"
    assert out.count("(%s)" % runtime) == 3  # every battery says what it runs on
    cleared = re.findall(r"-> ([\d.]+) kWh at ([\d.]+) c/kWh; (\d+) contracts", out)
    assert len(cleared) == 2 and all(float(kwh) > 0 for kwh, _p, _n in cleared)
    made = sum(int(n) for _kwh, _p, n in cleared)
    assert made >= 3 and out.count("accepted ") == made  # each share accepted by its battery
    assert "batteries and hub hold the same %d contract ids" % made in out
    assert "contract states: CompletedSuccess %d" % made in out  # metered, reported, judged
    assert improvement(out) > 0
    # Every completed contract paid on the in-process chain, to the cent's ten-thousandth.
    settled = re.search(r"settled (\d+) contracts in \d+ batches: (\d+) transactions on "
                        r"LiteSVM, ([\d.]+) cents paid \((\d+) waiting\)", out)  # fmt: skip
    assert settled, out
    assert int(settled[1]) == made and int(settled[2]) >= 1 and int(settled[4]) == 0
    owners = [float(c) for c in re.findall(r"owner of battery \d+ received ([\d.]+) cents", out)]
    assert owners and abs(sum(owners) - float(settled[3])) < 1e-3 * len(owners)
    # Paid from the margin each aggregator deposited from its own wallet.
    margins = re.findall(r"(agg\d)'s margin: ([\d.]+) credits deposited, ([\d.]+) cents paid "
                         r"from it, ([\d.-]+) free", out)  # fmt: skip
    assert len(margins) == 3 and all(float(d) > 0 for _a, d, _p, _f in margins), out
    assert abs(sum(float(p) for _a, _d, p, _f in margins) - float(settled[3])) < 1e-3 * 3
    assert "Traceback" not in out and "CONFIG ERROR" not in out and "MISMATCH" not in out
    # Every line is the demo's: "who | what" (no library's log lines, e.g. pymodbus').
    lines = (result.stdout + result.stderr).splitlines()
    assert all(re.match(r"^[\w ]{9}\| ", x) for x in lines), [
        x for x in lines if not re.match(r"^[\w ]{9}\| ", x)
    ]


def test_one_utility_gets_less_than_competing_aggregators():
    alone = demo("--devices", "2", "--aggregators", "1", "--slots", "1", "--seed", "3")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert "aggregator utility: its own process" in alone.stdout
    assert "utility strategy" in alone.stdout
    competing = demo("--devices", "2", "--aggregators", "3", "--slots", "1", "--seed", "3")
    assert competing.returncode == 0, competing.stdout + competing.stderr
    assert improvement(alone.stdout) < improvement(competing.stdout)


def test_bad_arguments_are_refused_without_a_traceback():
    result = demo("--aggregators", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--aggregators" in result.stderr


def test_ctrl_c_stops_the_devices_and_aggregators_too():
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridbid.cli", "demo", "--slots", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if "hub      | slot " in line:
                break
        mine = device_processes(proc.pid)
        assert mine, "the demo battery should be running"
        aggregators = device_processes(proc.pid, b"aggregator")
        assert len(aggregators) == 3, "the demo's three aggregator processes should be running"
        mine += aggregators
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C does
        rest = proc.communicate(timeout=20)[0]
        assert proc.returncode == 130, rest
        assert "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 5
    while running(mine) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftover = running(mine)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover, "Ctrl-C left a battery or an aggregator running"
