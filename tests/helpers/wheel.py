"""gridbid's wheel, built from a copy of what this checkout packages.

A copy, because setuptools builds in the source folder (build/, *.egg-info; a stale
build/lib would even ship files the checkout no longer has), and because a test may
change a copied file and build again (tests/deploy/test_ansible.py).
"""

import shutil
import subprocess
import sys
import tomllib

from simulator import vm


def packaged():
    """The top-level folders pyproject.toml's package discovery includes."""
    config = tomllib.loads((vm.ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.split(".")[0].rstrip("*") for pattern in patterns})


def copy_source(dest):
    """pyproject.toml, README.md (the wheel's description) and the packaged folders."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(vm.ROOT / name, dest)
    for folder in packaged():
        shutil.copytree(vm.ROOT / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy"))  # fmt: skip
    return dest


def build(src, dist, python=sys.executable):
    """src's wheel into dist (emptied first) with pip; setuptools comes from the package
    index into pip's isolated build environment, as for any user."""
    shutil.rmtree(dist, ignore_errors=True)
    argv = [str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=src.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = dist.glob("gridbid-*.whl")
    return wheel
