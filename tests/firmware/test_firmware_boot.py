"""Booting the firmware as a user does: `gridbid device sim` and `gridbid device run`,
and a torn config.json, which must give safe idle and never a crash loop."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.processes import read_until, stop

from simulator.fleet import free_port
from simulator.vm import ROOT

CPYTHON_ONLY = "starts the firmware on the VM as a subprocess"

pytestmark = pytest.mark.timeout(120)


def config_for(tmp_path, sim_port):
    link = {"link": "tcp", "host": "127.0.0.1", "port": sim_port}
    maps = {"meter": ("eastron_sdm120", 1), "battery": ("sunspec_battery_802", 2),
            "inverter": ("sunspec_der_704", 3)}  # fmt: skip
    return {
        "device_id": 7001, "key_id": 7001, "keys": {"1": os.urandom(32).hex()},
        "group": os.urandom(32).hex(), "coap_key": os.urandom(32).hex(),
        "bind": "127.0.0.60", "tcp_port": free_port(), "group_port": free_port(),
        "data_dir": str(tmp_path / "data"),
        "devices": {r: {**link, "map": m, "unit": u} for r, (m, u) in maps.items()},
    }  # fmt: skip


def start(*args, cwd=None):
    return subprocess.Popen(
        [sys.executable, "-m", "gridbid.cli", *args], stdout=subprocess.PIPE, cwd=cwd,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_sim_and_device_run_from_the_cli_and_stop_on_ctrl_c(tmp_path):
    sim_port = free_port()
    sim = start("device", "sim", "--tcp-port", str(sim_port))
    device = None
    try:
        read_until(sim, str(sim_port), 20)
        path = tmp_path / "config.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(config_for(tmp_path, sim_port)))
        device = start("device", "run", "--board", "unix", "--config", str(path))
        lines = read_until(device, "ready on", 20)
        assert any("contracts: 0 live" in line for line in lines)
        assert stop(device) in (130, -signal.SIGINT)
        rest = device.stdout.read() or ""
        assert "Traceback" not in rest
    finally:
        if device is not None:
            stop(device)
        stop(sim)


def test_a_torn_config_gives_safe_idle_then_starts_once_fixed(tmp_path):
    sim_port = free_port()
    sim = start("device", "sim", "--tcp-port", str(sim_port))
    device = None
    try:
        read_until(sim, str(sim_port), 20)
        good = json.dumps(config_for(tmp_path, sim_port))
        path = tmp_path / "config.json"
        path.write_text(good[: len(good) // 2])  # the write a power cut interrupted
        device = start("device", "run", "--config", str(path))
        lines = read_until(device, "safe idle", 15)
        assert any("CONFIG ERROR" in line and "not valid JSON" in line for line in lines)
        time.sleep(1.5)
        assert device.poll() is None, "safe idle, not a crash loop"
        path.write_text(good)
        lines += read_until(device, "ready on", 15)  # picked up on the next retry, no reboot
        cfg = json.loads(good)
        for secret in (cfg["keys"]["1"], cfg["group"], cfg["coap_key"]):
            assert secret not in "\n".join(lines)  # no key logged
    finally:
        if device is not None:
            stop(device)
        stop(sim)


def running_with(argument):
    """Processes whose command line holds argument (/proc: no ps needed)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if argument.encode() in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return found


def test_relative_paths_are_the_users_and_sigterm_stops_the_vm(tmp_path):
    """--config is found from where the user is, data_dir from the config's folder (as
    on a board); a service manager's SIGTERM to `gridbid device run` stops the VM too."""
    sim_port = free_port()
    sim = start("device", "sim", "--tcp-port", str(sim_port))
    device = None
    try:
        read_until(sim, str(sim_port), 20)
        site = tmp_path / "site"
        site.mkdir()
        cfg = {**config_for(tmp_path, sim_port), "data_dir": "flash"}
        (site / "battery.json").write_text(json.dumps(cfg))
        device = start("device", "run", "--config", "site/battery.json", cwd=tmp_path)
        read_until(device, "ready on", 20)
        assert (site / "flash").is_dir(), "data_dir is taken from the config's folder"
        vm = running_with(str(site / "battery.json"))
        assert vm, "the VM runs with the config's absolute path"
        device.send_signal(signal.SIGTERM)  # the wrapper only, as systemd's first signal
        device.wait(10)
        deadline = time.monotonic() + 10
        while running_with(str(site / "battery.json")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not running_with(str(site / "battery.json")), "the VM outlived its wrapper"
    finally:
        if device is not None:
            stop(device)
        for pid in running_with(str(tmp_path / "site" / "battery.json")):
            os.kill(pid, signal.SIGKILL)
        stop(sim)
