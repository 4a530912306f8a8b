"""The experiment's markets: the hub's (MarketMaker and clear() without sockets), books
with known answers, the same trades as driving MarketSlot directly or through the real
SQLite store, and the theory of the midpoint uniform price against Monte Carlo."""

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aggregator.strategies import Offer, SingleUtility, TruthfulBidder, ValueBidder, posted_price
from hub.market.clearing import ASK, BID, MarketSlot, Order, clear
from hub.store import Store
from simulator import markets


def offers(*asks, slot=0):
    return [Offer(1001 + i, kwh, reserve, slot) for i, (reserve, kwh) in enumerate(asks)]


def test_a_book_with_a_known_answer_clears_at_the_competitive_midpoint():
    """One 1 kWh offer at 15 c; truthful buyers worth 20 and 18: the 20 c bid fills, the
    price is midway between it and the best bid left out, 18: 19 c."""
    buyers = [TruthfulBidder(1, 21.0, 1.0), TruthfulBidder(2, 19.0, 1.0)]
    traded = markets.HubMarket().trade(0, offers((15.0, 1.0)), buyers, random.Random(1))
    assert traded.sold == [(1001, 1.0, 19.0, None)]
    assert traded.buyers_c == pytest.approx(1.0)  # buyer 1: (20 - 19) x 1 kWh
    assert traded.bidders == 2.0 and buyers[0].bought == 1.0 and buyers[1].bought == 0.0


def test_a_lone_buyer_bidding_each_reserve_buys_only_half_the_book():
    """Bids equal to the asks cross only up to the median: asks at 14..17 c, 1 kWh each,
    bids at the same prices: 2 kWh trade at 15.5 c (between 15 and 16)."""
    book = offers((14.0, 1.0), (15.0, 1.0), (16.0, 1.0), (17.0, 1.0))
    lone = ValueBidder(1, 40.0, 1.0, bidders=1)  # bids the reserve: n = 1
    traded = markets.HubMarket().trade(0, book, [lone], random.Random(1))
    assert sorted(d for d, *_ in traded.sold) == [1001, 1002]
    assert {price for _d, _k, price, _t in traded.sold} == {15.5}
    assert sum(k for _d, k, _p, _t in traded.sold) == pytest.approx(2.0)


@settings(max_examples=60, deadline=None)
@given(
    # offers in 0.1 Wh and worths in 1/100 c, the grids strategies bid on
    asks=st.lists(
        st.tuples(
            st.integers(1000, 2500).map(lambda c: c / 100),
            st.integers(1, 50_000).map(lambda w: w / 10_000),
        ),
        min_size=1,
        max_size=12,
    ),
    worths=st.lists(st.integers(500, 3000).map(lambda c: c / 100), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
)
def test_the_experiments_hub_market_is_marketslot_driven_directly(asks, worths, seed):
    book = offers(*asks)
    buyers = [TruthfulBidder(k + 1, w, 0.0) for k, w in enumerate(worths)]
    traded = markets.HubMarket().trade(0, book, buyers, random.Random(seed))
    # The same book by hand: asks first, then each buyer's layers in the arrival order
    slot = MarketSlot("rt30gate5.direct.%d" % (markets.FIRST_SLOT * markets.SLOT_S))
    for o in book:
        slot.ask(o.device_id, o.reserve, o.kwh)
    for k in random.Random(seed).sample(range(len(worths)), len(worths)):
        for o in book:
            if worths[k] >= o.reserve:  # a bid's price is rounded down to 1/100 c
                slot.bid(k + 1, max(o.reserve, math.floor(worths[k] * 10_000) / 10_000), o.kwh)
    result = slot.clear()
    expected = sorted((owner, kwh) for _id, owner, side, kwh in result.fills if side == ASK)
    assert sorted((d, k) for d, k, _p, _t in traded.sold) == expected
    if result.price is None:
        assert traded.sold == [] and result.volume_kwh == 0
    else:
        assert {p for _d, _k, p, _t in traded.sold} == {result.price}


def test_the_real_store_clears_the_same_slots(tmp_path):
    """The experiment keeps its books in memory (BookStore); the hub's SQLite store gives
    the same trades, slot after slot."""
    store = Store(tmp_path / "hub.sqlite")
    for device in range(1001, 1011):
        store.add_device(device, device, "127.0.0.1")

    def run(market):
        buyers = [ValueBidder(k, lambda o, rng: 16 + 6 * rng.random(), 1.0, bidders=3,
                              rng=random.Random(k)) for k in (1, 2, 3)]  # fmt: skip
        rng, out = random.Random(5), []
        for slot in range(4):
            book = offers(*[(14 + (d * 7 + slot) % 5, 1.0 + d % 3) for d in range(10)],
                          slot=slot)  # fmt: skip
            out.append(market.trade(slot, book, buyers, rng))
        return out

    stored = run(markets.HubMarket(store))
    assert stored == run(markets.HubMarket())
    # A hub restarted on that store rebuilds each book from its rows and clears it the same
    again = markets.HubMarket(store).maker
    for slot, traded in enumerate(stored):
        start = (markets.FIRST_SLOT + slot) * markets.SLOT_S
        name = again.grid.slot_name("experiment", start)
        assert len(again.book(name).layers) == len(store.bids(name)) > 10
        result, _trades = again.clear(name, start - markets.GATE_S)
        assert sorted((o, k) for _i, o, side, k in result.fills if side == ASK) == sorted(
            (d, k) for d, k, _p, _t in traded.sold)  # fmt: skip
        assert {p for _d, _k, p, _t in traded.sold} == {result.price}
    store.close()


def test_uniform_price_theory_matches_monte_carlo():
    """E[price] = r + a (2m(N-1)+1)/(2(Nm+1)) for m equal asks and N bids on each,
    uniform on [r, r + a]; 4000 books each, clear() itself. The tolerance is 4 standard
    errors of the Monte Carlo mean (p < 1e-4 per case)."""
    rng = np.random.default_rng(3)
    r, a = 15.0, 6.0
    for m, n in ((1, 1), (1, 2), (1, 5), (3, 1), (4, 3), (10, 2), (8, 8)):
        prices = []
        for _ in range(4000):
            asks = [Order(i, ASK, 1000 + i, r, 1.0) for i in range(m)]
            bids = [Order(m + i, BID, i % n, float(b), 1.0)
                    for i, b in enumerate(r + a * rng.random(n * m))]  # fmt: skip
            prices.append(clear(bids, asks).price)
        mean, se = np.mean(prices), np.std(prices) / np.sqrt(len(prices))
        assert abs(mean - markets.uniform_expected(r, a, m, n)) < 4 * se + 1e-9, (m, n, mean)


def test_the_large_market_theory_is_the_formulas_limit():
    r, s = 15.0, 6.0
    asks = [(r, 1.0, r, s)] * 200
    for n in (2, 3, 5, 8):
        limit = markets.uniform_theory(asks, n, 1.0)
        assert limit == pytest.approx(r + s * (n - 1) / n, abs=0.01)
        assert limit == pytest.approx(markets.uniform_expected(r, s, 200, n), abs=0.05)
        shaded = markets.uniform_theory(asks, n, (n - 1) / n)  # value bidders: a = s (n-1)/n
        assert shaded == pytest.approx(r + s * ((n - 1) / n) ** 2, abs=0.01)
    # one buyer bidding the reserves: the book crosses at the median reserve
    spread_out = [(14.0 + i, 1.0, 30.0, 1.0) for i in range(5)]
    assert markets.uniform_theory(spread_out, 1, 0.0) == pytest.approx(16.0, abs=0.01)


def test_the_uninformed_buyers_posted_price_is_optimal_on_a_grid():
    rng = random.Random(4)
    for _ in range(50):
        asks = [(rng.uniform(14, 22), rng.uniform(0.1, 3)) for _ in range(rng.randint(1, 30))]
        worth = rng.uniform(12, 24)

        def profit(p, asks=asks, worth=worth):
            return (worth - p) * sum(kwh for reserve, kwh in asks if reserve <= p)

        best = posted_price(asks, worth)
        grid = [12 + i * 0.001 for i in range(12_001)]
        top = max(profit(p) for p in grid)
        if best is None:
            assert top <= 0 and all(reserve > worth for reserve, _k in asks)
        else:
            assert profit(best) >= top - 1e-9 and best <= worth


def test_posted_price_baselines_buy_what_their_price_and_worth_allow():
    book = offers((14.0, 1.0), (16.0, 2.0), (19.0, 1.0))
    informed = SingleUtility("informed", value=lambda o, rng: 18.0, margin=1.0)  # worth 17
    traded = markets.PostedMarket().trade(0, book, [informed], random.Random(1))
    assert [(d, k, p) for d, k, p, _t in traded.sold] == [(1001, 1.0, 14.0), (1002, 2.0, 16.0)]
    assert traded.buyers_c == pytest.approx(3.0 + 2.0)  # (17-14) x 1 + (17-16) x 2
    tariff = SingleUtility("tariff", price=15.0, value=lambda o, rng: 15.5, must_buy=True)
    traded = markets.PostedMarket().trade(0, book, [tariff], random.Random(1))
    assert [(d, p) for d, _k, p, _t in traded.sold] == [(1001, 15.0)]
    assert traded.buyers_c == pytest.approx(-0.5)  # obliged: worth 14.5 < 15
