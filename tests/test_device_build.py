"""The compiled device bundle (tools/flash.py build) runs on the MicroPython VM."""

import subprocess
import sys

import pytest

from hub import micropython

ROOT = micropython.ROOT


def test_portable_suite_passes_against_the_compiled_bundle(tmp_path):
    if micropython.binary() is None:
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
    env = {"MICROPYPATH": ":".join([".frozen", str(bundle), str(ROOT / "tests" / "portable")])}
    for module in sorted(p.stem for p in (ROOT / "tests" / "portable").glob("test_*.py")):
        result = subprocess.run(
            [micropython.binary(), "-X", "heapsize=100k", str(ROOT / "tests" / "mprun.py"), module],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0 and " 0 failed" in result.stdout, result.stdout
    where = subprocess.run(
        [micropython.binary(), "-c", "from protocol import frame; print(frame.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert where.stdout.strip() == str(bundle / "protocol" / "frame.mpy"), where.stdout


def test_build_refuses_an_unknown_board(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "flash.py"), "build", "--board", "atari"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "invalid choice" in result.stderr
