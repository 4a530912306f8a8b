"""`gridbid experiment`: what competition pays owners on the hub's own market, against
single-buyer baselines, with the firmware's reserve rules; where it does not pay; the
bilateral market against first-price theory; the command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gridbid import cli
from simulator import experiment, vm
from simulator.model import Battery, firmware
from simulator.values import read_series, spread_of

SMALL = {"aggregators": [1, 2, 3, 5], "devices": 40, "slots": 20, "seed": 1, "repeats": 3}
SAMPLE = Path(experiment.__file__).parent / "data" / "prices-synthetic.csv"


@pytest.fixture(scope="module")
def hub_run():
    return experiment.run_experiment(**SMALL)


def revenue_gain(run, base):
    gain = run["gain"][base]
    return gain["revenue_pct"], gain["revenue_pct_ci"]


def test_competition_in_the_hubs_market_pays_owners_more_than_each_baseline(hub_run):
    assert [r["aggregators"] for r in hub_run["runs"]] == [1, 2, 3, 5]
    assert hub_run["parameters"]["market"] == "hub" and hub_run["parameters"]["repeats"] == 3
    informed = hub_run["baselines"]["informed"]
    assert informed["owners_surplus_c"] == pytest.approx(0.0, abs=1e-6)  # it pays the reserve
    one, *more = hub_run["runs"]
    assert one["sold_share"] < 0.6  # a lone buyer bidding reserves crosses only mid-book
    revenues = [r["revenue_c"] for r in hub_run["runs"]]
    assert revenues == sorted(revenues)
    for run in more:
        for base in ("informed", "uninformed", "tariff", "one aggregator"):
            mean, ci = revenue_gain(run, base)
            assert mean - ci > 0, (run["aggregators"], base, mean, ci)
        assert run["mean_price"] > informed["mean_price"]
        assert run["mean_bidders"] > 1
        for name in ("mean_price", "revenue_c", "welfare_c"):
            assert run[name + "_ci"] is not None and run[name + "_ci"] >= 0


def test_the_hubs_price_matches_the_uniform_price_theory(hub_run):
    """The large-market clearing price (markets.uniform_theory) per slot, weighted as the
    measurement is: within 2 % (finite books and the midpoint rule differ from it by
    less; seeds 1-3 at this size: 0.0-0.6 %)."""
    for run in hub_run["runs"]:
        assert run["theory_price"] == pytest.approx(run["mean_price"], rel=0.02), run


def test_common_values_and_collusion_show_no_gain():
    """Common value without private noise: truthful bidders already bid it at N = 2, so
    8 pay no more (private values: ~10 % more). A cartel bidding the reserves acts as
    one buyer: N = 5 pays what one aggregator pays."""
    size = {"aggregators": [1, 2, 8], "devices": 40, "slots": 20, "seed": 2, "repeats": 3}
    common = experiment.run_experiment(values="common", noise=0.0, strategy="truthful", **size)
    private = experiment.run_experiment(strategy="truthful", **size)
    mean, ci = revenue_gain(common["runs"][2], "N=2")
    assert abs(mean) < 1.5, (mean, ci)
    assert revenue_gain(private["runs"][2], "N=2")[0] > 5.0
    cartel = experiment.run_experiment(strategy="collusion", **dict(size, aggregators=[1, 5]))
    mean, ci = revenue_gain(cartel["runs"][1], "one aggregator")
    assert abs(mean) < 5.0, (mean, ci)
    mean, ci = revenue_gain(cartel["runs"][1], "informed")
    assert mean + ci < 0  # the colluders' reserves cross only mid-book


def test_bilateral_auctions_match_first_price_theory():
    """The first build's market (each battery's sealed-bid auction) with premium values:
    the textbook r + s(N-1)/(N+1), within 0.15 c/kWh (2.5 % of the spread)."""
    results = experiment.run_experiment(market="bilateral", values="premium", **SMALL)
    assert results["baselines"]["informed"]["sold_share"] == pytest.approx(1.0)  # worths >= r
    for run in results["runs"]:
        n = run["aggregators"]
        assert run["theory_price"] == pytest.approx(
            run["mean_reserve"] + 6.0 * (n - 1) / (n + 1), abs=0.15)  # fmt: skip
        assert run["mean_price"] == pytest.approx(run["theory_price"], abs=0.15)


def test_the_cases_say_where_competition_does_not_pay():
    cases = experiment.run_cases({**SMALL, "aggregators": [1, 2, 5], "devices": 20,
                                  "slots": 10, "repeats": 2})  # fmt: skip
    by_name = {c["case"]: c for c in cases}
    assert len(cases) == len(experiment.CASES) and cases[0]["top"] == 5
    assert by_name["collusion at the reserve"]["verdict"].startswith("owners earn less")
    assert by_name["private values"]["gains"]["max vs informed"][0] > 0
    for case in cases:
        assert set(case["gains"]) == {"1->2", "2->max", "1 vs informed", "2 vs informed",
                                      "max vs informed"}  # fmt: skip


def test_a_seed_repeats_a_run_exactly_and_repeats_differ():
    small = dict(SMALL, aggregators=[2], devices=10, slots=5, repeats=2)
    first = experiment.run_experiment(**small)
    assert first == experiment.run_experiment(**small)
    assert first != experiment.run_experiment(**dict(small, seed=2))
    single = experiment.run_experiment(**dict(small, repeats=1))
    assert single["runs"][0]["mean_price_ci"] is None  # one repeat: no interval


def test_progress_reaches_the_end_in_order():
    seen = []
    experiment.run_experiment(**dict(SMALL, devices=5, slots=4, repeats=2), progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 10


def test_budget_and_capacity_limit_what_aggregators_buy():
    results = experiment.run_experiment(aggregators=[1, 2, 5], devices=40, slots=10, seed=2,
                                        capacity=5.0, budget=150.0)  # fmt: skip
    for run in results["runs"]:
        assert run["kwh_sold"] / 10 <= run["aggregators"] * 5.0 + 1e-6
        # they pay the clearing price, never above their bids: within budget per slot
        assert run["revenue_c"] / 10 <= run["aggregators"] * 150.0 + 1e-6


def test_a_price_series_calibrates_the_levels():
    series = read_series(SAMPLE)
    assert len(series) == 96 and "SYNTHETIC" in SAMPLE.read_text()[:200]
    results = experiment.run_experiment(**dict(SMALL, prices=str(SAMPLE), repeats=1))
    assert results["parameters"]["spread"] == pytest.approx(spread_of(series))
    assert results["parameters"]["prices"] == str(SAMPLE)


@pytest.mark.parametrize("text, word", [("time,price\n2026,abc\n2026,1\n", "line 3"),
                                        ("time,price\n", "fewer than 2"),
                                        ("t,p\n1,1\n2,nan\n", "not a price")])  # fmt: skip
def test_a_bad_price_series_is_one_clear_error(tmp_path, text, word):
    bad = tmp_path / "bad.csv"
    bad.write_text(text.replace("abc\n2026,1", "1\n2026,abc") if "line 3" in word else text)
    with pytest.raises(ValueError, match=word):
        read_series(bad)


def test_batteries_use_the_firmware_reserve():
    battery = Battery(1001, seed=1)
    offer = battery.offer(0, signal=30.0)  # a high signal: the reserve is 90 % of it
    assert offer.reserve == 27.0 and 0 < offer.kwh <= 2.5
    reserve_py = firmware("reserve")
    assert battery.cost == reserve_py.reserve_price(14.0, battery.soc_pct(), battery.health)
    assert firmware("auction").__file__ == str(vm.FIRMWARE / "auction.py")


def test_cli_prints_the_tables_and_writes_json_and_plots(tmp_path, capsys):
    out_json, png, svg = tmp_path / "r.json", tmp_path / "p.png", tmp_path / "p.svg"
    args = ["experiment", "--aggregators", "1,2,3", "--devices", "10", "--slots", "5",
            "--repeats", "2", "--seed", "3"]  # fmt: skip
    code = cli.main([*args, "--json", str(out_json), "--plot", str(png)])
    out, err = capsys.readouterr()
    assert code == 0 and "informed monopsonist" in out and "100%" in err
    data = json.loads(out_json.read_text())
    assert data["parameters"]["seed"] == 3 and len(data["runs"]) == 3
    expected = experiment.run_experiment(aggregators=[1, 2, 3], devices=10, slots=5, seed=3,
                                         repeats=2)  # fmt: skip
    rows = {line.split()[2]: line for line in out.splitlines() if line.startswith("N = ")}
    for run, again in zip(data["runs"], expected["runs"]):
        assert run["mean_price"] == pytest.approx(again["mean_price"])
        assert ("%.2f" % run["mean_price"]) in rows[str(run["aggregators"])]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    assert cli.main([*args, "--plot", str(svg)]) == 0
    assert "<svg" in svg.read_text()[:1000] and svg.stat().st_size > 1000


@pytest.mark.parametrize(
    "bad, word",
    [
        (["--aggregators", "0"], "--aggregators"),
        (["--aggregators", "a,b"], "--aggregators"),
        (["--aggregators", ""], "--aggregators"),
        (["--devices", "many"], "--devices"),
        (["--slots", "0"], "--slots"),
        (["--repeats", "0"], "--repeats"),
        (["--strategy", "sniper"], "--strategy"),
        (["--values", "magic"], "--values"),
        (["--market", "dark"], "--market"),
        (["--correlation", "2"], "--correlation"),
        (["--prices", "/nonexistent.csv"], "--prices"),
        (["--plot", "out.pdf"], "--plot"),
        (["--cases", "--plot", "x.png"], "--plot"),
        (["--live", "--values", "common"], "--live"),
        (["--live", "--strategy", "collusion"], "--live"),
        (["--live", "--market", "bilateral", "--aggregators", "17"], "--live"),
    ],
)
def test_bad_arguments_give_one_line_and_exit_2(bad, word, capsys):
    assert cli.main(["experiment", *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0] and "Traceback" not in err[0], err


def test_bad_arguments_from_the_shell_have_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "gridbid.cli", "experiment", "--aggregators", "1,x"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_live_firmware_devices_agree_with_the_simulation():
    """2 batteries run the firmware (MicroPython VM, else CPython) for one slot, with
    2 aggregators bidding over loopback ETP in the bilateral market."""
    live = experiment.run_experiment(aggregators=[2], devices=2, slots=1, seed=5, live=True,
                                     market="bilateral", values="premium")  # fmt: skip
    (run,) = live["runs"]
    assert live["parameters"]["live"] and run["aggregators"] == 2
    assert run["kwh_sold"] > 0 and run["mean_bidders"] == 2
    assert run["mean_price"] > run["mean_reserve"]  # two value bidders shade above it
    sim = experiment.run_experiment(aggregators=[2], devices=2, slots=1, seed=5,
                                    market="bilateral", values="premium")  # fmt: skip
    assert run["mean_price"] == pytest.approx(sim["runs"][0]["mean_price"], rel=0.05)


def test_live_hub_processes_agree_with_the_simulation():
    """`gridbid hub run`, two `gridbid aggregator run` processes and three batteries on
    the VM, for two 8-s slots (and the same with one aggregator, the baseline): the hub
    waits for both (hub.min_aggregators), the aggregators draw the simulation's values
    (their seed), and the store's clearing gives the simulation's price and revenue
    within 10 % (measured: within 0.1 %)."""
    results = experiment.run_experiment(aggregators=[2], devices=3, slots=2, seed=5, live=True)
    assert results["parameters"]["live"] and results["parameters"]["market"] == "hub"
    (run,) = results["runs"]
    assert run["kwh_sold"] > 0 and run["aggregators_surplus_c"] is None  # private to them
    (cmp,) = results["live_vs_simulation"]
    assert abs(cmp["price_pct"]) < 10 and abs(cmp["revenue_pct"]) < 10, cmp
    assert results["simulation"][0]["kwh_offered"] == pytest.approx(run["kwh_offered"])
