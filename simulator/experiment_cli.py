"""The `gridbid experiment` command: options checked up front (a bad one is one line
and exit 2), progress on stderr, the tables on stdout, JSON and a plot on request.
The experiment itself is simulator/experiment.py."""

import json
import math
import random
import sys
import time
from pathlib import Path

from simulator import experiment, lacks_sim_extra, report
from simulator.values import CORRELATION, LEVEL, MODELS, NOISE

OPTIONS = (  # name, default, help; parsed in parse() so that a bad value is one line
    ("aggregators", "1,2,3,5,8", "values of N, comma-separated (1,2,3,5,8)"),
    ("devices", "100", "batteries (100)"),
    ("slots", "50", "30-minute market slots (50)"),
    ("repeats", "10", "independent fleets and values (seeds) per N, for the intervals (10)"),
    ("seed", None, "seed (default: a random one, printed)"),
    ("market", "hub", "hub: the hub's uniform-price market | bilateral: each battery's "
     "sealed-bid auction (hub)"),
    ("strategy", "value", "aggregators' strategy: %s (value)" % " | ".join(experiment.STRATEGIES)),
    ("values", "private", "value model: %s (private)" % " | ".join(MODELS)),
    ("level", str(LEVEL), "lowest worth per kWh, c/kWh (%g)" % LEVEL),
    ("spread", None, "width of the worths, c/kWh (6; with --prices: the series' P90 - P10)"),
    ("noise", str(NOISE), "common values: the private part's width, c/kWh (%g)" % NOISE),
    ("correlation", str(CORRELATION), "correlated values: the common share, 0..1 (%g)"
     % CORRELATION),
    ("prices", None, "a CSV of (time, c/kWh): the level per slot, cycled"),
    ("asymmetry", "0", "aggregator 1's worths above the others', c/kWh (0)"),
    ("believed", None, "value bidders shade for this many bidders, whatever N is"),
    ("margin", str(experiment.MARGIN), "aggregators' margin below resale value, c/kWh (1)"),
    ("tariff", str(experiment.TARIFF), "the feed-in tariff baseline, c/kWh (%g)"
     % experiment.TARIFF),
    ("budget", None, "cents per aggregator and slot (no limit)"),
    ("capacity", None, "kWh per aggregator and slot (no limit)"),
)  # fmt: skip


def add_arguments(parser):
    for name, default, text in OPTIONS:
        parser.add_argument("--" + name, default=default, help=text)
    parser.add_argument(
        "--cases",
        action="store_true",
        help="run every case of "
        "experiment.CASES (common values, collusion, thin market...) at N = "
        "1, 2 and the largest N: where competition pays and where not",
    )
    parser.add_argument("--json", metavar="FILE", help="write all results as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write a plot (.png or .svg)")
    parser.add_argument("--live", action="store_true", help="the real processes on loopback: "
                        "`gridbid hub run`, `gridbid aggregator run` per aggregator and the "
                        "batteries' firmware on the MicroPython VM (hub: 8-s slots, at most "
                        "%d batteries and %d slots; bilateral: %d and %d); compared with the "
                        "simulation" % (experiment.LIVE_HUB_DEVICES, experiment.LIVE_HUB_SLOTS,
                                        experiment.LIVE_DEVICES,
                                        experiment.LIVE_SLOTS))  # fmt: skip


def parse(args):
    """-> run_experiment's keyword arguments; ValueError with a one-line reason."""

    def number(name, kind, low, high=math.inf):
        text = getattr(args, name)
        try:
            value = None if text is None else kind(text)
        except ValueError:
            raise ValueError("--%s: %r is not a number" % (name, text)) from None
        if value is not None and not low <= value <= high:
            raise ValueError("--%s must be %s..%s, not %s" % (name, low, high, text))
        return value

    try:
        ns = [int(part) for part in args.aggregators.split(",")]
    except ValueError:
        raise ValueError("--aggregators takes whole numbers like 1,2,3,5,8") from None
    if min(ns) < 1 or max(ns) > 100:
        raise ValueError("--aggregators must be 1..100 each, not %s" % args.aggregators)
    for name, allowed in (("market", experiment.MARKETS), ("strategy", experiment.STRATEGIES),
                          ("values", MODELS)):  # fmt: skip
        if getattr(args, name) not in allowed:
            raise ValueError("--%s must be one of %s" % (name, ", ".join(allowed)))
    if args.live:
        from simulator.experiment_live_hub import STRATEGIES as hub_live

        if args.market == "hub" and (
            args.values != "private"
            or args.strategy not in hub_live
            or args.prices
            or args.asymmetry not in ("0", None)
        ):
            raise ValueError(
                "--live on the hub runs private values and the %s strategies, "
                "without --asymmetry or --prices" % ", ".join(hub_live)
            )
        if max(ns) > experiment.LIVE_AGGREGATORS:
            raise ValueError("--live runs at most %d aggregators" % experiment.LIVE_AGGREGATORS)
        if args.cases:
            raise ValueError("--live and --cases do not go together")
    if args.plot and args.cases:
        raise ValueError("--plot draws one experiment, not --cases")
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg"):
        raise ValueError("--plot must name a .png or .svg file")
    if args.prices and not Path(args.prices).is_file():
        raise ValueError("--prices: no file %s" % args.prices)
    seed = args.seed if args.seed is not None else str(random.SystemRandom().randrange(10**6))
    return {
        "aggregators": ns, "devices": number("devices", int, 1, 100_000),
        "slots": number("slots", int, 1, 100_000), "repeats": number("repeats", int, 1, 1000),
        "seed": int(seed) if seed.isdigit() else seed, "market": args.market,
        "strategy": args.strategy, "values": args.values, "level": number("level", float, 0, 1e4),
        "spread": number("spread", float, 0.01, 1e4), "noise": number("noise", float, 0, 1e4),
        "correlation": number("correlation", float, 0, 1), "prices": args.prices,
        "asymmetry": number("asymmetry", float, -1e4, 1e4),
        "believed": number("believed", int, 1, 100), "margin": number("margin", float, 0, 1e4),
        "tariff": number("tariff", float, 0, 1e4), "budget": number("budget", float, 0),
        "capacity": number("capacity", float, 0), "live": args.live,
    }  # fmt: skip


def run(args):
    try:
        options = parse(args)
    except ValueError as exc:
        print("gridbid experiment: error: %s" % exc, file=sys.stderr)
        return 2
    needs = [name for name, used in (("pymodbus", options["live"]), ("matplotlib", args.plot))
             if used]  # fmt: skip
    if lacks_sim_extra("experiment", needs):
        return 2
    if options["live"]:
        print("experiment: --live runs the real processes: at most %d batteries and %d slots"
              % ((experiment.LIVE_HUB_DEVICES, experiment.LIVE_HUB_SLOTS) if options["market"]
                 == "hub" else (experiment.LIVE_DEVICES, experiment.LIVE_SLOTS)),
              file=sys.stderr)  # fmt: skip
    started, tty, shown = time.monotonic(), sys.stderr.isatty(), [-1, -1]

    def progress(fraction, label="experiment"):  # a % counter on a terminal, else by tenths
        tenth, pct = int(10 * fraction), int(100 * fraction)
        if tty and pct != shown[1]:
            print("\r%s: %3d%%" % (label, pct), end="", file=sys.stderr)
            shown[1] = pct
        elif tenth > shown[0]:
            print("%s: %d%% (%.0f s)" % (label, 10 * tenth, time.monotonic() - started),
                  file=sys.stderr)  # fmt: skip
        shown[0] = tenth
        if fraction >= 1 and tty:
            print("\r%s: done in %.1f s" % (label, time.monotonic() - started), file=sys.stderr)

    try:
        if args.cases:
            cases = experiment.run_cases(
                options, lambda name, f: progress(f, "cases (%s)" % name) if tty else
                progress(f, "cases"))  # fmt: skip
            results = {"parameters": options, "cases": cases}
            print("cases on: " + report.describe(cases[0]["parameters"]))
            print(report.cases_table(cases))
        else:
            results = experiment.run_experiment(progress=progress, **options)
            print(report.table(results))
    except ValueError as exc:
        print("\ngridbid experiment: error: %s" % exc, file=sys.stderr)
        return 2
    except (OSError, AssertionError, ConnectionError, TimeoutError) as exc:  # --live only
        print("\ngridbid experiment: error: the live run failed: %s" % exc, file=sys.stderr)
        return 1
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        if args.plot and not args.cases:
            report.plot(results, args.plot)
    except OSError as exc:
        print("gridbid experiment: error: cannot write: %s" % exc, file=sys.stderr)
        return 1
    return 0
