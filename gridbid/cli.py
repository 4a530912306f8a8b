"""gridbid: battery owners sell stored energy to competing aggregators.

`gridbid COMMAND --help` shows a command's own options."""

import argparse
import sys

# command -> (module, one-line help). The module has add_arguments(parser) and run(args)
# and is imported only for the command that runs (or shows its help): `gridbid --help`
# and `--version` load no solana, numpy or pymodbus.
COMMANDS = {
    "hub": ("gridbid.hub", "run the hub (market maker, aggregator agents, store); make its keys"),
    "device": (
        "gridbid.device",
        "run a battery controller, simulate its devices; trust or revoke an aggregator",
    ),
    "aggregator": ("gridbid.aggregator", "an aggregator's identity; enroll a battery"),
    "settlement": ("gridbid.settlement", "the settlement journal: payments to battery owners"),
    "credit": ("gridbid.credit", "stable credit: rate, purchases, redemptions, reconcile"),
    "rec": ("gridbid.rec", "renewable energy certificates: mint, list, buy, retire"),
    "gov": ("gridbid.gov", "NRG governance: stake, propose, vote; incentive rewards"),
    "wallet": ("gridbid.wallet", "your own wallet: make one; sign and submit platform commands"),
    "etp": ("gridbid.etp", "decode and encode ETP frames (for debugging captures)"),
    "demo": ("simulator.demo", "run the local demo: the hub, aggregators and batteries on the VM"),
    "experiment": (
        "simulator.experiment_cli",
        "measure what N competing aggregators pay owners, against single-buyer baselines",
    ),
}


class Version(argparse.Action):
    """--version, reading the installed package's metadata only when asked."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from importlib.metadata import version

        print("gridbid %s" % version("gridbid"))
        parser.exit()


def add_verbosity(parser, default):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                       default=default, help="more log lines (debug)")  # fmt: skip
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                       default=default, help="warnings and errors only")  # fmt: skip


def leaves(parser):
    """The parsers that end a command line (`hub keys`, `demo`), below `parser`."""
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        return [parser]
    return [leaf for sub in subparsers for p in sub.choices.values() for leaf in leaves(p)]


def build_parser(full=()):
    """The whole parser; only the commands in `full` get their own arguments (importing
    their modules)."""
    import importlib

    parser = argparse.ArgumentParser(prog="gridbid", description=__doc__)
    parser.add_argument("--version", action=Version, help="print gridbid's version and exit")
    add_verbosity(parser, 0)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name in full:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(func=module.run)
            for leaf in leaves(sub):  # -v/-q also after the command; unset: the root's
                add_verbosity(leaf, argparse.SUPPRESS)
    return parser


def main(argv=None):
    from gridbid import logs

    argv = sys.argv[1:] if argv is None else list(argv)
    # The root's options take no values, so the first word that is not one is the command.
    command = next((word for word in argv if not word.startswith("-")), None)
    parser = build_parser(full=[command])
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    logs.setup(args.verbosity)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
