"""`gridbid device run|sim`: one battery controller on this machine, and its devices.

    gridbid device sim --tcp-port 5020             simulated meter, BMS and inverter (Modbus)
    gridbid device run --board unix --config F     the firmware on the MicroPython VM
    gridbid device scan --host H --unit N          what a Modbus device offers (SunSpec models)
    gridbid device trust --config F ENROLLMENT     trust an aggregator (its enrollment file)
    gridbid device revoke --config F --aggregator N    trust it no more

The firmware runs from firmware/ exactly as on a board; on a CPU without a
MicroPython VM build (a Raspberry Pi) it runs on CPython, and says so.
Relative paths in the config (data_dir, registers_dir) are taken from the
config's folder, as a board's config.json sits at the root of its filesystem.

trust and revoke edit the battery's config.json (0600, written whole): its "keys"
hold the pair key of each aggregator it trusts. A running battery follows the file
within seconds (firmware/node.py follow_trust); a board's copy is pushed as any
config change (tools/flash.py). Nothing secret is printed.
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
    trust = verbs.add_parser("trust", help="trust an aggregator: add its enrollment file")
    trust.add_argument("--config", required=True, help="the battery's config.json")
    trust.add_argument("enrollment", help="enroll-<aggregator>-<battery>.json from the aggregator")
    revoke = verbs.add_parser("revoke", help="trust an aggregator no more")
    revoke.add_argument("--config", required=True, help="the battery's config.json")
    revoke.add_argument("--aggregator", type=int, required=True, help="its key id")
    sim = verbs.add_parser(
        "sim", help="simulated meter, BMS and inverter over Modbus",
        description=devicesim.__doc__.partition("In-process")[0],  # not its test API
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    devicesim.add_arguments(sim)
    from gridbid import device_scan

    scan = verbs.add_parser(
        "scan", help="list what a Modbus device offers: SunSpec models, or a register probe",
        description=device_scan.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    device_scan.add_arguments(scan)


def run(args):
    if args.verb in ("trust", "revoke"):
        from transport import secret_files

        try:
            print(trust(args) if args.verb == "trust" else revoke(args))
        except (secret_files.SecretFileError, ValueError) as exc:
            print("error: %s" % exc, file=sys.stderr)
            return 2
        return 0
    if args.verb == "scan":
        from gridbid import device_scan

        return device_scan.run(args)
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


def trust(args):
    """Add an enrollment's pair key to the battery's config.json. -> what was done."""
    from aggregator import identity
    from transport import secret_files

    cfg = secret_files.read(args.config, "battery config")
    got = identity.read_enrollment(args.enrollment)
    if got["battery"] != cfg.get("device_id"):
        raise ValueError("%s enrolls battery %s, and %s is battery %s's config"
                         % (args.enrollment, got["battery"], args.config,
                            cfg.get("device_id")))  # fmt: skip
    aggregator = got["aggregator"]
    if aggregator == cfg.get("key_id"):
        raise ValueError("%s names no valid aggregator id" % args.enrollment)
    keys = dict(cfg.get("keys") or {})
    if str(cfg.get("key_id")) in keys:  # the old shared keys: void with pair keys
        raise ValueError(
            "%s holds the old shared keys: re-provision it first "
            "(`gridbid hub keys --battery %s`)" % (args.config, cfg.get("device_id"))
        )
    again = str(aggregator) in keys
    keys[str(aggregator)] = got["key"]
    secret_files.write(args.config, dict(cfg, keys=keys))
    return "battery %s %s aggregator %d (%s)" % (
        cfg["device_id"],
        "trusts again" if again else "now trusts",
        aggregator,
        got.get("name"),
    )


def revoke(args):
    """Remove an aggregator's pair key from the battery's config.json."""
    from transport import secret_files

    cfg = secret_files.read(args.config, "battery config")
    keys = dict(cfg.get("keys") or {})
    if keys.pop(str(args.aggregator), None) is None:
        raise ValueError(
            "battery %s does not trust aggregator %d" % (cfg.get("device_id"), args.aggregator)
        )
    secret_files.write(args.config, dict(cfg, keys=keys))
    return (
        "battery %s no longer trusts aggregator %d: a running battery drops it within "
        "seconds; contracts already made run to their end" % (cfg["device_id"], args.aggregator)
    )
