"""The `gridbid` command. Each subcommand lives in its own module, imported when used."""

import argparse
import sys

# subcommand -> (module, one-line help). The module has add_arguments(parser) and run(args).
COMMANDS = {
    "etp": ("gridbid.etp", "decode and encode ETP frames (for debugging captures)"),
    "demo": ("simulator.demo", "run the local demo: the hub, aggregators and batteries on the VM"),
    "hub": ("gridbid.hub", "run the hub: market maker, aggregator agents and store"),
    "device": ("gridbid.device", "run a battery controller, or simulate its Modbus devices"),
    "experiment": (
        "simulator.experiment",
        "measure what N competing aggregators pay owners vs one utility",
    ),
    "credit": ("gridbid.credit", "stable credit: rate, purchases, redemptions, reconcile"),
    "rec": ("gridbid.rec", "renewable energy certificates: mint, list, buy, retire"),
    "gov": ("gridbid.gov", "NRG governance: stake, propose, vote; incentive rewards"),
}


def main(argv=None):
    import importlib
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # gridbid/logs.py replaces it
    parser = argparse.ArgumentParser(prog="gridbid", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(commands.add_parser(name, help=help_text, description=help_text))
        modules[name] = module
    # A module that parses some of its options itself, lazily, sets LATE_OPTIONS.
    args, args.late = parser.parse_known_args(argv)
    if args.late and not getattr(modules[args.command], "LATE_OPTIONS", False):
        parser.error("unrecognized arguments: %s" % " ".join(args.late))
    try:
        return modules[args.command].run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
