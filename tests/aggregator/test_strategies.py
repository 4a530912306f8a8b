"""Aggregators' bidding strategies (aggregator/strategies.py): bounds, learning, limits,
reputation."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aggregator.strategies import (
    AdaptiveBidder,
    Bid,
    Colluder,
    Offer,
    Outcome,
    SingleUtility,
    TruthfulBidder,
    ValueBidder,
    equilibrium_bid,
    expected_price,
    observe_clearing,
)

prices = st.floats(min_value=1.0, max_value=60.0)


def offer(device=1, kwh=2.0, reserve=15.0, slot=0, signal=0.0):
    return Offer(device, kwh, reserve, slot, signal)


def lost(device, slot, winning_price, bid=None):
    return Outcome(device, slot, False, bid, 0.0, winning_price)


def won(device, slot, bid, kwh=None, delivered=None):
    return Outcome(device, slot, True, bid.price, kwh or bid.kwh, bid.price, kwh or bid.kwh,
                   delivered)  # fmt: skip


@given(value=prices, margin=st.floats(0.0, 5.0), reserve=prices, bidders=st.integers(1, 20))
def test_value_bidder_never_bids_above_value_less_margin_and_skips_high_reserves(
    value, margin, reserve, bidders
):
    bid = ValueBidder("a", value, margin, bidders=bidders).bid(offer(reserve=reserve))
    worth = value - margin
    if reserve > worth:
        assert bid is None
    else:
        assert bid is not None and reserve <= bid.price <= worth


def test_value_bidder_bids_the_first_price_equilibrium():
    assert ValueBidder("a", 21.0, 1.0, bidders=1).bid(offer()).price == 15.0  # alone: the reserve
    assert ValueBidder("a", 21.0, 1.0, bidders=2).bid(offer()).price == 17.5  # 15 + 5 x 1/2
    assert ValueBidder("a", 21.0, 1.0, bidders=5).bid(offer()).price == 19.0  # 15 + 5 x 4/5
    assert equilibrium_bid(20.0, 15.0, 5) == 19.0


def test_expected_price_is_the_textbook_formula_and_matches_a_monte_carlo_auction():
    r, s = 15.0, 6.0
    for n in (1, 2, 3, 5, 8):
        assert expected_price(r, s, n) == pytest.approx(r + s * (n - 1) / (n + 1))
    rng, n, draws = random.Random(1), 3, 20_000  # worths U[r, r + s]; equilibrium bids
    mean = sum(max(equilibrium_bid(r + rng.uniform(0, s), r, n) for _ in range(n))
               for _ in range(draws)) / draws  # fmt: skip
    assert mean == pytest.approx(expected_price(r, s, n), abs=0.05)  # SE ~0.01
    assert expected_price(r, s, 3, active=2) == pytest.approx(r + s * 2 / 3 * 2 / 3)


def test_adaptive_bidder_shades_up_after_losses_and_down_after_wins():
    buyer = AdaptiveBidder("a", 26.0, 1.0)  # worth 25: premium 10 over a 15 reserve
    start = buyer.bid(offer(slot=0)).price
    for slot in range(1, 30):  # rivals keep winning at 19 c/kWh (premium 4)
        buyer.observe(lost(1, slot - 1, 19.0, start))
        raised = buyer.bid(offer(slot=slot)).price
    assert start < 15.1 and 19.0 < raised <= 19.0 + 2 * buyer.tick  # just above what wins
    previous = raised
    for slot in range(30, 60):  # now it wins every time: it probes lower, slowly
        bid = buyer.bid(offer(slot=slot))
        buyer.observe(won(1, slot, bid))
        assert bid.price <= previous
        previous = bid.price
    assert buyer.bid(offer(slot=60)).price < raised - 0.2


def test_adaptive_bidder_starts_from_the_price_signal():
    assert AdaptiveBidder("a", 26.0).bid(offer(signal=18.0)).price == 18.0  # 15 + min(3, 10/2)
    assert AdaptiveBidder("a", 26.0).bid(offer(signal=0.0)).price == pytest.approx(15.05)


@given(
    worth=st.floats(10.0, 40.0),
    events=st.lists(st.tuples(st.booleans(), st.floats(0.0, 50.0)), max_size=40),
)
def test_adaptive_bidder_stays_between_reserve_and_worth(worth, events):
    buyer = AdaptiveBidder("a", worth + 1.0, 1.0)
    for slot, (win, price) in enumerate(events):
        bid = buyer.bid(offer(slot=slot))
        if worth < 15.0:
            assert bid is None
            continue
        assert 15.0 <= bid.price <= worth
        buyer.observe(won(1, slot, bid) if win else lost(1, slot, max(price, 15.0), bid))


def test_single_utility_posts_its_price_take_it_or_leave_it():
    assert SingleUtility().bid(offer(reserve=17.3)).price == 17.3  # posts the reserve offered
    tariff = SingleUtility(price=16.0)
    assert tariff.bid(offer(reserve=15.0, slot=0)).price == 16.0
    assert tariff.bid(offer(reserve=16.5, slot=1)) is None  # below the battery's reserve


def test_capacity_per_slot_is_respected_with_auctions_open_at_once():
    buyer = ValueBidder("a", 30.0, capacity=5.0)
    bids = [buyer.bid(offer(device=d, kwh=2.0)) for d in (1, 2, 3, 4)]
    assert [b and b.kwh for b in bids] == [2.0, 2.0, 1.0, None]  # held until answered
    buyer.observe(lost(2, 0, 20.0, bids[1].price))  # a lost bid frees its kWh
    assert buyer.bid(offer(device=5, kwh=2.0)).kwh == 2.0
    buyer.observe(won(1, 0, bids[0]))
    assert buyer.left()[1] == 0.0
    assert buyer.bid(offer(device=6, kwh=2.0, slot=1)).kwh == 2.0  # a new slot, a new allowance


def test_budget_per_slot_is_respected():
    buyer = ValueBidder("a", 21.0, 1.0, bidders=1, budget=100.0)  # bids the 15 c reserve
    first = buyer.bid(offer(device=1, kwh=5.0))
    second = buyer.bid(offer(device=2, kwh=5.0))
    assert first.kwh == 5.0 and second.kwh == pytest.approx(1.6666)  # 75 c + 25 c
    assert first.price * first.kwh + second.price * second.kwh <= 100.0
    assert buyer.bid(offer(device=3, kwh=5.0)) is None
    with pytest.raises(ValueError):
        ValueBidder("b", 21.0, budget=-1.0)


@pytest.mark.parametrize("kind", [ValueBidder, AdaptiveBidder])
def test_an_unreliable_device_gets_lower_bids(kind):
    buyer = kind("a", 22.0, 1.0, **({"bidders": 3} if kind is ValueBidder else {}))
    for slot in range(5):  # 2 kWh contracts; device 2 delivers 80 % of what it sells
        for device, share in ((1, 1.0), (2, 0.8)):
            bid = buyer.bid(offer(device=device, slot=slot, signal=25.0))
            buyer.observe(won(device, slot, bid, delivered=bid.kwh * share))
    assert buyer.reputation(1) == 1.0
    assert buyer.reputation(2) == pytest.approx((8 + 5) / (10 + 5))  # with 5 kWh of prior
    good, bad = (buyer.bid(offer(device=d, slot=9, signal=25.0)) for d in (1, 2))
    assert 15.0 < bad.price < good.price
    bid = buyer.bid(offer(device=3, slot=9))
    buyer.observe(won(3, 9, bid, delivered=0.0))  # 2 kWh sold, none delivered: reputation 5/7
    assert buyer.bid(offer(device=3, slot=10)) is None  # 22 x 5/7 - 1 < the 15 c reserve


def test_experiment_buyers_are_seeded_and_independent():
    from simulator.experiment import make_buyers
    from simulator.values import Values

    values = Values("premium", seed=4)
    one = [b.bid(offer()).price for b in make_buyers("value", 3, values, 1.0, seed=4)]
    again = [b.bid(offer()).price for b in make_buyers("value", 3, values, 1.0, seed=4)]
    assert one == again and len(set(one)) == 3
    draw = values.draw(2, 1.0)
    assert all(16.0 <= draw(offer(), random.Random(i)) <= 22.0 for i in range(50))
    with pytest.raises(ValueError):
        make_buyers("sniper", 2, values, 1.0, seed=1)


def test_truthful_colluding_and_posted_buyers():
    assert TruthfulBidder("t", 21.0, 1.0).bid(offer(reserve=15.0)) == (20.0, 2.0, 20.0)
    assert TruthfulBidder("t", 15.5, 1.0).bid(offer(reserve=15.0)) is None  # worth 14.5
    cartel = [Colluder(k, 30.0, 1.0, index=k, members=3) for k in range(3)]
    for device in range(1, 10):  # each battery's reserve is bid once, by one member
        bids = [m.bid(offer(device=device)) for m in cartel]
        assert [b.price for b in bids if b] == [15.0]
    informed = SingleUtility(value=17.0, margin=1.0)  # worth 16
    assert informed.bid(offer(reserve=15.0)).worth == 16.0
    assert informed.bid(offer(device=2, reserve=16.5)) is None  # not worth its reserve
    obliged = SingleUtility(price=15.0, value=15.5, must_buy=True)
    assert obliged.bid(offer(reserve=14.0)).price == 15.0


def test_a_buyer_learns_a_uniform_clearing_as_the_hub_tells_it():
    """The pooled book fills its highest layers first, from any battery: the kWh go to
    the bids from the highest price down, never to one below the price."""
    buyer = ValueBidder("a", 30.0, bidders=3, capacity=10.0)  # bids 24.33 on a 15 c reserve
    bids = {d: (offer(device=d), buyer.bid(offer(device=d))) for d in (1, 2)}
    bids[3] = (offer(device=3, reserve=16.0), Bid(16.5, 2.0))  # a low layer
    assert buyer.left()[1] == pytest.approx(6.0)  # two 2 kWh bids held
    seen = []
    buyer.learn = lambda offer, bid, outcome: seen.append(outcome)
    observe_clearing(buyer, bids, {7: 2.0, 8: 1.5}, 18.0)  # filled from batteries 7 and 8
    assert buyer.bought == 3.5 and buyer.left()[1] == pytest.approx(6.5) and not buyer.holds
    assert [(o.device_id, o.won, o.kwh) for o in seen] == [(1, True, 2.0), (2, True, 1.5)]
    bid = buyer.bid(offer(device=3, reserve=16.0, slot=1))  # below a clearing price: lost
    observe_clearing(buyer, {3: (offer(device=3, reserve=16.0, slot=1), bid)}, {}, 99.0)
    assert seen[-1].device_id == 3 and not seen[-1].won and seen[-1].kwh == 0.0


def test_a_slot_that_traded_nothing_is_learnt_as_lost_not_a_traceback():
    """Found by bench/soak.py (1,000 batteries): bids refused as late at the gate leave
    the slot with no trade (price None); the hosted trader's callback raised TypeError
    on `price - 1e-9` and the strategy learnt nothing. Failed before the fix."""
    buyer = ValueBidder("a", 30.0, bidders=3, capacity=10.0)
    bids = {d: (offer(device=d), buyer.bid(offer(device=d))) for d in (1, 2)}
    seen = []
    buyer.learn = lambda offer, bid, outcome: seen.append(outcome)
    observe_clearing(buyer, bids, {}, None)
    assert [(o.device_id, o.won, o.kwh) for o in seen] == [(1, False, 0.0), (2, False, 0.0)]
    assert not buyer.holds and buyer.left()[1] == pytest.approx(10.0)
