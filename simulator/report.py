"""The experiment's results as text tables and a plot (simulator/experiment.py)."""

LABELS = {
    "informed": "informed monopsonist",
    "uninformed": "uninformed posted price",
    "tariff": "feed-in tariff",
    "one aggregator": "one aggregator",
}
MARKET_WORDS = {
    "hub": "the hub's market (one uniform price per slot, hub/market)",
    "bilateral": "bilateral sealed-bid auctions per battery (firmware/auction.py)",
}


def _pm(mean, ci, form="%.2f", scale=1.0):
    """mean ± ci as text ("-" when unknown)."""
    if mean is None:
        return "-"
    text = form % (mean * scale)
    return text if ci is None else "%s ± %s" % (text, form.replace("+", "") % (ci * scale))


def _money(cents, ci):
    """Cents as € with the decimals its size needs (the interval alike)."""
    if cents is None:
        return "-"
    euros = abs(cents) / 100
    digits = 0 if euros >= 100 or not euros else 1 if euros >= 10 else 2 if euros >= 0.1 else 4
    return _pm(cents, ci, "%%.%df" % digits, 0.01)


def describe(p):
    """One line of what was run."""
    values = {
        "private": "worth ~ %g + U[0, %g] c/kWh, private" % (p["level"], p["spread"]),
        "common": "worth ~ %g + %g C + U[0, %g] c/kWh, C common to all"
        % (p["level"], p["spread"], p["noise"]),
        "correlated": "worth ~ %g + %g (%g Z + %g U) c/kWh, Z common per offer"
        % (p["level"], p["spread"], p["correlation"], 1 - p["correlation"]),
        "premium": "worth ~ reserve + U[0, %g] c/kWh (the first build's)" % p["spread"],
    }[p["values"]]
    if p.get("prices"):
        values += "; levels from %s" % p["prices"]
    if p.get("asymmetry"):
        values += "; aggregator 1 +%g c" % p["asymmetry"]
    who = p["strategy"] + (" (shading for %d)" % p["believed"] if p.get("believed") else "")
    return ("%s; %s bidders, %s, margin %g c; %d batteries x %d slots, %d repeat%s from "
            "seed %s%s" % (MARKET_WORDS[p["market"]], who, values, p["margin"], p["devices"],
                           p["slots"], p["repeats"], "s" if p["repeats"] > 1 else "",
                           p["seed"], " (live)" if p.get("live") else ""))  # fmt: skip


def table(results):
    """The figures per baseline and N, then the gains."""
    p = results["parameters"]
    lines = [describe(p), "± is the 95 % interval across repeats; money in € over the run",
             "", "%-26s %15s %17s %16s %14s %16s %14s %8s %8s" % (
                 "", "price c/kWh", "sold kWh (share)", "owners' revenue", "owners' surplus",
                 "aggs' surplus", "welfare", "reserve", "theory")]  # fmt: skip

    def row(label, f):
        sold = "%.4g (%.0f%%)" % (f["kwh_sold"], 100 * f["sold_share"])
        lines.append("%-26s %15s %17s %16s %14s %16s %14s %8s %8s" % (
            label, _pm(f["mean_price"], f["mean_price_ci"]), sold,
            _money(f["revenue_c"], f["revenue_c_ci"]),
            _money(f["owners_surplus_c"], f["owners_surplus_c_ci"]),
            _money(f["aggregators_surplus_c"], f["aggregators_surplus_c_ci"]),
            _money(f["welfare_c"], f["welfare_c_ci"]),
            _pm(f["mean_reserve"], None), _pm(f["theory_price"], None)))  # fmt: skip

    for base in ("informed", "uninformed", "tariff"):
        label = LABELS[base] + (" %g c" % p["tariff"] if base == "tariff" else "")
        row(label, results["baselines"][base])
    for run in results["runs"]:
        row("N = %d" % run["aggregators"], run)
    lines += ["", "owners' revenue of N aggregators over each baseline, % (price, %):",
              "%-6s" % "N" + "".join("%30s" % LABELS[b] for b in LABELS)]  # fmt: skip
    for run in results["runs"]:
        cells = []
        for base in LABELS:
            g = run["gain"][base]
            cells.append("%30s" % ("%s (%s)" % (
                _pm(g["revenue_pct"], g["revenue_pct_ci"], "%+.1f"),
                _pm(g["price_pct"], None, "%+.1f"))))  # fmt: skip
        lines.append("%-6d" % run["aggregators"] + "".join(cells))
    if results.get("live_vs_simulation"):
        lines += ["", "live against the simulation with the same parameters (slot energy, "
                  "seeds, values):", "%-6s %22s %22s %14s %16s" % (
                      "N", "price live / sim", "revenue € live / sim", "price diff",
                      "revenue diff")]  # fmt: skip
        for cmp, live, sim in zip(results["live_vs_simulation"], results["runs"],
                                  results["simulation"]):  # fmt: skip
            lines.append("%-6d %22s %22s %14s %16s" % (
                cmp["aggregators"], "%s / %s" % (_pm(live["mean_price"], None),
                                                 _pm(sim["mean_price"], None)),
                "%s / %s" % (_money(live["revenue_c"], None), _money(sim["revenue_c"], None)),
                _pm(cmp["price_pct"], None, "%+.1f%%"),
                _pm(cmp["revenue_pct"], None, "%+.1f%%")))  # fmt: skip
    return "\n".join(lines)


def cases_table(cases):
    """Where competition pays owners and where it does not."""
    top = cases[0]["top"] if cases else 0
    lines = ["owners' revenue, %% change (± 95 %%): N=1 -> 2, N=2 -> %d, and N=1, 2, %d "
             "against the informed monopsonist" % (top, top), "",
             "%-28s %14s %14s %14s %14s %14s  %s" % (
                 "case", "1 -> 2", "2 -> %d" % top, "1 vs informed", "2 vs informed",
                 "%d vs informed" % top, "verdict")]  # fmt: skip
    for case in cases:
        g = case["gains"]
        keys = ("1->2", "2->max", "1 vs informed", "2 vs informed", "max vs informed")
        lines.append("%-28s %14s %14s %14s %14s %14s  %s" % (
            case["case"], *(_pm(*g[k], "%+.1f") for k in keys), case["verdict"]))  # fmt: skip
    return "\n".join(lines)


def plot(results, path):
    """Owners' revenue gain over each baseline vs N, with its 95 % interval."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    p, runs = results["parameters"], results["runs"]
    ns = [r["aggregators"] for r in runs]
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.5))
    for base, color in (
        ("informed", "navy"),
        ("uninformed", "teal"),
        ("one aggregator", "darkorange"),
    ):  # the tariff's gain: the table
        gains = [r["gain"][base] for r in runs]
        keep = [i for i, g in enumerate(gains) if g["revenue_pct"] is not None]
        left.errorbar([ns[i] for i in keep], [gains[i]["revenue_pct"] for i in keep],
                      yerr=[gains[i]["revenue_pct_ci"] or 0 for i in keep], fmt="o-",
                      color=color, ms=4, capsize=3, label="vs " + LABELS[base])  # fmt: skip
    left.axhline(0, color="black", lw=0.8)
    left.set(xlabel="competing aggregators N", ylabel="owners' revenue gain, % (95 % CI)",
             xticks=ns, title="gain over each baseline")  # fmt: skip
    left.legend(fontsize=8)
    prices = [(n, r["mean_price"], r["mean_price_ci"] or 0) for n, r in zip(ns, runs)
              if r["mean_price"] is not None]  # fmt: skip
    if prices:
        right.errorbar([x[0] for x in prices], [x[1] for x in prices],
                       yerr=[x[2] for x in prices], fmt="o-", color="navy", ms=4, capsize=3,
                       label="measured")  # fmt: skip
    theory = [(n, r["theory_price"]) for n, r in zip(ns, runs) if r["theory_price"] is not None]
    if theory:
        right.plot([t[0] for t in theory], [t[1] for t in theory], "-", color="orange", lw=5,
                   alpha=0.5, label="theory")  # fmt: skip
    informed = results["baselines"]["informed"]["mean_price"]
    if informed is not None:
        right.axhline(informed, color="grey", ls=":", label=LABELS["informed"])
    right.set(xlabel="competing aggregators N", ylabel="mean price paid to owners (c/kWh)",
              xticks=ns, title="price")  # fmt: skip
    right.legend(fontsize=8)
    for axes in (left, right):
        axes.grid(alpha=0.3)
    figure.suptitle("gridbid: %s market, %s bidders, %s values, %d batteries x %d slots, "
                    "%d repeats" % (p["market"], p["strategy"], p["values"], p["devices"],
                                    p["slots"], p["repeats"]), fontsize=10)  # fmt: skip
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
