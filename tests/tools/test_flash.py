"""tools/flash.py flash, upload, provision, verify.

upload, provision and verify run for real: real mpremote against the MicroPython
VM's REPL on a pty (tests/hil/virtual_board.py: the GUIDE's socat recipe), whose working
directory is the board's filesystem, so what lands on the "board" is read back
as files here. flash needs a board: it is tested with --dry-run, its error paths
(esptool itself finding no ESP32 on a pty), and the Pico W's UF2 copy into a
folder standing in for the RPI-RP2 drive (the copy is all the real flashing
does). The one stand-in: esptool's answer for a wrong chip (no ESP32-S3 here).
"""

import json
import re
import shutil
import stat
import struct
import subprocess
import sys

import config as firmware_config  # firmware/config.py (tests/conftest.py puts it on the path)
import pytest
from hil import virtual_board

from aggregator import identity
from hub.config import keys_file
from simulator import vm
from transport import secret_files

ROOT = vm.ROOT
sys.path.insert(0, str(ROOT / "tools"))
import flash  # noqa: E402  (tools/flash.py)
import flashing  # noqa: E402
from flashing import device, image  # noqa: E402

pytestmark = pytest.mark.timeout(120)
HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
DEVICE_ID = 1005
PASSWORD = "correct horse battery staple"


def cli(*args, cwd=None):
    """tools/flash.py as a user runs it. -> (exit code, stdout + stderr)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flash.py"), *map(str, args)],
        capture_output=True, text=True, timeout=90, cwd=cwd,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def run(capsys, *args):
    """tools/flash.py's main() in this process (fast, for the errors and dry runs)."""
    code = flash.main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out + out.err


def one_error(code, out, text):
    assert code == 2, out
    assert len(out.strip().splitlines()) == 1, out
    assert out.startswith("error: ") and text in out, out


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    if not virtual_board.available():
        pytest.skip("needs the MicroPython VM and socat")
    with virtual_board.VirtualBoard(tmp_path_factory.mktemp("vm")) as virtual:
        yield virtual


HUB_TOML = """\
[hub]
group_addr = "239.255.70.9"
group_port = 47410
device_port = 47411

[[aggregator]]
key_id = 1

[[aggregator]]
key_id = 2
strategy = "adaptive"
"""


@pytest.fixture
def site(tmp_path):
    """A hub's folder: hub.toml (two aggregators), a Wi-Fi password file."""
    (tmp_path / "hub.toml").write_text(HUB_TOML)
    (tmp_path / "wifi.txt").write_text(PASSWORD + "\n")
    return tmp_path


def provision_args(board, site, *more):
    return ["provision", "--port", board.port, "--hub-config", site / "hub.toml",
            "--device-id", DEVICE_ID, *more]  # fmt: skip


# --- upload, provision, verify against the VM ------------------------------------------------


def test_upload_copies_the_bundle_to_the_board(board, tmp_path):
    code, out = cli("upload", "--port", board.port, "--out", tmp_path)
    assert code == 0, out
    bundle = tmp_path / "unix"
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    assert "version.mpy" in {f.name for f in files} and len(files) > 20
    for name in files:  # byte for byte on the board's filesystem
        assert (board.flash / name).read_bytes() == (bundle / name).read_bytes(), name
    code, out = cli("verify", "--port", board.port)
    assert "firmware 0.1.0 on %s (this tree: 0.1.0)" % board.port in out
    assert code == 1 and "no config.json" in out, out  # not provisioned yet
    # The VM imports what was copied: the version module is the bundle's .mpy.
    where = subprocess.run(
        [flashing.tool("mpremote"), "connect", str(board.port), "resume", "exec",
         "import version; print(version.__file__)"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert where.stdout.strip() == "version.mpy", where


def test_provision_writes_the_config_and_never_prints_a_key(board, site):
    with open(site / "hub.toml", "a") as f:
        f.write("\n[coap]\nport = 5690\n")  # the hub serves CoAP: the battery is told where
    code, out = cli(*provision_args(board, site, "--wifi-ssid", "bench-net",
                                    "--wifi-password-file", site / "wifi.txt",
                                    "--hub-address", "192.168.1.20"))  # fmt: skip
    assert code == 0, out
    keys = json.loads((site / "hub-keys.json").read_text())
    assert not HEX_KEY.search(out), "a key was printed:\n" + out
    assert PASSWORD not in out and "bench-net" in out
    assert "[coap] bind is 127.0.0.1: set it to the hub's LAN address" in out  # the default
    local = site / ("battery-%d.json" % DEVICE_ID)
    hosted = [site / "aggregator-1.json", site / "aggregator-2.json"]  # hub.toml's two
    for path in (site / "hub-keys.json", local, *hosted):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    on_board = (board.flash / "config.json").read_bytes()
    assert on_board == local.read_bytes()
    assert not (board.flash / "config.json.tmp").exists()
    assert sorted(p.name for p in site.iterdir()) == sorted(
        ["hub.toml", "wifi.txt", "hub-keys.json", local.name, *(p.name for p in hosted)]
    )  # nothing left over here either
    assert sorted(keys) == ["group", "master"]  # the hub's own secrets, no battery's
    data = json.loads(on_board)
    cfg = firmware_config.check(dict(data), "config.json")  # the firmware boots it
    assert cfg["device_id"] == cfg["key_id"] == DEVICE_ID
    hub_keys = keys_file.load(site / "hub-keys.json")
    assert data["coap_key"] == hub_keys.coap_key(DEVICE_ID).hex()  # the hub derives it
    assert cfg["coap_key"].tag(b"x") == hub_keys.coap.get(DEVICE_ID).tag(b"x")
    assert cfg["group"] == keys["group"]
    # No aggregator's key: each enrolls the battery itself (the hub holds none of them).
    assert cfg["keys"] == {} and list(cfg["keyring"]) == [cfg["hub_id"]]  # the hub's only
    assert keys["master"] not in on_board.decode()
    assert "battery %d trusts no aggregator yet" % DEVICE_ID in out
    assert cfg["wifi"] == {"ssid": "bench-net", "password": PASSWORD}
    assert cfg["coap_hub"] == "192.168.1.20:5690"
    settings = (cfg["group_addr"], cfg["group_port"], cfg["tcp_port"])
    assert settings == ("239.255.70.9", 47410, 47411)  # the hub's, from its hub.toml
    assert (
        cfg["devices"]
        == json.loads((ROOT / "firmware" / "config.example.json").read_text())["devices"]
    )  # the template's
    assert "battery %d provisioned on %s" % (DEVICE_ID, board.port) in out

    code, out = cli("verify", "--port", board.port, "--hub-config", site / "hub.toml",
                    "--device-id", DEVICE_ID)  # fmt: skip
    assert code == 0, out
    assert re.search(r"config.json sha256 [0-9a-f]{16} \(matches ", out), out

    # The owner trusts aggregator 2 (its enrollment, as `gridbid device trust` adds it),
    # then provisions again: the same CoAP key (the hub and the board already share
    # it), the hub's keys unchanged, and the aggregator it trusts kept.
    me = identity.Identity(2, "acme", bytes(range(32)))
    pair = identity.enrollment(me, DEVICE_ID)["key"]
    secret_files.write(local, dict(json.loads(local.read_text()), keys={"2": pair}))
    code, out = cli(*provision_args(board, site, "--wifi-ssid", "bench-net",
                                    "--wifi-password-file", site / "wifi.txt",
                                    "--hub-address", "192.168.1.20"))  # fmt: skip
    assert code == 0 and "already complete" in out, out
    assert "its own settings kept" in out and "battery %d trusts aggregator 2" % DEVICE_ID in out
    assert not HEX_KEY.search(out)
    assert json.loads((site / "hub-keys.json").read_text()) == keys
    again = json.loads((board.flash / "config.json").read_text())
    assert again["coap_key"] == data["coap_key"] and again["keys"] == {"2": pair}
    held = firmware_config.check(dict(again))["keyring"].get(2)
    assert held.tag(b"x") == me.keyring().get(DEVICE_ID).tag(b"x")  # as aggregator 2 derives it

    # A config changed on the board is caught.
    (board.flash / "config.json").write_text(json.dumps({**again, "max_kw": 9.0}))
    code, out = cli("verify", "--port", board.port, "--config", local)
    assert code == 1 and "differs from" in out, out
    assert not HEX_KEY.search(out)


def test_a_dry_run_provision_changes_nothing(board, site, capsys):
    before = sorted(p.name for p in board.flash.iterdir())
    config = (board.flash / "config.json").read_bytes() if "config.json" in before else None
    with open(site / "hub.toml", "a") as f:
        f.write("\n[coap]\n")
    code, out = run(capsys, *provision_args(board, site, "--dry-run"))
    assert code == 0, out
    assert "note: hub.toml has [coap]: give --hub-address" in out
    assert (
        "would run: mpremote connect %s resume fs cp %s :config.json.tmp + exec "
        "'<install-config script>'" % (board.port, site / "battery-1005.json") in out
    )
    assert "would make the hub's master and group keys in %s" % (site / "hub-keys.json") in out
    assert "would write battery 1005's config to %s" % (site / "battery-1005.json") in out
    assert "would make hosted aggregator" in out  # hub.toml's two have no identity yet
    assert sorted(p.name for p in site.iterdir()) == ["hub.toml", "wifi.txt"]
    assert sorted(p.name for p in board.flash.iterdir()) == before
    if config is not None:
        assert (board.flash / "config.json").read_bytes() == config


# --- provision's errors ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["0", "-3", "4294967296", "abc", "1.5", ""])
def test_a_bad_device_id_is_one_line(bad, site, capsys):
    args = ["provision", "--port", "/dev/null", "--hub-config", site / "hub.toml",
            "--device-id", bad]  # fmt: skip
    code, out = run(capsys, *args)
    one_error(code, out, "--device-id must be a whole number 1..4294967295")
    assert not (site / "hub-keys.json").exists()


def test_provision_refuses_what_the_firmware_would_refuse(site, capsys):
    template = site / "no-devices.json"
    template.write_text('{"bind": "0.0.0.0"}')
    args = ["provision", "--port", "/dev/null", "--hub-config", site / "hub.toml",
            "--device-id", "7", "--template", template]  # fmt: skip
    code, out = run(capsys, *args)
    one_error(code, out, "the firmware would refuse this config: battery-7 config: devices")
    assert not (site / "hub-keys.json").exists()  # checked before any key is made


def test_a_wifi_board_needs_its_network_and_devices(site, capsys):
    args = ["provision", "--board", "esp32-devkitc", "--port", "/dev/null",
            "--hub-config", site / "hub.toml", "--device-id", "7"]  # fmt: skip
    one_error(*run(capsys, *args), "--template is needed for board esp32-devkitc")
    args += ["--template", ROOT / "hardware" / "bench" / "devices-rs485-esp32.json"]
    one_error(*run(capsys, *args), "board esp32-devkitc joins Wi-Fi: --wifi-ssid")
    one_error(*run(capsys, *args, "--wifi-ssid", "x"), "--wifi-password-file is needed")
    one_error(*run(capsys, *args, "--wifi-ssid", "x", "--wifi-password-file", site / "nope"),
              "cannot read the Wi-Fi password file")  # fmt: skip


@pytest.mark.parametrize("verb", ["upload", "provision", "verify"])
def test_a_missing_port_is_one_line(verb, site, tmp_path, capsys):
    extra = {"provision": ["--hub-config", site / "hub.toml", "--device-id", "7"],
             "upload": ["--out", tmp_path]}.get(verb, [])  # fmt: skip
    one_error(*run(capsys, verb, *extra), "--port is needed")
    code, out = run(capsys, verb, "--port", tmp_path / "ttyUSB9", *extra)
    one_error(code, out, "no serial port %s: is the board plugged in?" % (tmp_path / "ttyUSB9"))


def test_upload_dry_run_for_an_esp32_with_romfs(tmp_path, capsys):
    code, out = run(capsys, "upload", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB0",
                    "--romfs", "--out", tmp_path, "--dry-run")  # fmt: skip
    assert code == 0, out
    steps = [x[len("would run: ") :] for x in out.splitlines() if x.startswith("would run: ")]
    bundle = tmp_path / "esp32-devkitc"
    assert steps == [
        "mpremote connect /dev/ttyUSB0 romfs deploy %s.romfs" % bundle,
        "mpremote connect /dev/ttyUSB0 exec '<remove-stale-modules script>'",
        "mpremote connect /dev/ttyUSB0 fs cp -r %s %s :"
        % (bundle / "board.json", bundle / "main.py"),
    ]  # fmt: skip  (a board: soft reset first, no `resume`; the root is ":")
    one_error(*run(capsys, "upload", "--port", "/dev/null", "--romfs", "--out", tmp_path),
              "the unix port has no ROMFS partition")  # fmt: skip


def test_the_romfs_cleanup_removes_a_plain_uploads_modules(board):
    """The script upload --romfs runs on the board, run on the VM."""
    (board.flash / "old").mkdir(exist_ok=True)
    (board.flash / "old" / "x.mpy").write_bytes(b"M")
    (board.flash / "old.mpy").write_bytes(b"M")
    (board.flash / "keep.json").write_text("{}")
    script = device.ROMFS_CLEANUP % ["old", "old.mpy", "absent.mpy"]
    done = subprocess.run(
        device.mpremote(str(board.port), "unix", "exec", script),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (board.flash / "old").exists() and not (board.flash / "old.mpy").exists()
    assert (board.flash / "keep.json").exists()


@pytest.mark.parametrize("board", ["esp32-devkitc", "pico-w"])
def test_the_bench_templates_make_configs_the_firmware_accepts(board, site, capsys):
    name = {"esp32-devkitc": "devices-rs485-esp32.json", "pico-w": "devices-rs485-pico-w.json"}
    template = ROOT / "hardware" / "bench" / name[board]
    code, out = run(
        capsys,
        "provision",
        "--board",
        board,
        "--port",
        "/dev/ttyUSB0",
        "--hub-config",
        site / "hub.toml",
        "--device-id",
        "7",
        "--template",
        template,
        "--wifi-ssid",
        "x",
        "--wifi-password-file",
        site / "wifi.txt",
        "--dry-run",
    )
    assert code == 0, out  # the dry run checks the config with the firmware's config.check
    uarts = flashing.profile(board)["uarts"]
    for link in json.loads(template.read_text())["devices"].values():
        assert str(link["uart"]) in uarts  # the board profile has that UART's pins


# --- flash: ESP32 -------------------------------------------------------------------------


@pytest.fixture
def esp_image(tmp_path):
    path = tmp_path / "ESP32_GENERIC-v1.29.0.bin"
    path.write_bytes(bytes([image.ESP_IMAGE_MAGIC]) + bytes(4095))
    return path


def make_uf2(path, family, blocks=2):
    """A UF2 file as MicroPython's are: 512-byte blocks, each naming its family."""
    data = b""
    for n in range(blocks):
        head = struct.pack("<8I", 0x0A324655, 0x9E5D5157, 0x2000, 0x10000000 + 256 * n, 256, n,
                           blocks, family)  # fmt: skip
        data += head + bytes(476) + struct.pack("<I", 0x0AB16F30)
    path.write_bytes(data)
    return path


def test_flash_esp32_dry_run_prints_the_esptool_steps(esp_image, capsys):
    code, out = run(capsys, "flash", "--board", "esp32-devkitc", "--port", "/dev/ttyUSB0",
                    "--image", esp_image, "--dry-run")  # fmt: skip
    assert code == 0, out
    steps = [x[len("would run: ") :] for x in out.splitlines() if x.startswith("would run: ")]
    assert steps == [
        "esptool --port /dev/ttyUSB0 chip-id",
        "esptool --chip esp32 --port /dev/ttyUSB0 erase-flash",
        "esptool --chip esp32 --port /dev/ttyUSB0 --baud 460800 write-flash -z 0x1000 %s"
        % esp_image,
    ]


def test_flash_errors_are_one_line(esp_image, tmp_path, capsys):
    esp = ["flash", "--board", "esp32-devkitc"]
    one_error(*run(capsys, *esp, "--image", esp_image), "--port is needed")
    one_error(*run(capsys, *esp, "--port", tmp_path / "ttyUSB3", "--image", esp_image),
              "no serial port %s" % (tmp_path / "ttyUSB3"))  # fmt: skip
    one_error(*run(capsys, *esp, "--port", "/dev/null"), "--image is needed")
    one_error(*run(capsys, *esp, "--port", "/dev/null", "--image", tmp_path / "nope.bin"),
              "no image %s" % (tmp_path / "nope.bin"))  # fmt: skip
    uf2 = make_uf2(tmp_path / "RPI_PICO_W.uf2", 0xE48BFF56)
    one_error(*run(capsys, *esp, "--port", "/dev/null", "--image", uf2),
              "is a UF2 image (for the Pico W), not an ESP32 .bin")  # fmt: skip
    (tmp_path / "notes.txt").write_text("hello")
    one_error(*run(capsys, *esp, "--port", "/dev/null", "--image", tmp_path / "notes.txt"),
              "is not an ESP32 firmware image")  # fmt: skip
    one_error(*run(capsys, "flash", "--port", "/dev/null", "--image", esp_image),
              "board unix has nothing to flash")  # fmt: skip


def test_flash_esp32_when_no_esp32_answers(esp_image, tmp_path):
    """The real esptool on a pty where nothing answers (a board not in its bootloader, or
    the wrong port): one line naming the port and esptool's reason; nothing is erased."""
    if not shutil.which("socat"):
        pytest.skip("needs socat")
    port = tmp_path / "ttyUSB0"
    pair = subprocess.Popen(["socat", "pty,raw,echo=0,link=%s" % port,
                             "pty,raw,echo=0,link=%s" % (tmp_path / "silent")])  # fmt: skip
    try:
        for _ in range(100):
            if port.exists():
                break
            subprocess.run(["sleep", "0.02"])
        # esptool's own config file: one connection attempt instead of seven (~1 s, not ~6)
        (tmp_path / "esptool.cfg").write_text("[esptool]\nconnect_attempts = 1\n")
        code, out = cli("flash", "--board", "esp32-devkitc", "--port", port, "--image",
                        esp_image, cwd=tmp_path)  # fmt: skip
    finally:
        pair.kill()
        pair.wait()
    lines = out.strip().splitlines()
    assert code == 2, out
    assert lines[0] == "$ esptool --port %s chip-id" % port  # the one step that ran
    assert lines[-1].startswith("error: no ESP32 answered on %s: " % port), out
    assert "Failed to connect" in lines[-1] and len(lines) == 2, out


def test_flash_esp32_refuses_a_wrong_chip(esp_image, monkeypatch, capsys):
    """The stand-in: esptool 5.6's own words for an ESP32-S3 (esptool/__init__.py prints
    "Connected to {CHIP_NAME} on {port}:"), as no ESP32-S3 is here. Nothing else runs."""
    ran = []

    def esptool_says(plan, argv, what, stream=False, timeout=300):
        ran.append(argv[1:])
        return "Connecting....\nConnected to ESP32-S3 on /dev/ttyUSB0:\nChip type: ESP32-S3\n"

    monkeypatch.setattr(flashing.Plan, "run", esptool_says)
    code, out = run(capsys, "flash", "--board", "esp32-devkitc", "--port", "/dev/null",
                    "--image", esp_image)  # fmt: skip
    one_error(code, out, "wrong chip on /dev/null: found ESP32-S3, board esp32-devkitc is an ESP32")
    assert ran == [["--port", "/dev/null", "chip-id"]]
    assert image.chip_of("Detecting chip type... ESP32\nChip is ESP32-D0WD-V3") == "ESP32"


# --- flash: Pico W ----------------------------------------------------------------------------

INFO_UF2 = "UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n"


def test_flash_pico_copies_the_uf2_to_its_drive(tmp_path, capsys):
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text(INFO_UF2)
    (drive / "INDEX.HTM").write_text("<html></html>")
    uf2 = make_uf2(tmp_path / "RPI_PICO_W-v1.29.0.uf2", 0xE48BFF56, blocks=8)
    code, out = run(capsys, "flash", "--board", "pico-w", "--image", uf2, "--drive", drive)
    assert code == 0, out
    assert (drive / uf2.name).read_bytes() == uf2.read_bytes()
    assert "copy %s to %s" % (uf2, drive / uf2.name) in out


def test_flash_pico_dry_run_and_errors(tmp_path, capsys):
    uf2 = make_uf2(tmp_path / "RPI_PICO_W.uf2", 0xE48BFF56)
    pico = ["flash", "--board", "pico-w", "--image", uf2]
    code, out = run(capsys, *pico, "--port", "/dev/ttyACM0", "--dry-run")
    assert code == 0, out
    assert out.splitlines() == [
        "would run: mpremote connect /dev/ttyACM0 bootloader",
        "would copy %s to the RPI-RP2 drive once it mounts" % uf2,
    ]
    drive = tmp_path / "drive"
    drive.mkdir()
    one_error(*run(capsys, *pico, "--drive", drive), "is not a Pico's boot drive (no INFO_UF2.TXT)")
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v1.0\nBoard-ID: RP2350\n")
    one_error(*run(capsys, *pico, "--drive", drive), "wrong chip: the drive %s says" % drive)
    rp2350 = make_uf2(tmp_path / "RPI_PICO2_W.uf2", 0xE48BFF59)
    one_error(*run(capsys, "flash", "--board", "pico-w", "--image", rp2350, "--drive", drive),
              "wrong chip: %s is for RP2350" % rp2350)  # fmt: skip
    one_error(*run(capsys, "flash", "--board", "pico-w", "--image", tmp_path / "none.uf2"),
              "no image")  # fmt: skip
    bin_image = tmp_path / "fw.bin"
    bin_image.write_bytes(b"\xe9" + bytes(600))
    one_error(*run(capsys, "flash", "--board", "pico-w", "--image", bin_image, "--drive", drive),
              "is not a UF2 image")  # fmt: skip
    assert sorted(p.name for p in drive.iterdir()) == ["INFO_UF2.TXT"]  # nothing copied
