"""Shared fixtures, and the MicroPython VM runner for the portable tests.

tests/ mirrors the source: tests/protocol/, tests/firmware/, tests/transport/,
tests/hub/ (config/, market/, store/, integrations/), tests/aggregator/,
tests/simulator/, tests/gridbid/ (the CLI), tests/tools/, tests/deploy/.

protocol/ and firmware/ run on MicroPython, so every test_*.py in tests/protocol/
and tests/firmware/ is written once, with plain asserts, and runs twice: pytest
collects it on CPython as usual, and this plugin adds one item per test function
that runs it on the MicroPython VM (tests/portable/mprun.py), so a failure there fails
pytest and shows the VM's output. A file there that drives the VM from outside
(subprocesses, hypothesis) says so with CPYTHON_ONLY = "why".
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

# The repo's packages win over same-named test folders (tests/hub/ has no __init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import vm  # noqa: E402

ROOT = vm.ROOT
TESTS = ROOT / "tests"
PORTABLE = (TESTS / "protocol", TESTS / "firmware")  # the test modules' names are unique
RUNNER = TESTS / "portable"  # mprun.py and checks.py: the VM's runner and helpers
sys.path.insert(0, str(RUNNER))
# On CPython too, firmware/'s modules import as top-level names, as on a board.
sys.path.insert(0, str(vm.FIRMWARE))
# The portable tests must fit an ESP32 without PSRAM (~100 KB free heap).
HEAP = os.environ.get("GRIDBID_MPY_HEAP", "100k")


def run_micropython(script, *args, timeout=60, heap=HEAP):
    """Run a script on the MicroPython VM with the repo root on its path."""
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine (no wheel for its architecture)")
    argv, env, _runtime = vm.command(script, *args, heap=heap, extra_path=[RUNNER, *PORTABLE])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


class MicroPythonFile(pytest.File):
    """A portable test module; it may set MICROPYTHON_HEAP = "256k" (with its reason)."""

    def collect(self):
        tree = ast.parse(self.path.read_text())
        self.heap = HEAP
        settings = {
            node.targets[0].id: node.value.value
            for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
        }  # fmt: skip
        if "CPYTHON_ONLY" in settings:
            return
        self.heap = settings.get("MICROPYTHON_HEAP", HEAP)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                yield MicroPythonItem.from_parent(self, name=node.name + "[micropython]")


class MicroPythonItem(pytest.Item):
    def runtest(self):
        function = self.name.split("[")[0]
        heap = self.parent.heap
        result = run_micropython(RUNNER / "mprun.py", self.path.stem, function, heap=heap)
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


@pytest.fixture(autouse=True)
def _hub_logs_detached():
    """helpers.logs.into() feeds a test's list until the test ends; a command run in
    process (gridbid.cli.main) logs to that test's stderr, which pytest closes after it."""
    yield
    import logging

    from helpers.logs import detach

    detach()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if hasattr(h, "gridbid")]:
        root.removeHandler(handler)


def pytest_ignore_collect(collection_path, config):
    """tests/hil needs pytest-embedded's `dut`: only with -p pytest_embedded (see its docstring)."""
    if collection_path.name == "hil" and not config.pluginmanager.has_plugin("pytest_embedded"):
        return True
    return None


def pytest_collect_file(file_path, parent):
    if file_path.parent in PORTABLE and file_path.name.startswith("test_"):
        if file_path.suffix == ".py":
            return MicroPythonFile.from_parent(parent, path=file_path)
    return None
