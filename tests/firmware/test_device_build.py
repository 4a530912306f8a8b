"""The compiled device bundle (tools/flash.py build, and --romfs) runs on the MicroPython VM."""

import json
import os
import re
import subprocess
import sys

import pytest

from simulator import vm

CPYTHON_ONLY = "builds the bundle and runs it on the VM"

ROOT = vm.ROOT
RUNNER = ROOT / "tests" / "portable"  # mprun.py and checks.py
# the portable tests' folders, and the runner's (tests/conftest.py)
PORTABLE = (RUNNER, ROOT / "tests" / "protocol", ROOT / "tests" / "firmware")


def portable_modules():
    """The portable test modules (tests/conftest.py): those that run on the VM."""
    return sorted(
        p.stem for folder in PORTABLE[1:] for p in folder.glob("test_*.py")
        if "\nCPYTHON_ONLY = " not in p.read_text()
    )  # fmt: skip


def test_portable_suite_passes_against_the_compiled_bundle(tmp_path):
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine")
    build = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flash.py"), "build", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    bundle = tmp_path / "unix"
    assert (bundle / "protocol" / "frame.mpy").exists()
    sources = [p.name for p in bundle.rglob("*.py")]
    assert sources == ["main.py"], "only boot.py and main.py stay source: %s" % sources
    # The tests import protocol from the .mpy files only: the source tree is not on the path.
    env = {"MICROPYPATH": ":".join([".frozen", str(bundle), *map(str, PORTABLE)])}
    for module in portable_modules():
        result = subprocess.run(
            [vm.binary(), "-X", "heapsize=100k", str(RUNNER / "mprun.py"), module],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0 and " 0 failed" in result.stdout, result.stdout
    where = subprocess.run(
        [vm.binary(), "-c", "from protocol import frame; print(frame.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.strip() == str(bundle / "protocol" / "frame.mpy"), where.stdout
    # The version `tools/flash.py verify` reads back from a board is the bundle's.
    version = subprocess.run(
        [vm.binary(), "-c", "import version; print(version.VERSION, version.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    ours = re.search(r'VERSION = "(.+)"', (ROOT / "firmware" / "version.py").read_text())[1]
    assert version.stdout.split() == [ours, str(bundle / "version.mpy")], version.stdout


def test_build_refuses_an_unknown_board(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flash.py"), "build", "--board", "atari"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "invalid choice" in result.stderr


def build_romfs(tmp_path):
    build = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flash.py"), "build", "--out", str(tmp_path),
         "--romfs"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    return tmp_path / "unix", tmp_path / "unix.romfs"


def test_romfs_build_is_the_image_mpremote_makes_and_deploys(tmp_path):
    """build --romfs: the modules and maps in the image, main.py and board.json on the
    filesystem; byte for byte what `mpremote romfs build` makes of the same files."""
    import contextlib
    import io

    from mpremote.romfs import make_romfs  # the pinned mpremote (pyproject.toml [dev])

    folder, image = build_romfs(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["board.json", "main.py"]
    assert json.loads((folder / "board.json").read_text())["registers_dir"] == "/rom/registers"
    plain = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flash.py"), "build", "--out", str(tmp_path / "p")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    staged = tmp_path / "p" / "unix"
    for name in ("main.py", "board.json"):
        (staged / name).unlink()
    with contextlib.redirect_stdout(io.StringIO()):  # it prints the tree
        expected = make_romfs(str(staged), mpy_cross=False)
    data = image.read_bytes()
    assert data[:3] == b"\xd2\xcd\x31" and data == expected


# Mounts the image the way firmware/main.py does (tools/romvm.py says where it is).
_ROM_MOUNT = (
    "import os, sys, uctypes, vfs\n"
    "a, n = os.getenv('GRIDBID_ROMFS').split(':')\n"
    "vfs.mount(vfs.VfsRom(uctypes.bytearray_at(int(a, 16), int(n))), '/rom')\n"
    "sys.path.append('/rom')\n"
)


def test_portable_suite_passes_from_the_romfs_image(tmp_path):
    """The portable tests, with protocol/ and firmware/ imported from the image mapped
    outside the heap (tools/romvm.py), at an ESP32's heap."""
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine")
    _folder, image = build_romfs(tmp_path)
    # Nothing of the source tree or the bundle on the path: only the image has the modules.
    path = [".frozen", *map(str, PORTABLE)]  # mprun, checks, the tests
    env = {**os.environ, "MICROPYPATH": ":".join(path)}

    def on_rom(code):
        return subprocess.run(
            [sys.executable, str(ROOT / "tools" / "romvm.py"), str(image), "-X", "heapsize=100k",
             "-c", _ROM_MOUNT + code],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip

    for module in portable_modules():
        result = on_rom("sys.argv[:] = ['mprun', %r]\nimport mprun\n" % module)
        assert result.returncode == 0 and " 0 failed" in result.stdout, result.stdout
    where = on_rom("from protocol import frame; print(frame.__file__)")
    assert where.stdout.strip() == "/rom/protocol/frame.mpy", where.stdout + where.stderr
