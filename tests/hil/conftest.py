"""The HIL bench: a board on a serial port, this machine as its hub and its devices.

Once per session, before any test opens the port (`dut` is per test), `bench`:
starts the simulated meter, BMS and inverter (`gridbid device sim`: Modbus TCP on
--hil-host, and RTU on --hil-rtu for an RS-485 bench), writes a hub.toml for a
fresh group and ports, uploads the firmware (`tools/flash.py upload`) and
provisions the board (`tools/flash.py provision`: the hub's keys file, its hosted
aggregators' identity files, the battery's config.json with its CoAP key, onto the
board). The owner's enrollment follows, as on a real site: each hosted aggregator
enrolls the battery (`gridbid aggregator enroll`), the owner trusts it (`gridbid
device trust`) and provisions again, which pushes the config with the aggregators'
pair keys. The hub (`gridbid hub run`) starts when a test first asks for it and
trades slot after slot until the session ends.

Options (hardware/HIL.md): --port (pytest-embedded's), --hil-board, --hil-host,
--hil-wifi-ssid, --hil-wifi-password-file, --hil-devices, --hil-rtu, --hil-slot-s,
--hil-device-id. In CI, tests/tools/test_hil_on_vm.py passes the VM's pty and --hil-board unix.
"""

import json
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from benchlib import ROOT, tool

from simulator.fleet import free_group_port

# The aggregators the hub hosts; each has its own identity file (provision makes it).
AGGREGATORS = (
    {"key_id": 1, "name": "value", "strategy": "value", "value": 22.0, "margin": 1.0},
    {"key_id": 2, "name": "adaptive", "strategy": "adaptive", "value": 23.0},
)


def pytest_addoption(parser):
    group = parser.getgroup("gridbid HIL bench (hardware/HIL.md)")
    group.addoption("--hil-board", default="unix", help="board profile: esp32-devkitc, "
                    "pico-w, or unix (the MicroPython VM on a pty; the default)")  # fmt: skip
    group.addoption("--hil-host", default="127.0.0.1",
                    help="this machine's address as the board sees it (its LAN address "
                    "on a Wi-Fi bench); the hub and the device simulator listen there")  # fmt: skip
    group.addoption("--hil-wifi-ssid", help="the bench's Wi-Fi network (Wi-Fi boards)")
    group.addoption("--hil-wifi-password-file", help="a file holding its password")
    group.addoption("--hil-devices", help="JSON file whose \"devices\" the board uses "
                    "(default: the simulator over Modbus TCP on --hil-host)")  # fmt: skip
    group.addoption("--hil-rtu", help="also serve the simulator as Modbus RTU on this port "
                    "(the bench's USB RS-485 adapter, e.g. /dev/ttyUSB1)")  # fmt: skip
    group.addoption("--hil-slot-s", type=int, default=5, help="market slot length (5)")
    group.addoption("--hil-device-id", type=int, default=4242, help="the battery's id (4242)")


def free_port(host, kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Process:
    """A subprocess whose output lines are kept as they come."""

    def __init__(self, *argv, cwd=ROOT):
        self.proc = subprocess.Popen(
            [sys.executable, *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self):
        return "\n".join(self.lines)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)


class Bench:
    def __init__(self, config, folder):
        get = config.getoption
        self.port = get("port")
        if not self.port:
            raise pytest.UsageError("the HIL tests need --port (the board's serial port)")
        self.board = get("hil_board")
        self.host = get("hil_host")
        self.device_id = get("hil_device_id")
        self.slot_s = get("hil_slot_s")
        self.folder = folder
        self.hub_toml = folder / "hub.toml"
        self.store = folder / "hub.sqlite"
        self.outputs = {}  # tools/flash.py verb -> its output
        self._hub = None
        self.sim = None
        self._get = get

    def setup(self):
        get = self._get
        sim_port = free_port(self.host)
        sim = ["-m", "gridbid.cli", "device", "sim", "--host", self.host, "--tcp-port", sim_port,
               "--every", 3600]  # fmt: skip
        if get("hil_rtu"):
            sim += ["--rtu", get("hil_rtu")]
        self.sim = Process(*sim)
        self.write_hub_toml()
        template = self.folder / "template.json"
        devices = self.devices(get("hil_devices"), sim_port)
        # Fast beats for seconds-long slots; 90 % delivered counts as a success there.
        template.write_text(json.dumps({"devices": devices, "poll_ms": 200, "tick_ms": 200,
                                        "success_share": 0.9, "heap_report_s": 5}))  # fmt: skip
        self.wait_for_sim(sim_port)
        code, out = tool("upload", "--board", self.board, "--port", self.port,
                         "--out", self.folder / "build")  # fmt: skip
        self.outputs["upload"] = out
        assert code == 0, "upload failed:\n" + out
        wifi = []
        if get("hil_wifi_ssid"):
            wifi = ["--wifi-ssid", get("hil_wifi_ssid"),
                    "--wifi-password-file", get("hil_wifi_password_file") or ""]  # fmt: skip
        self.provision_args = ["provision", "--board", self.board, "--port", self.port,
                               "--hub-config", self.hub_toml, "--device-id", self.device_id,
                               "--template", template, *wifi]  # fmt: skip
        code, out = tool(*self.provision_args)
        self.outputs["provision"] = out
        assert code == 0, "provision failed:\n" + out
        self.enroll()
        code, out = tool(*self.provision_args)  # pushes the config with the trusted keys
        self.outputs["provision"] += out
        assert code == 0, "provision (after enrollment) failed:\n" + out

    def enroll(self):
        """Each hosted aggregator enrolls the battery, and its owner trusts it (the
        enrollment files move out of band on a real site; here they stay in the folder)."""
        folder = self.folder
        config = folder / ("battery-%d.json" % self.device_id)
        for agg in AGGREGATORS:
            key_id = agg["key_id"]
            steps = (
                ("aggregator", "enroll", "--identity", folder / ("aggregator-%d.json" % key_id),
                 "--battery", self.device_id, "--out", folder),
                ("device", "trust", "--config", config,
                 folder / ("enroll-%d-%d.json" % (key_id, self.device_id))),
            )  # fmt: skip
            for argv in steps:
                done = subprocess.run([sys.executable, "-m", "gridbid.cli", *map(str, argv)],
                                      cwd=ROOT, capture_output=True, text=True,
                                      timeout=60)  # fmt: skip
                out = done.stdout + done.stderr
                self.outputs["enroll"] = self.outputs.get("enroll", "") + out
                assert done.returncode == 0, "gridbid %s failed:\n%s" % (" ".join(argv[:2]), out)

    def write_hub_toml(self):
        slot_s = self.slot_s
        hub = {
            "name": "hil", "store": "hub.sqlite", "keys_file": "hub-keys.json",
            "group_addr": "239.255.71.%d" % random.randint(2, 250),
            "group_port": free_group_port(), "interface": self.host,
            "device_port": free_port(self.host), "slot_s": slot_s, "gate_s": slot_s // 2 + 1,
            "discovery_s": 0.5, "answer_s": 1.0, "bind_timeout_s": 0.8,
        }  # fmt: skip
        lines = ["[hub]"] + ["%s = %s" % (k, json.dumps(v)) for k, v in hub.items()]
        for agg in AGGREGATORS:  # identity files: aggregator-<id>.json beside hub.toml
            lines += ["", "[[aggregator]]"]
            lines += ["%s = %s" % (k, json.dumps(v)) for k, v in agg.items()]
        self.hub_toml.write_text("\n".join(lines) + "\n")

    def devices(self, path, sim_port):
        if path:
            return json.loads(Path(path).read_text())["devices"]
        link = {"link": "tcp", "host": self.host, "port": sim_port}
        maps = {"meter": "eastron_sdm120", "battery": "sunspec_battery_802",
                "inverter": "sunspec_der_704"}  # fmt: skip
        return {role: {**link, "unit": unit, "map": maps[role]}
                for unit, role in enumerate(("meter", "battery", "inverter"), 1)}  # fmt: skip

    def wait_for_sim(self, port, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, port), timeout=0.5).close()
                return
            except OSError:
                if self.sim.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise AssertionError("the device simulator did not start:\n" + self.sim.output)

    def hub(self):
        """The hub, trading slot after slot (started on first use)."""
        if self._hub is None:
            self._hub = Process("-m", "gridbid.cli", "hub", "run", "--config", self.hub_toml)
        assert self._hub.proc.poll() is None, "the hub stopped:\n" + self._hub.output
        return self._hub

    def contracts(self):
        """{contract id: (state, slot)} of this battery in the hub's store (read only)."""
        if not self.store.exists():
            return {}
        conn = sqlite3.connect("file:%s?mode=ro" % self.store, uri=True, timeout=5)
        try:
            rows = conn.execute("SELECT id, state, slot FROM contracts WHERE device = ?",
                                (self.device_id,)).fetchall()  # fmt: skip
        except sqlite3.OperationalError:  # not made yet
            return {}
        finally:
            conn.close()
        return {cid: (state, slot) for cid, state, slot in rows}

    def close(self):
        for process in (self._hub, self.sim):
            if process is not None:
                process.stop()


@pytest.fixture(scope="session")
def bench(request, tmp_path_factory):
    made = Bench(request.config, tmp_path_factory.mktemp("bench"))
    try:
        made.setup()
        yield made
    finally:
        made.close()
