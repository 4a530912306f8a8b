"""Power cuts at every flash write of a contract lifecycle (tests/power_cut_vm.py).

The harness must run on the MicroPython VM: LittleFS (os.VfsLfs2) exists only
there. It needs more heap than a board (two copies of the flash image), so it
runs with its own heap size, not the portable tests' ESP32-sized one.
"""

import json
import subprocess

import pytest

from simulator import vm

CPYTHON_ONLY = "runs tests/firmware/power_cut_vm.py on the VM"

ROOT = vm.ROOT
SCRIPT = ROOT / "tests" / "firmware" / "power_cut_vm.py"


def power_cuts(fs, strategy, randoms, block=512, blocks=64, seed=1):
    if vm.binary() is None:
        pytest.skip("no MicroPython VM on this machine: LittleFS power cuts need it")
    args = [fs, strategy, str(randoms), str(seed), str(block), str(blocks)]
    argv, env, runtime = vm.command(SCRIPT, *args, heap="2m")
    assert runtime == "MicroPython"
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    print(json.dumps({k: v for k, v in result.items() if k != "examples"}))  # with pytest -s
    return result


def assert_nothing_lost(result):
    assert result["losses"] == 0, result["examples"]
    assert result["failures"] == {}
    ops = result["flash_ops_per_lifecycle"]
    assert ops > 100 and result["saves_per_lifecycle"] >= 20  # the lifecycle really wrote
    assert result["cut_points"] == 2 * ops  # every operation, torn to nothing and to half
    outcomes = result["outcomes"]  # each cut leaves the last completed save or the cut one
    assert outcomes["old"] + outcomes["new"] == result["cut_points"] + result["random_points"]
    assert outcomes["new"] > 0  # some cuts land after the rename's commit: both are seen
    assert result["seconds"] < 60


@pytest.mark.parametrize(
    "block, blocks, randoms",
    [(512, 64, 1000), (4096, 16, 500)],  # a small flash; an ESP32's 4 KiB sectors
    ids=["512x64", "4096x16"],
)
def test_write_temp_then_rename_survives_every_cut_on_littlefs(block, blocks, randoms):
    result = power_cuts("lfs2", "rename", randoms, block, blocks)
    assert_nothing_lost(result)
    assert result["random_points"] >= 500


def test_on_fat_a_complete_tmp_is_adopted_after_a_cut_inside_rename():
    """VfsFat renames over a file by removing it first; load() adopts the
    complete .tmp a cut between the two leaves. Clean cuts only: FAT has no
    checksums, and noisy torn writes break the filesystem itself."""
    assert_nothing_lost(power_cuts("fat", "rename", randoms=0))


@pytest.mark.parametrize("fs", ["lfs2", "fat"])
def test_the_harness_catches_direct_overwrite(fs):
    """The same harness with the record written in place (no temp file, no
    rename) finds damage: proof that it can fail. On LittleFS only the cut
    while the file is first created (an empty file is committed before its
    data) shows; on FAT most cuts do."""
    result = power_cuts(fs, "overwrite", randoms=200)
    assert result["losses"] > 0, result
    assert result["failures"].get("loads", 0) > 0  # a torn record: CorruptRecord, set aside
