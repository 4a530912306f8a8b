"""`gridbid experiment`: how much more battery owners earn as aggregators compete.

    gridbid experiment --aggregators 1,2,3,5,8 --devices 100 --slots 50 --seed 1

For each N, every slot, each simulated battery offers energy at its reserve price
and N aggregators (aggregator/strategies.py) bid. The battery's own code decides: its
reserve is firmware/reserve.py's reserve_price and each auction is
firmware/auction.py's Auction (sealed bids; the best bid at or above the reserve
wins at its own price), loaded from the files the devices run. The baseline is
the single-utility model: one SingleUtility buyer posting the battery's reserve.

The model (the constants below, or options):
- Batteries: 5, 10 or 13.5 kWh, SoC 40-95 %, SoH 50-100 % (the firmware's
  thresholds make it good, degraded or poor). An offer is what lies above 20 %
  SoC, at most 5 kW for a 30-min slot; sales discharge the battery and solar
  recharges it by U(0, 2.5) kWh per slot. They deliver what they sell.
- Price signal: the GridTokenX form p = (2/pi) p_con atan(k ln(D/S)) + p_balance
  over a daily demand/supply cycle. Exogenous: with reserves >= 90 % of the signal
  (reserve.py), a signal made of our own prices would ratchet reserves up.
- Values: an aggregator's resale value per kWh is reserve + margin + U(0, spread),
  drawn independently per aggregator and offer, so worths (value - margin) are
  i.i.d. uniform on [r, r + s]: the textbook first-price auction.
- Theory per auction, given its reserve r and the k aggregators that bid, is
  strategies.theory (value: r + s (n-1)/n k/(k+1), = r + s (n-1)/(n+1) when all n
  bid; adaptive: r + s (k-1)/(k+1); utility: r), averaged with the kWh sold as
  weights, as the measured mean price (owners' revenue / kWh sold) is. Each
  auction's winning price is published to all aggregators, as a market maker does.
"""

import json
import math
import random
import sys
import time
from pathlib import Path

from aggregator import strategies
from simulator import lacks_sim_extra
from simulator.model import FLOOR, MARGIN, SPREAD, Battery, Tally, firmware, price_signal

LIVE_DEVICES, LIVE_SLOTS, LIVE_AGGREGATORS = 5, 3, 16  # 16: the firmware's max_peers bound


def simulate(buyers, theory, devices, slots, seed, floor=FLOOR, progress=None):
    """Every slot in process: offers, bids, the firmware's auction, delivery."""
    auction_py = firmware("auction")
    batteries = [Battery(1001 + i, seed, floor) for i in range(devices)]
    market, tally, message_id = random.Random("%s/market" % seed), Tally(slots), 0
    for slot in range(slots):
        signal = price_signal(slot)
        for battery in market.sample(batteries, len(batteries)):
            offer = battery.offer(slot, signal)
            if offer is None:
                continue
            now, bids = slot * 1_800_000, {}
            auction = auction_py.Auction(offer.reserve, offer.kwh, 300, now)
            for at, buyer in enumerate(market.sample(buyers, len(buyers))):  # arrival order
                bid = bids[buyer.name] = buyer.bid(offer)
                if bid is not None:
                    message_id += 1
                    auction.add(
                        auction_py.Bid(buyer.name, message_id, bid.price, bid.kwh, now + at)
                    )
            winners, _rejects = auction.close()
            sold = {bid.peer: (kwh, bid.price) for bid, kwh in winners}
            top = winners[0][0].price if winners else None  # the published winning price
            total = sum(kwh for kwh, _p in sold.values())
            delivered = battery.deliver(total)
            for buyer in buyers:
                kwh, price = sold.get(buyer.name, (0.0, None))
                mine = bids[buyer.name]
                buyer.observe(strategies.Outcome(
                    offer.device_id, slot, kwh > 0, mine and mine.price, kwh, top, kwh,
                    delivered * kwh / total if kwh > 0 else None,
                ))  # fmt: skip
            bidders = sum(bid is not None for bid in bids.values())
            tally.add(slot, offer, list(sold.values()), theory, bidders)
        for battery in batteries:
            battery.deliver(0.0, recharge=True)
        if progress:
            progress((slot + 1) / slots)
    return tally.stats()


def run_experiment(
    aggregators=(1, 2, 3, 5, 8), devices=100, slots=50, seed=0, strategy="value",
    spread=SPREAD, margin=MARGIN, budget=None, capacity=None, floor=FLOOR, live=False,
    progress=None,
):  # fmt: skip
    """-> {"parameters", "model", "baseline", "runs": [stats per N]}; progress(label, 0..1)."""
    aggregators = [int(n) for n in aggregators]
    if not aggregators or min(aggregators) < 1:
        raise ValueError("aggregators must be whole numbers >= 1")
    if strategy not in strategies.STRATEGIES:
        raise ValueError("strategy must be one of %s" % ", ".join(strategies.STRATEGIES))
    if devices < 1 or slots < 1 or not spread > 0 or not margin >= 0:
        raise ValueError("devices and slots must be >= 1, spread > 0 and margin >= 0")
    if live:
        from simulator.experiment_live import live_simulate as engine

        devices, slots = min(devices, LIVE_DEVICES), min(slots, LIVE_SLOTS)
        if max(aggregators) > LIVE_AGGREGATORS:
            raise ValueError("--live runs at most %d aggregators" % LIVE_AGGREGATORS)
    else:
        engine = simulate

    def run(label, buyers, theory):
        report = (lambda fraction: progress(label, fraction)) if progress else None
        return engine(buyers, theory, devices, slots, seed, floor, report)

    utility = strategies.SingleUtility("utility")
    baseline = run("single utility", [utility], strategies.theory("utility", spread, 1))
    runs = []
    for n in aggregators:
        buyers = strategies.make_buyers(strategy, n, spread, margin, seed, budget, capacity)
        stats = run("N=%d" % n, buyers, strategies.theory(strategy, spread, n))
        base, price = baseline["mean_price"], stats["mean_price"]
        stats["vs_baseline_pct"] = 100 * (price - base) / base if price and base else None
        runs.append({"aggregators": n, **stats})
    parameters = {
        "aggregators": aggregators, "devices": devices, "slots": slots, "seed": seed,
        "strategy": strategy, "spread": spread, "margin": margin, "budget": budget,
        "capacity": capacity, "floor": floor, "live": live,
        "model": {
            "worths": "i.i.d. uniform on [reserve, reserve + spread] per aggregator and offer",
            "theory": " ".join(strategies.theory.__doc__.split("\n\n")[1].split()),
            "baseline": "one buyer posting the battery's reserve (take it or leave it)",
        },
    }  # fmt: skip
    return {"parameters": parameters, "baseline": baseline, "runs": runs}


# --- the command -----------------------------------------------------------------------

OPTIONS = (  # name, default, help; parsed in _parse so that a bad value is one line
    ("aggregators", "1,2,3,5,8", "values of N, comma-separated (1,2,3,5,8)"),
    ("devices", "100", "batteries (100)"),
    ("slots", "50", "30-minute market slots (50)"),
    ("seed", None, "seed (default: a random one, printed)"),
    ("strategy", "value", "aggregators' strategy: value | adaptive (value)"),
    ("spread", str(SPREAD), "width of the aggregators' worths above the reserve, c/kWh (6)"),
    ("margin", str(MARGIN), "aggregators' margin below resale value, c/kWh (1)"),
    ("budget", None, "cents per aggregator and slot (no limit)"),
    ("capacity", None, "kWh per aggregator and slot (no limit)"),
)


def add_arguments(parser):
    for name, default, text in OPTIONS:
        parser.add_argument("--" + name, default=default, help=text)
    parser.add_argument("--json", metavar="FILE", help="write all results as JSON")
    parser.add_argument("--plot", metavar="FILE", help="write a plot (.png or .svg)")
    parser.add_argument("--live", action="store_true", help="batteries run the firmware on the "
                        "MicroPython VM, aggregators bid over loopback ETP (at most %d devices "
                        "and %d slots)" % (LIVE_DEVICES, LIVE_SLOTS))  # fmt: skip


def _parse(args):
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
    if args.live and max(ns) > LIVE_AGGREGATORS:
        raise ValueError("--live runs at most %d aggregators" % LIVE_AGGREGATORS)
    if args.strategy not in strategies.STRATEGIES:
        raise ValueError("--strategy must be one of %s" % ", ".join(strategies.STRATEGIES))
    if args.plot and Path(args.plot).suffix.lower() not in (".png", ".svg"):
        raise ValueError("--plot must name a .png or .svg file")
    seed = args.seed if args.seed is not None else str(random.SystemRandom().randrange(10**6))
    return {
        "aggregators": ns, "devices": number("devices", int, 1, 100_000),
        "slots": number("slots", int, 1, 100_000), "strategy": args.strategy, "live": args.live,
        "seed": int(seed) if seed.isdigit() else seed, "spread": number("spread", float, 0.01, 1e4),
        "margin": number("margin", float, 0, 1e4), "budget": number("budget", float, 0),
        "capacity": number("capacity", float, 0),
    }  # fmt: skip


def run(args):
    try:
        options = _parse(args)
    except ValueError as exc:
        print("gridbid experiment: error: %s" % exc, file=sys.stderr)
        return 2
    needs = [name for name, used in (("pymodbus", options["live"]), ("matplotlib", args.plot))
             if used]  # fmt: skip
    if lacks_sim_extra("experiment", needs):
        return 2
    if options["live"]:
        print("experiment: --live runs at most %d batteries and %d slots"
              % (LIVE_DEVICES, LIVE_SLOTS), file=sys.stderr)  # fmt: skip
    started, tty = time.monotonic(), sys.stderr.isatty()

    def progress(label, fraction):  # a % counter on a terminal; a line per run always
        if tty:
            print("\rexperiment: %-14s %3d%%" % (label, 100 * fraction), end="", file=sys.stderr)
        if fraction >= 1:
            done = "\rexperiment: %-14s done (%.1f s in)" % (label, time.monotonic() - started)
            print(done if tty else done[1:], file=sys.stderr)

    try:
        results = run_experiment(progress=progress, **options)
    except ValueError as exc:
        print("gridbid experiment: error: %s" % exc, file=sys.stderr)
        return 2
    except (OSError, AssertionError, ConnectionError, TimeoutError) as exc:  # --live only
        print("\ngridbid experiment: error: the live run failed: %s" % exc, file=sys.stderr)
        return 1
    print(table(results))
    try:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        if args.plot:
            plot(results, args.plot)
    except OSError as exc:
        print("gridbid experiment: error: cannot write: %s" % exc, file=sys.stderr)
        return 1
    return 0


def _c(value, form="%.2f"):
    return "-" if value is None else form % value


def table(results):
    p, base = results["parameters"], results["baseline"]
    lines = [
        "%d batteries x %d slots%s, %s strategy, seed %s; worths ~ U[reserve, reserve + %g]"
        % (p["devices"], p["slots"], p["live"] and " (live: firmware on %s)" % base["runtime"]
           or "", p["strategy"], p["seed"], p["spread"]),
        "single utility (posts the battery's reserve): %s c/kWh, sold %.1f%%"
        % (_c(base["mean_price"]), 100 * base["sold_share"]),
        "",
        "N aggregators | mean price paid c/kWh | vs single utility | theory c/kWh | "
        "measured - theory (±2 SE) | sold share",
    ]  # fmt: skip
    for r in results["runs"]:
        diff = "-" if r["diff"] is None else "%+.3f ± %.3f" % (r["diff"], 2 * r["diff_se"])
        lines.append("%13d | %21s | %17s | %12s | %25s | %9.1f%%" % (
            r["aggregators"], _c(r["mean_price"]), _c(r["vs_baseline_pct"], "%+.1f%%"),
            _c(r["theory_price"]), diff, 100 * r["sold_share"]))  # fmt: skip
    return "\n".join(lines)


def plot(results, path):
    """Mean price vs N (±2 SE), the theory's expectation, and the single utility."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    runs = [r for r in results["runs"] if r["mean_price"] is not None]
    ns, p = [r["aggregators"] for r in runs], results["parameters"]
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    axes.plot(ns, [r["theory_price"] for r in runs], "-", color="orange", lw=6, alpha=0.5,
              label="auction theory")  # fmt: skip
    axes.errorbar(ns, [r["mean_price"] for r in runs], yerr=[2 * r["diff_se"] for r in runs],
                  fmt="o--", color="navy", ms=4, capsize=3, label="measured (±2 SE)")  # fmt: skip
    if results["baseline"]["mean_price"] is not None:
        axes.axhline(
            results["baseline"]["mean_price"], color="grey", ls=":", label="single utility"
        )
    axes.set(xlabel="competing aggregators N", ylabel="mean price paid to owners (c/kWh)",
             xticks=ns, title="gridbid: %s bidders, %d batteries x %d slots, seed %s"
             % (p["strategy"], p["devices"], p["slots"], p["seed"]))  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
