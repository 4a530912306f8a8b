"""The uniform-price double auction: hand-made books with known answers for
each clause of the clearing rule (hub/market/clearing.py), and random books
checked against an independent welfare maximum (scipy's LP) and the
properties any uniform-price clearing must have."""

import copy
import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.market.clearing import ASK, BID, MarketSlot, Order, clear, welfare
from hub.market.welfare_lp import lp_welfare_and_volume
from protocol import contract


def bid(order_id, price, kwh, owner="agg"):
    return Order(order_id, BID, owner, price, kwh)


def ask(order_id, price, kwh, owner="bat"):
    return Order(order_id, ASK, owner, price, kwh)


def filled(result):
    """order id -> kWh filled."""
    return {order_id: kwh for order_id, _owner, _side, kwh in result.fills}


# --- hand-made books ---------------------------------------------------------------


def test_simple_cross_trades_at_the_midpoint():
    result = clear([bid(0, 20, 10)], [ask(1, 10, 10)])
    assert (result.price, result.volume_kwh) == (15.0, 10.0)
    assert result.fills == [(0, "agg", BID, 10.0), (1, "bat", ASK, 10.0)]
    assert result.unfilled_bids == result.unfilled_asks == []
    assert welfare([bid(0, 20, 10)], [ask(1, 10, 10)], result.fills) == 100.0


def test_no_cross_trades_nothing():
    bids, asks = [bid(0, 10, 5), bid(1, 11, 5)], [ask(2, 12, 5)]
    result = clear(bids, asks)
    assert (result.price, result.volume_kwh, result.fills) == (None, 0.0, [])
    assert result.unfilled_bids == [bids[1], bids[0]]  # priority order: 11 c first
    assert result.unfilled_asks == asks


@pytest.mark.parametrize("bids, asks", [([], []), ([bid(0, 10, 5)], []), ([], [ask(0, 1, 5)])])
def test_an_empty_side_trades_nothing(bids, asks):
    result = clear(bids, asks)
    assert (result.price, result.volume_kwh, result.fills) == (None, 0.0, [])
    assert (result.unfilled_bids, result.unfilled_asks) == (bids, asks)


def test_exact_step_prices_between_the_marginal_ask_and_the_best_rejected_ask():
    # 5 kWh at 10 c against 5 kWh at 2 c and 5 kWh at 3 c: the 2 c ask fills
    # exactly. Any price in [2, 3] clears; above 3 the 3 c seller would want in.
    result = clear([bid(0, 10, 5)], [ask(1, 2, 5), ask(2, 3, 5)])
    assert (result.volume_kwh, result.price_low, result.price_high) == (5.0, 2.0, 3.0)
    assert result.price == 2.5
    assert filled(result) == {0: 5.0, 1: 5.0}


def test_exact_step_rejected_orders_narrow_the_interval():
    bids = [bid(0, 10, 5), bid(1, 4, 5)]
    asks = [ask(2, 2, 5), ask(3, 6, 5)]
    result = clear(bids, asks)
    # low = max(last ask 2, best rejected bid 4); high = min(last bid 10, best rejected ask 6)
    assert (result.price_low, result.price_high, result.price) == (4.0, 6.0, 5.0)
    assert result.volume_kwh == 5.0


def test_partly_filled_marginal_bid_sets_the_price():
    bids = [bid(0, 20, 10), bid(1, 15, 10)]
    asks = [ask(2, 10, 8), ask(3, 12, 8), ask(4, 25, 10)]
    result = clear(bids, asks)
    assert (result.volume_kwh, result.price) == (16.0, 15.0)
    assert filled(result) == {0: 10.0, 1: 6.0, 2: 8.0, 3: 8.0}
    assert result.unfilled_bids == [bid(1, 15, 4)]  # the remainder keeps its id
    assert result.unfilled_asks == [asks[2]]


def test_partly_filled_marginal_ask_sets_the_price():
    bids = [bid(0, 20, 5), bid(1, 18, 5)]
    asks = [ask(2, 4, 4), ask(3, 12, 10)]
    result = clear(bids, asks)
    assert (result.volume_kwh, result.price) == (10.0, 12.0)
    assert filled(result) == {0: 5.0, 1: 5.0, 2: 4.0, 3: 6.0}
    assert result.unfilled_asks == [ask(3, 12, 4)]


def test_many_layers_from_one_owner_fill_as_separate_orders():
    slot = MarketSlot(contract.slot_name(900, 300, "hub1", 1763700300))
    for price in (10, 12, 14, 16):
        slot.ask("bat1", price, 3)
    top, second = slot.bid("agg", 15, 5), slot.bid("agg", 13, 5)
    result = slot.clear()
    # units 0-3: 15/10, 3-5: 15/12, 5-6: 13/12 trade; the 6th kWh on is 13/14
    assert (result.volume_kwh, result.price) == (6.0, 13.0)
    assert filled(result) == {0: 3.0, 1: 3.0, top.order_id: 5.0, second.order_id: 1.0}
    by_owner = {}
    for _id, owner, _side, kwh in result.fills:
        by_owner[owner] = by_owner.get(owner, 0) + kwh
    assert by_owner == {"bat1": 6.0, "agg": 6.0}


def test_equal_prices_earlier_order_id_fills_first():
    # given in the "wrong" order on purpose: the id, not the position, decides
    result = clear([bid(5, 10, 4), bid(2, 10, 4)], [ask(9, 8, 6)])
    assert filled(result) == {2: 4.0, 5: 2.0, 9: 6.0}
    result = clear([bid(1, 10, 6)], [ask(7, 8, 4), ask(3, 8, 4)])
    assert filled(result) == {1: 6.0, 3: 4.0, 7: 2.0}
    assert result.unfilled_asks == [ask(7, 8, 2)]


def test_quantities_are_exact_on_the_mwh_grid():
    # 0.1 + 0.2 != 0.3 in floats; on the mWh grid the book balances exactly
    result = clear([bid(0, 10, 0.1), bid(1, 10, 0.2)], [ask(2, 5, 0.3), ask(3, 11, 1)])
    assert result.volume_kwh == 0.3
    assert filled(result) == {0: 0.1, 1: 0.2, 2: 0.3}
    assert (result.price_low, result.price_high) == (5.0, 10.0)


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, BID, "a", 10, 0), "quantity"),
        ((0, BID, "a", 10, -1), "quantity"),
        ((0, BID, "a", 10, math.nan), "quantity"),
        ((0, BID, "a", 10, 1e-9), "mWh"),
        ((0, BID, "a", 10, 2e6), "quantity"),
        ((0, BID, "a", math.nan, 1), "price"),
        ((0, BID, "a", math.inf, 1), "price"),
        ((0, BID, "a", -0.5, 1), "price"),
        ((0, BID, "a", "10", 1), "price"),
        ((0, BID, "a", True, 1), "price"),
        ((-1, BID, "a", 10, 1), "order id"),
        ((True, BID, "a", 10, 1), "order id"),
        ((1.0, BID, "a", 10, 1), "order id"),
        ((0, "buy", "a", 10, 1), "side"),
        ((0, BID, "", 10, 1), "owner"),
        ((0, BID, None, 10, 1), "owner"),
    ],
)
def test_invalid_orders_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        Order(*args)


def test_clear_refuses_mixed_sides_duplicates_and_non_orders():
    with pytest.raises(ValueError, match="is a 'ask' in the bids"):
        clear([ask(0, 1, 1)], [])
    with pytest.raises(ValueError, match="unique"):
        clear([bid(0, 1, 1)], [ask(0, 1, 1)])
    with pytest.raises(ValueError, match="Order instances"):
        clear([(0, BID, "a", 1.0, 1.0, 1000000)], [])


def test_orders_copy_pickle_and_replace_through_validation():
    order = bid(3, 12.5, 0.25)
    assert copy.copy(order) == order == pickle.loads(pickle.dumps(order))
    assert order._replace(quantity=2).quantity_mwh == 2_000_000
    with pytest.raises(ValueError):
        order._replace(price=-1)


def test_welfare_is_value_minus_cost_whatever_the_price():
    bids, asks = [bid(0, 10, 5)], [ask(1, 2, 5), ask(2, 3, 5)]
    assert welfare(bids, asks, clear(bids, asks).fills) == 5 * 10 - 5 * 2
    with pytest.raises(ValueError, match="matches no"):
        welfare(bids, asks, [(7, "x", BID, 1.0)])


def test_market_slot_keeps_every_layer_and_dedupes_resent_ones():
    slot = MarketSlot(contract.slot_name(900, 300, "hub1", 1763700300))
    first = slot.bid("agg", 15, 5, ref=41)
    assert slot.bid("agg", 15, 5, ref=41) is first  # a re-sent message adds nothing
    with pytest.raises(ValueError, match="re-used"):
        slot.bid("agg", 16, 5, ref=41)
    slot.ask("bat", 10, 2, ref=41)  # refs are per (side, owner)
    assert [o.order_id for o in slot.layers] == [0, 1]
    assert slot.clear() is slot.clear()
    with pytest.raises(ValueError, match="cleared"):
        slot.ask("bat", 1, 1)
    with pytest.raises(ValueError):  # protocol's ContractError is a ValueError
        MarketSlot("not a slot")


# --- random books against an LP welfare maximum ------------------------------------


@st.composite
def books(draw):
    """Small books with many equal prices (half-cent steps) and layers per owner."""
    layer = st.tuples(
        st.integers(0, 40).map(lambda half_cents: half_cents / 2),
        st.integers(1, 2000).map(lambda centi_kwh: centi_kwh / 100),
        st.integers(0, 4),
    )
    raw_bids = draw(st.lists(layer, max_size=25))
    raw_asks = draw(st.lists(layer, max_size=25))
    ids = draw(st.permutations(range(len(raw_bids) + len(raw_asks))))
    bids = [Order(i, BID, "agg%d" % o, p, q) for i, (p, q, o) in zip(ids, raw_bids)]
    asks = [Order(i, ASK, "bat%d" % o, p, q) for i, (p, q, o) in zip(ids[len(bids) :], raw_asks)]
    return bids, asks


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)


@settings(max_examples=300, deadline=None)
@given(books())
def test_volume_and_welfare_match_the_lp_maximum(book):
    bids, asks = book
    result = clear(bids, asks)
    lp_welfare, lp_volume = lp_welfare_and_volume(bids, asks)
    assert close(result.volume_kwh, lp_volume), (result.volume_kwh, lp_volume)
    assert close(welfare(bids, asks, result.fills), lp_welfare)


@settings(max_examples=300, deadline=None)
@given(books(), st.randoms(use_true_random=False))
def test_clearing_properties(book, rng):
    bids, asks = book
    result = clear(bids, asks)
    by_id = {o.order_id: o for o in bids + asks}
    bought = sold = 0.0
    for order_id, owner, side, kwh in result.fills:
        order = by_id[order_id]
        assert (owner, side) == (order.owner, order.side)
        assert 0 < kwh <= order.quantity  # no fill exceeds its order
        if side == BID:
            assert order.price >= result.price  # individual rationality
            bought += kwh
        else:
            assert order.price <= result.price
            sold += kwh
    assert math.isclose(bought, sold, abs_tol=1e-9) and math.isclose(bought, result.volume_kwh)
    if result.fills:  # competitive: nobody left out would trade at the price
        assert result.price_low <= result.price <= result.price_high
        assert all(o.price <= result.price for o in result.unfilled_bids)
        assert all(o.price >= result.price for o in result.unfilled_asks)
    # every kWh is filled or left over, and fills take a prefix of each side in
    # priority order (price, then id): at most one order per side is partial
    left = {o.order_id: o.quantity for o in result.unfilled_bids + result.unfilled_asks}
    got = filled(result)
    for side_orders, sign in ((bids, -1), (asks, 1)):
        shares = []
        for order in sorted(side_orders, key=lambda o: (sign * o.price, o.order_id)):
            assert math.isclose(got.get(order.order_id, 0) + left.get(order.order_id, 0),
                                order.quantity)  # fmt: skip
            shares.append(got.get(order.order_id, 0) / order.quantity)
        assert shares == sorted(shares, reverse=True)
        assert sum(0 < s < 1 for s in shares) <= 1
    # the result does not depend on the order the book is given in
    rng.shuffle(bids)
    rng.shuffle(asks)
    assert clear(bids, asks) == result


def test_a_big_random_book_matches_the_lp():
    rng = random.Random(7)
    bids = [bid(i, round(rng.gauss(15, 4) % 30, 2), rng.randint(1, 500) / 100) for i in range(1500)]
    asks = [ask(i, round(rng.gauss(13, 4) % 30, 2), rng.randint(1, 500) / 100)
            for i in range(1500, 3000)]  # fmt: skip
    result = clear(bids, asks)
    lp_welfare, lp_volume = lp_welfare_and_volume(bids, asks)
    assert close(result.volume_kwh, lp_volume)
    assert close(welfare(bids, asks, result.fills), lp_welfare)
