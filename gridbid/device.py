"""`gridbid device run|sim`: one battery controller on this machine, and its devices.

    gridbid device sim --tcp-port 5020             simulated meter, BMS and inverter (Modbus)
    gridbid device run --board unix --config F     the firmware on the MicroPython VM

The firmware runs from firmware/ exactly as on a board; on a CPU without a
MicroPython VM build (a Raspberry Pi) it runs on CPython, and says so.
Relative paths in the config (data_dir, registers_dir) are taken from the
config's folder, as a board's config.json sits at the root of its filesystem.
"""

import argparse
import json
import signal
import subprocess
import sys
from pathlib import Path

from simulator import lacks_sim_extra, vm

BOARDS = vm.ROOT / "hardware" / "boards"


def add_arguments(parser):
    from simulator import devicesim  # its options only: pymodbus is imported when it runs

    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    run = verbs.add_parser("run", help="run one battery controller (the firmware)")
    names = sorted(p.stem for p in BOARDS.glob("*.json"))
    run.add_argument("--board", default="unix", choices=names, help="board profile (unix)")
    run.add_argument("--config", required=True, help="the device's config.json")
    sim = verbs.add_parser(
        "sim", help="simulated meter, BMS and inverter over Modbus",
        description=devicesim.__doc__.partition("In-process")[0],  # not its test API
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    devicesim.add_arguments(sim)


def run(args):
    if args.verb == "sim":
        if lacks_sim_extra("device sim"):
            return 2
        from simulator import devicesim

        return devicesim.run(args)
    return run_device(args)


def run_device(args):
    profile_path = BOARDS / (args.board + ".json")
    profile = json.loads(profile_path.read_text())
    if args.board != "unix":
        print("error: board %s is flashed, not run here: see tools/flash.py" % args.board,
              file=sys.stderr)  # fmt: skip
        return 2
    config = Path(args.config).resolve()
    argv, env, runtime = vm.command(
        vm.FIRMWARE / "main.py", str(profile_path), str(config),
        heap=profile.get("heap", vm.DEFAULT_HEAP),
    )  # fmt: skip
    if runtime != "MicroPython":
        print("no MicroPython VM for this CPU: the firmware runs on CPython", flush=True)
    device = subprocess.Popen(argv, env=env, cwd=config.parent, start_new_session=True)
    # The VM is in its own session (a Ctrl-C is ours to pass on): a service manager's
    # SIGTERM must reach it too, or it would run on without us.
    signal.signal(signal.SIGTERM, lambda *_: device.terminate())
    try:
        return device.wait()
    except KeyboardInterrupt:
        device.terminate()
        device.wait()
        return 130
