"""Battery controllers on this machine: firmware processes on the MicroPython VM
(CPython where there is no VM build), each with its own simulated meter, BMS and
inverter (simulator.devicesim) over Modbus TCP or RTU on a socat pty pair, its own
loopback address (127.0.0.20 + n), and a private multicast group with fresh keys.
The demo, the integration tests and bench/firmware_auction.py run devices this way."""

import asyncio
import json
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path

from protocol import pairing
from simulator import devicesim, vm
from simulator.peer import Aggregator
from transport import secret_files

UNIX_BOARD = vm.ROOT / "hardware" / "boards" / "unix.json"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_group_port():
    """A UDP port for a multicast group, below the kernel's ephemeral range (32768+): a
    port from that range may later be handed to some socket's send-only bind, which
    (without SO_REUSEADDR) would then keep every group member out of it."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port in 20000-32000 for a multicast group")


class DeviceUnderTest:
    def __init__(self, fleet, device_id, address, sim, config_path, data_dir):
        self.fleet = fleet
        self.device_id = device_id
        self.address = address
        self.sim = sim
        self.config_path = config_path
        self.data_dir = data_dir
        self.process = None
        self.lines = []  # everything the firmware printed, across restarts
        self._reader = None

    async def start(self, timeout=20.0, ready="ready on"):
        """Start the firmware and wait until it prints `ready` (None: do not wait)."""
        bundle = self.fleet.bundle
        mark = len(self.lines)  # after a restart, only this run's lines count
        argv, env, self.runtime = vm.command(
            (bundle or vm.FIRMWARE) / "main.py", str(self.fleet.board), str(self.config_path),
            heap=self.fleet.heap, device_root=bundle, cpython=self.fleet.cpython,
            romfs=self.fleet.romfs,
        )  # fmt: skip
        self.process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=vm.ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True,  # Ctrl-C is ours to handle
        )  # fmt: skip
        self._reader = asyncio.create_task(self._collect(self.process))
        if ready:
            await self.wait_for(ready, timeout, after=mark)

    async def _collect(self, process):
        async for line in process.stdout:
            self.lines.append(line.decode(errors="replace").rstrip())

    async def wait_for(self, text, timeout=10.0, after=0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if text in line:
                    return line
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.02)
        raise AssertionError(
            "device %d never printed %r; its output:\n%s"
            % (self.device_id, text, "\n".join(self.lines[-40:]))
        )

    async def kill(self):
        """SIGKILL: the process dies where it stands (the flash survives, as on a board)."""
        if self.process and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)

    def peak_heap(self):
        """The largest live heap (after a collection) the firmware reported."""
        used = [
            int(m.group(1)) for m in map(re.compile(r"heap: used (\d+)").search, self.lines) if m
        ]
        return max(used) if used else None


class Fleet:
    """Devices, the group, and the secrets of the parties around them: each aggregator's
    master secret (a battery is given its pair key with each: enrollment) and the hub's
    (a battery's CoAP key). Files for a hub and hosted aggregators: hub_keys(), identity()."""

    def __init__(
        self, tmp, aggregators=(1, 2), heap="256k", bundle=None, cpython=False, romfs=None,
        first_id=1001, masters=None, board=UNIX_BOARD, **settings,
    ):  # fmt: skip
        self.tmp = Path(tmp)
        self.board = board  # the board profile the devices run with
        self.heap = heap
        self.bundle = bundle  # run the built .mpy bundle (tools/flash.py build), as a board does
        self.romfs = romfs  # ... with its modules in this ROMFS image (build --romfs)
        self.cpython = cpython  # run the firmware on CPython, as on a Raspberry Pi
        self.settings = settings
        self.group_addr = "239.255.70.%d" % random.randint(2, 250)
        self.group_port = free_group_port()
        self.tcp_port = free_port()
        self.group_key = os.urandom(32)
        # The aggregators' own master secrets (another fleet's: the same aggregators in
        # another market); the batteries' ids from first_id (unique across fleets).
        self.masters = masters or {agg: os.urandom(32) for agg in aggregators}
        self.first_id = first_id
        self.hub_master = os.urandom(32)
        self.devices = []
        self._socats = []
        self._aggs = []

    async def add(self, rtu=False, sim_settings=None, **settings):
        index = len(self.devices)
        device_id = self.first_id + index
        address = "127.0.0.%d" % (20 + index)
        sim = devicesim.Simulation(**(sim_settings or {}))
        maps = sim.maps  # a site's three maps (sim_settings' "maps", else the SunSpec ones)
        sim_port = free_port()
        link = {"link": "tcp", "host": "127.0.0.1", "port": sim_port}
        rtu_path = None
        if rtu:
            ours, theirs = await self._pty_pair(index)
            link, rtu_path = {"link": "rtu", "path": str(ours), "baud": 19200}, str(theirs)
        await sim.start(tcp_port=sim_port, rtu_port=rtu_path, baudrate=19200)
        keys = {str(agg): pairing.derive(m, pairing.LABEL_ETP, device_id).hex()
                for agg, m in self.masters.items()}  # fmt: skip
        folder = self.tmp / ("device%d" % device_id)
        folder.mkdir(parents=True)
        cfg = {
            "device_id": device_id, "key_id": device_id, "keys": keys,
            "group": self.group_key.hex(),
            "coap_key": pairing.derive(self.hub_master, pairing.LABEL_COAP, device_id).hex(),
            "hub_key": pairing.derive(self.hub_master, pairing.LABEL_ETP, device_id).hex(),
            "hub_status_s": 1,
            "bind": address, "tcp_port": self.tcp_port,
            "group_addr": self.group_addr, "group_port": self.group_port,
            "data_dir": str(folder / "data"), "slot_s": 10, "gate_s": 2,
            "devices": {
                role: {**link, "map": maps[role]["name"], "unit": unit}
                for role, unit in sim.units.items()
            },
            "heap_report_s": 2,
        }  # fmt: skip
        if self.romfs:
            cfg["registers_dir"] = "/rom/registers"
        elif self.bundle:
            cfg["registers_dir"] = str(self.bundle / "registers")
        cfg.update(self.settings)
        cfg.update(settings)
        (folder / "data").mkdir()
        path = folder / "config.json"
        path.touch(mode=0o600)
        path.write_text(json.dumps(cfg))
        device = DeviceUnderTest(self, device_id, address, sim, path, folder / "data")
        self.devices.append(device)
        return device

    async def _pty_pair(self, index):
        if not shutil.which("socat"):
            raise RuntimeError("socat is needed for RTU over a pty (./dev.sh setup installs it)")
        ours, theirs = self.tmp / ("ttyDevice%d" % index), self.tmp / ("ttySim%d" % index)
        process = await asyncio.create_subprocess_exec(
            "socat", "pty,raw,echo=0,link=%s" % ours, "pty,raw,echo=0,link=%s" % theirs,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self._socats.append(process)
        for _ in range(100):
            if ours.exists() and theirs.exists():
                return ours, theirs
            await asyncio.sleep(0.02)
        raise RuntimeError("socat made no pty pair")

    def hub_keys(self, path):
        """The hub's keys file (hub/config/keys_file.py) for this fleet, 0600."""
        secret_files.write(path, {"master": self.hub_master.hex(), "group": self.group_key.hex()})
        return path

    def identity(self, path, key_id, name=None):
        """Aggregator key_id's identity file (aggregator/identity.py), 0600."""
        secret_files.write(path, {"id": key_id, "name": name or "agg%d" % key_id,
                                  "master": self.masters[key_id].hex()})  # fmt: skip
        return path

    async def aggregator(self, key_id):
        keyring = pairing.DerivedKeyring(self.masters[key_id], pairing.LABEL_ETP, self.group_key)
        agg = Aggregator(key_id, keyring, self.group_addr, self.group_port)
        await agg.join()
        self._aggs.append(agg)
        return agg

    async def close(self):
        for agg in self._aggs:
            await agg.close()
        for device in self.devices:
            await device.kill()
            await device.sim.stop()
        for process in self._socats:
            if process.returncode is None:
                process.kill()
                await process.wait()
