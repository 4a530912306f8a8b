"""`gridbid device scan` against the device simulator: over Modbus TCP and RTU (a socat
pty pair), a SunSpec device at any base and order, a device without SunSpec (the
register probe), and the error lines for an unreachable host, a silent unit and bad
arguments."""

import argparse
import asyncio
import io
import os
import subprocess
import sys
import time

from helpers import serial_pty
from helpers.processes import read_until, started, stop

from gridbid import device_scan
from simulator import devicesim, vm
from simulator.fleet import free_port

pty_pair = serial_pty.pty_pair  # the fixture, used by name


def gridbid(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "gridbid.cli", "device", "scan", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=vm.ROOT,
                          env={**os.environ, "PYTHONPATH": str(vm.ROOT)})  # fmt: skip


def scan_args(**kwargs):
    defaults = {"host": None, "serial": None, "port": 502, "baud": 9600, "unit": 2,
                "timeout": 0.3, "probe_to": 200}  # fmt: skip
    return argparse.Namespace(**{**defaults, **kwargs})


def scan_in_process(layouts=None, rtu=None, **kwargs):
    """Serve a simulation and scan one of its units in the same event loop:
    (exit code, stdout, stderr)."""

    async def run():
        sim = devicesim.Simulation(layouts=layouts)
        await sim.start(tcp_port=None if rtu else 0, rtu_port=rtu and rtu[1])
        out, err = io.StringIO(), io.StringIO()
        try:
            if rtu:
                args = scan_args(serial=rtu[0], **kwargs)
            else:
                args = scan_args(host="127.0.0.1", port=sim.tcp_port, **kwargs)
            code = await device_scan.scan(args, out, err)
        finally:
            await sim.stop()
        return code, out.getvalue(), err.getvalue()

    return asyncio.run(run())


def test_lists_the_sunspec_models_at_any_base_and_order():
    layouts = {"battery": {"base": 0, "order": [803, 1, 802]}}
    code, out, _ = scan_in_process(layouts=layouts, unit=2)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("SunSpec at base 0 (unit 2 on 127.0.0.1:") and "3 models" in lines[0]
    assert lines[1].split() == ["model", "803", "Lithium-Ion", "Battery", "Bank", "start", "2",
                                "length", "26"]  # fmt: skip
    assert lines[2].split() == ["model", "1", "Common", "start", "30", "length", "66"]
    assert lines[3].split() == ["model", "802", "Battery", "Base", "start", "98", "length", "62"]
    assert lines[4].split() == ["end", "marker", "at", "162"]
    code, out, _ = scan_in_process(layouts={"inverter": {"base": 50000}}, unit=3)
    assert code == 0 and "SunSpec at base 50000" in out
    assert [line.split()[1] for line in out.splitlines()[1:-1]] == ["1", "701", "702", "704"]


def test_a_device_without_sunspec_gets_a_bounded_register_probe():
    code, out, err = scan_in_process(unit=1, probe_to=200)  # the Eastron meter
    assert code == 0, out + err
    assert out.startswith("not SunSpec (no SunSpec marker 'SunS' at 0, 40000 or 50000)")
    # The meter serves registers 0-37 and 70-79 (eastron_sdm120's points): a read of 100
    # is refused, then tens, then one by one where a range ends.
    assert "holding registers (function 3) answering: 0-37, 70-79" in out
    assert "input registers (function 4) answering: 0-37, 70-79" in out
    assert "probing holding registers: 200 of 200" in err  # progress, on stderr


def test_a_silent_device_is_one_error_line():
    """A gateway that takes the connection and never answers (a dead unit behind it)."""

    async def run():
        async def swallow(reader, writer):
            await reader.read()  # until the scan hangs up

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        out, err = io.StringIO(), io.StringIO()
        try:
            args = scan_args(host="127.0.0.1", port=port, unit=2, timeout=0.2)
            started = time.monotonic()
            code = await device_scan.scan(args, out, err)
            return code, out.getvalue(), err.getvalue(), time.monotonic() - started, port
        finally:
            server.close()

    code, out, err, took, port = asyncio.run(run())
    assert code == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: no answer from unit 2 on 127.0.0.1:%d: " % port)
    assert "no reply within 200 ms" in err and took < 3  # one timeout per base, then says so


def test_scans_over_rtu_on_a_pty(pty_pair):
    code, out, err = scan_in_process(rtu=pty_pair, unit=3, timeout=1.0)
    assert code == 0, out + err
    assert out.startswith("SunSpec at base 40000 (unit 3 on %s at 9600 baud)" % pty_pair[0])
    assert "model   704  DER AC Controls" in out


def test_the_command_line_and_its_error_lines():
    sim_port = free_port()
    sim = started("device", "sim", "--tcp-port", sim_port)
    try:
        read_until(sim, str(sim_port), 20)
        done = gridbid("--host", "127.0.0.1", "--port", str(sim_port), "--unit", "2")
        assert done.returncode == 0 and "SunSpec at base 40000" in done.stdout, done.stderr
        assert "model   802  Battery Base" in done.stdout
        other = gridbid("--host", "127.0.0.1", "--port", str(sim_port), "--unit", "9",
                        "--probe-to", "100")  # fmt: skip
    finally:
        stop(sim)
    # pymodbus refuses a unit it does not serve (an exception response): nothing answers
    assert (
        other.returncode == 1 and "holding registers (function 3) answering: none" in other.stdout
    )
    assert other.stderr.splitlines()[-1] == (
        "error: no register of unit 9 on 127.0.0.1:%d answers below 100" % sim_port
    )
    refused = gridbid("--host", "127.0.0.1", "--port", str(free_port()), "--unit", "1")
    assert refused.returncode == 1 and "error: no answer from unit 1" in refused.stderr
    assert "link" in refused.stderr and len(refused.stderr.splitlines()) == 1
    bad = gridbid("--host", "127.0.0.1", "--unit", "300")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --unit must be 1..247, not 300"
    both = gridbid("--host", "127.0.0.1", "--serial", "/dev/null", "--unit", "1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    missing = gridbid("--serial", "/nonexistent/tty", "--unit", "1")
    assert missing.returncode == 2 and missing.stderr.startswith("error: /nonexistent/tty: ")
