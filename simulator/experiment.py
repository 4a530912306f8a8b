"""`gridbid experiment`: what battery owners earn as aggregators compete, on the
market the hub runs.

    gridbid experiment --aggregators 1,2,3,5,8 --devices 100 --slots 50 --repeats 20

Each repeat draws a fleet and the aggregators' values from its own seed. Per N, N
aggregators (aggregator/strategies.py, the strategies the aggregator package runs)
bid for the batteries' offers slot by slot, in a market (simulator/markets.py):
`--market hub` (the default) is the hub's market maker and uniform-price clearing,
`--market bilateral` each battery's own sealed-bid auction (the first build's). The
batteries are the firmware's reserve and offer rules (firmware/reserve.py); what
they sell they deliver, and solar recharges them. Worths follow a value model
(simulator/values.py). The baselines, on the same fleet and values:

1. informed: one buyer that knows each battery's reserve and posts it (it buys
   what is worth that to it): the most a monopsonist can take;
2. uninformed: one buyer that knows the slot's supply curve and its own mean
   worth, not who asks what, and posts the profit-maximising single price
   (strategies.posted_price);
3. tariff: a utility obliged to take all at a fixed feed-in tariff;
4. the chosen market with one aggregator (the N = 1 run).

Per run: mean price paid (owners' revenue / kWh sold), kWh offered and sold,
owners' revenue and surplus (price - reserve), aggregators' surplus (worth -
price), welfare (their sum), and the theory's price where the model has one; per
N, the gain over each baseline in price and revenue, paired by repeat. Every
figure is a mean over the repeats with its 95 % interval (Student's t).
"""

import functools
import random
from collections import defaultdict

from aggregator import strategies
from simulator import markets, stats
from simulator.model import FLOOR, MARGIN, MAX_KW, SLOT_H, Battery, Tally
from simulator.values import CORRELATION, LEVEL, NOISE, SPREAD, Values, spread_of

MARKETS = ("hub", "bilateral")
STRATEGIES = ("value", "adaptive", "truthful", "collusion")
BASELINES = ("informed", "uninformed", "tariff", "one aggregator")
TARIFF = 15.0  # c/kWh: the feed-in tariff baseline (--tariff)
SLOT_KWH = MAX_KW * SLOT_H  # the most a battery sells in a slot: 5 kW for 30 min
FIGURES = ("mean_price", "kwh_offered", "kwh_sold", "sold_share", "revenue_c",
           "owners_surplus_c", "aggregators_surplus_c", "welfare_c", "mean_reserve",
           "theory_price", "mean_bidders")  # fmt: skip
LIVE_DEVICES, LIVE_SLOTS, LIVE_AGGREGATORS = 5, 3, 16  # 16: the firmware's max_peers bound
LIVE_HUB_DEVICES, LIVE_HUB_SLOTS = 10, 10  # the hub's: 8-s slots


def make_buyers(strategy, count, values, margin, seed, budget=None, capacity=None,
                believed=None):  # fmt: skip
    """`count` competing aggregators of one strategy, aggregator k drawing its values
    from values.draw(k) with its own seeded stream (the same whatever `count` is).
    believed: the number of bidders a value bidder shades for (default: the truth)."""
    buyers = []
    for k in range(1, count + 1):
        rng = random.Random("%s/aggregator/%d" % (seed, k))
        value, limits = values.draw(k, margin), {"budget": budget, "capacity": capacity}
        if strategy == "value":
            buyer = strategies.ValueBidder(k, value, margin, bidders=believed or count, rng=rng,
                                           **limits)  # fmt: skip
        elif strategy == "adaptive":
            buyer = strategies.AdaptiveBidder(k, value, margin, rng=rng, **limits)
        elif strategy == "truthful":
            buyer = strategies.TruthfulBidder(k, value, margin, rng=rng, **limits)
        elif strategy == "collusion":
            buyer = strategies.Colluder(k, value, margin, index=k - 1, members=count, rng=rng,
                                        **limits)  # fmt: skip
        else:
            raise ValueError("unknown strategy %r (one of %s)" % (strategy, ", ".join(STRATEGIES)))
        buyers.append(buyer)
    return buyers


def run_market(market, buyers, devices, slots, seed, floor=FLOOR, tick=None, slot_kwh=SLOT_KWH):
    """One run: `slots` slots of `devices` batteries offering in `market`. -> figures"""
    batteries = [Battery(1001 + i, seed, floor, slot_kwh) for i in range(devices)]
    rng, tally, signal = random.Random("%s/market" % seed), Tally(), market.signal
    for slot in range(slots):
        offers, costs = [], {}
        for battery in batteries:
            offer = battery.offer(slot, signal)
            if offer is not None:
                offers.append(offer)
                costs[offer.device_id] = battery.cost
        traded = market.trade(slot, offers, buyers, rng)
        sold = defaultdict(float)
        for device, kwh, _price, _theory in traded.sold:
            sold[device] += kwh
        for battery in batteries:
            battery.deliver(sold.get(battery.device_id, 0.0), recharge=True)
        tally.add(offers, traded, costs)
        signal = traded.signal
        if tick:
            tick()
    return tally.figures()


def _theory(market, strategy, values, n, spread, believed, limited=False):
    """The theory's expected price for a run's sales, where the model has one (none
    when budgets or capacities may keep bidders out)."""
    if limited:
        return None
    if market == "hub":
        if strategy not in ("value", "truthful", "collusion"):
            return None
        bidders = 1 if strategy == "collusion" else n
        shade = {"truthful": 1.0, "collusion": 0.0}.get(strategy)
        if shade is None:
            b = believed or n
            shade = (b - 1) / b

        def hub(offers, _buyers):
            asks = []
            for o in offers:
                form = values.uniform(o)
                if form is None:
                    return None
                asks.append((o.reserve, o.kwh, form[0], form[1]))
            return markets.uniform_theory(asks, bidders, shade)

        return hub
    if values.model != "premium" or strategy not in ("value", "adaptive") or believed:
        return None
    first_price = strategies.theory(strategy, spread, n)
    return lambda reserve, bids: first_price(reserve, bids) if bids else None


def run_repeat(seed, aggregators, devices, slots, market="hub", strategy="value",
               values="private", level=LEVEL, spread=SPREAD, noise=NOISE,
               correlation=CORRELATION, series=None, asymmetry=0.0, margin=MARGIN,
               tariff=TARIFF, budget=None, capacity=None, floor=FLOOR, believed=None,
               follow_signal=True, slot_kwh=SLOT_KWH, tick=None, runner=run_market):  # fmt: skip
    """One repeat: the baselines and every N on one seed. -> {label: figures}
    runner: run_market, or experiment_live's on the VM for the N runs."""
    model = Values(values, seed, level, spread, noise, correlation, series, asymmetry)

    def posted(name, post=None, **kw):
        rng = random.Random("%s/aggregator/1" % seed)  # aggregator 1's values
        buyer = strategies.SingleUtility(name, value=model.draw(1, margin), margin=margin,
                                         rng=rng, **kw)  # fmt: skip
        return run_market(markets.PostedMarket(post), [buyer], devices, slots, seed, floor, tick,
                          slot_kwh)  # fmt: skip

    def uninformed(slot, offers):
        kwh = sum(o.kwh for o in offers)
        if not kwh:
            return 0.0
        worth = sum(model.expected(o, 1) * o.kwh for o in offers) / kwh  # it is aggregator 1
        best = strategies.posted_price([(o.reserve, o.kwh) for o in offers], worth)
        return 0.0 if best is None else best

    def mechanism(n):
        limited = budget is not None or capacity is not None
        theory = _theory(market, strategy, model, n, spread, believed, limited)
        if market == "hub":
            return markets.HubMarket(theory=theory, follow_signal=follow_signal)
        return markets.BilateralMarket(theory=theory)

    runs = {
        "informed": posted("informed"),
        "uninformed": posted("uninformed", uninformed, price=0.0, must_buy=True),
        "tariff": posted("tariff", price=tariff, must_buy=True),
    }
    for n in sorted(set(aggregators) | {1}):
        buyers = make_buyers(strategy, n, model, margin, seed, budget, capacity, believed)
        runs[n] = runner(mechanism(n), buyers, devices, slots, seed, floor, tick, slot_kwh)
    runs["one aggregator"] = runs[1]
    return runs


def summarise(repeats, aggregators):
    """Per-repeat runs -> means and 95 % intervals, and each N's gains over the
    baselines and the smaller Ns ("N=2"), paired by repeat: {"baselines": {name:
    figures}, "runs": [figures of N]}."""

    def figures(label):
        out = {}
        for name in FIGURES:
            out[name], out[name + "_ci"] = stats.mean_ci([r[label][name] for r in repeats])
        return out

    def gains(label, base):
        out = {}
        for name, figure in (("price", "mean_price"), ("revenue", "revenue_c")):
            pct = [stats.gain_pct(r[label][figure], r[base][figure]) for r in repeats]
            out[name + "_pct"], out[name + "_pct_ci"] = stats.mean_ci(pct)
        return out

    runs = []
    for n in aggregators:
        run = {"aggregators": n, **figures(n)}
        run["gain"] = {base: gains(n, base) for base in BASELINES}
        run["gain"].update({"N=%d" % m: gains(n, m) for m in aggregators if m < n})
        runs.append(run)
    return {"baselines": {base: figures(base) for base in BASELINES}, "runs": runs}


def run_experiment(aggregators=(1, 2, 3, 5, 8), devices=100, slots=50, seed=0, repeats=1,
                   market="hub", strategy="value", values="private", level=LEVEL,
                   spread=None, noise=NOISE, correlation=CORRELATION, prices=None,
                   asymmetry=0.0, margin=MARGIN, tariff=TARIFF, budget=None, capacity=None,
                   floor=FLOOR, believed=None, follow_signal=True, live=False,
                   progress=None):  # fmt: skip
    """-> {"parameters", "baselines", "runs"}; progress(fraction) as it goes. Repeat i
    uses seed "<seed>/<i>" (repeat 0: the seed itself)."""
    aggregators = sorted({int(n) for n in aggregators})
    if not aggregators or aggregators[0] < 1:
        raise ValueError("aggregators must be whole numbers >= 1")
    if market not in MARKETS or strategy not in STRATEGIES:
        raise ValueError("market must be one of %s and strategy one of %s"
                         % (", ".join(MARKETS), ", ".join(STRATEGIES)))  # fmt: skip
    if devices < 1 or slots < 1 or repeats < 1 or not margin >= 0:
        raise ValueError("devices, slots and repeats must be >= 1 and margin >= 0")
    series = None
    if prices:
        from simulator.values import read_series

        series = read_series(prices)
        spread = spread if spread is not None else spread_of(series)
    spread = SPREAD if spread is None else spread
    settings = dict(market=market, strategy=strategy, values=values, level=level,
                    spread=spread, noise=noise, correlation=correlation, series=series,
                    asymmetry=asymmetry, margin=margin, tariff=tariff, budget=budget,
                    capacity=capacity, floor=floor, believed=believed,
                    follow_signal=follow_signal)  # fmt: skip
    if live:
        devices, slots = _live(settings, devices, slots, aggregators)
    work = repeats * (len(set(aggregators) | {1}) + 3) * slots
    done = [0]

    def tick():
        done[0] += 1
        if progress:
            progress(done[0] / work)

    def repeat(i, **more):
        seed_i = seed if i == 0 else "%s/%d" % (seed, i)
        return run_repeat(seed_i, aggregators, devices, slots, **dict(settings, **more))

    per_repeat = [repeat(i, tick=tick) for i in range(repeats)]
    parameters = {"aggregators": aggregators, "devices": devices, "slots": slots,
                  "seed": seed, "repeats": repeats, "live": live, "prices": prices,
                  **{k: v for k, v in settings.items()
                     if k not in ("series", "runner")}}  # fmt: skip
    results = {"parameters": parameters, **summarise(per_repeat, aggregators)}
    if live:  # the simulation with the same parameters, to compare with
        simulated = summarise([repeat(i, runner=run_market) for i in range(repeats)],
                              aggregators)  # fmt: skip
        results["simulation"] = simulated["runs"]
        results["live_vs_simulation"] = [
            {"aggregators": run["aggregators"],
             "price_pct": stats.gain_pct(run["mean_price"], sim["mean_price"]),
             "revenue_pct": stats.gain_pct(run["revenue_c"], sim["revenue_c"])}
            for run, sim in zip(results["runs"], simulated["runs"])
        ]  # fmt: skip
    return results


def _live(settings, devices, slots, aggregators):
    """--live: the runner that starts the real processes; -> (devices, slots) capped."""
    if max(aggregators) > LIVE_AGGREGATORS:
        raise ValueError("--live runs at most %d aggregators" % LIVE_AGGREGATORS)
    if settings["market"] == "bilateral":
        from simulator.experiment_live import run_market_live

        settings["runner"] = run_market_live
        return min(devices, LIVE_DEVICES), min(slots, LIVE_SLOTS)
    from simulator import experiment_live_hub as hub_live

    if (settings["values"] != "private" or settings["strategy"] not in hub_live.STRATEGIES
            or settings["asymmetry"] or settings["series"]):  # fmt: skip
        raise ValueError(
            "--live on the hub runs private values and the %s strategies, "
            "without --asymmetry or --prices" % ", ".join(hub_live.STRATEGIES)
        )
    spec = {k: settings[k] for k in ("strategy", "level", "spread", "margin", "believed",
                                     "budget", "capacity")}  # fmt: skip
    settings["runner"] = functools.partial(hub_live.run_market_live_hub, spec=spec)
    settings["slot_kwh"] = hub_live.SLOT_KWH
    return min(devices, LIVE_HUB_DEVICES), min(slots, LIVE_HUB_SLOTS)


# --- where competition does and does not pay ---------------------------------------

CASES = (  # name, what changes from the settings given
    ("private values", {"values": "private"}),
    ("common value", {"values": "common"}),
    ("common value, truthful bids", {"values": "common", "strategy": "truthful"}),
    ("correlated values (0.8)", {"values": "correlated", "correlation": 0.8}),
    ("collusion at the reserve", {"strategy": "collusion"}),
    ("thin market (5 batteries)", {"devices": 5}),
    ("value bidders assume 3", {"strategy": "value", "believed": 3}),
    ("incumbent worth +4 c", {"asymmetry": 4.0}),
    ("adaptive learners", {"strategy": "adaptive"}),
    ("truthful bidders", {"strategy": "truthful"}),
    ("premium values (1st build)", {"values": "premium"}),
    ("bilateral auctions", {"market": "bilateral"}),
    ("batteries ignore the signal", {"follow_signal": False}),
)


def run_cases(settings, progress=None):
    """Every case at N = 1, 2 and the largest N asked (at least 3): -> [{"case",
    "changes", "gains": {"1->2", "2->max", "1 vs informed", "2 vs informed", "max vs
    informed"}, each
    (mean, 95 % half-width) of the change in owners' revenue, %, "verdict"}]."""
    top = max(max(settings["aggregators"]), 3)
    out = []
    for i, (name, changes) in enumerate(CASES):
        case = dict(settings, **changes, aggregators=(1, 2, top))

        def step(fraction, i=i, name=name):
            if progress:
                progress(name, (i + fraction) / len(CASES))

        result = run_experiment(progress=step, **case)
        runs = {r["aggregators"]: r for r in result["runs"]}
        out.append({"case": name, "changes": changes, "top": top,
                    "parameters": result["parameters"],
                    "price": {n: runs[n]["mean_price"] for n in (1, 2, top)},
                    "gains": _case_gains(case, result), "verdict": None})  # fmt: skip
        out[-1]["verdict"] = verdict(out[-1]["gains"])
    return out


def _case_gains(case, result):
    runs = {r["aggregators"]: r for r in result["runs"]}
    top = max(runs)
    return {
        "1->2": _pair(runs[2]["gain"]["one aggregator"]),
        "2->max": _pair(runs[top]["gain"]["N=2"]),
        "1 vs informed": _pair(runs[1]["gain"]["informed"]),
        "2 vs informed": _pair(runs[2]["gain"]["informed"]),
        "max vs informed": _pair(runs[top]["gain"]["informed"]),
    }


def _pair(gain):
    return gain["revenue_pct"], gain["revenue_pct_ci"]


MATERIAL_PCT = 2.0  # a change of owners' revenue smaller than this is called none


def verdict(gains):
    """Words for a case: does competition pay owners, against the informed monopsonist
    and as N grows; a change counts when its whole 95 % interval is beyond ±2 %."""

    def sign(pair):
        mean, ci = pair
        if mean is None or ci is None:
            return None
        return 1 if mean - ci > MATERIAL_PCT else -1 if mean + ci < -MATERIAL_PCT else 0

    if gains["max vs informed"][0] is None:
        return "nothing sold"
    if gains["max vs informed"][1] is None:
        return "one repeat: no interval, no verdict (--repeats 2 or more)"
    more, informed = sign(gains["2->max"]), sign(gains["max vs informed"])
    words = {1: "pays", 0: "no gain beyond ±2 %", -1: "owners earn less"}
    return "%s vs the informed monopsonist; beyond 2 aggregators: %s" % (
        words[informed],
        words.get(more, "-"),
    )
