"""The dynamic price signal: the band, the direction (the spec's sign error
must stay fixed), p_balance at balance, the ratio clamp, and bad parameters."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.market.clearing import ASK, BID, Order
from hub.market.price_signal import PriceSignal

KWH = st.one_of(
    st.just(0.0),
    st.floats(min_value=0, max_value=1e300, allow_nan=False, allow_infinity=False),
)
SIGNALS = st.builds(
    PriceSignal,
    p_balance=st.floats(-100, 100),
    p_con=st.floats(0, 100),
    k=st.floats(1e-3, 1e6),
    ratio_limit=st.floats(1.001, 1e12),
)


@given(SIGNALS, KWH, KWH)
def test_never_leaves_the_band(signal, demand, supply):
    price = signal.price(demand, supply)
    assert signal.p_balance - signal.p_con <= price <= signal.p_balance + signal.p_con


@given(SIGNALS, KWH, KWH, KWH)
def test_more_demand_never_lowers_and_more_supply_never_raises(signal, a, b, other):
    low, high = min(a, b), max(a, b)
    assert signal.price(high, other) >= signal.price(low, other)
    assert signal.price(other, high) <= signal.price(other, low)


def test_direction_is_strict_inside_the_clamp():
    signal = PriceSignal(p_balance=15, p_con=5, k=1, ratio_limit=10)
    assert signal.price(2, 1) > 15 > signal.price(1, 2)  # the spec's ln(S/D) got this backwards
    assert signal.price(3, 1) > signal.price(2, 1)
    assert signal.price(1, 3) < signal.price(1, 2)


@given(SIGNALS, st.floats(1e-300, 1e300))
def test_balance_price_when_demand_equals_supply(signal, kwh):
    assert signal.price(kwh, kwh) == signal.p_balance
    assert signal.price(0, 0) == signal.p_balance  # an empty book says nothing


def test_the_corrected_formula():
    # (2/pi) * p_con * atan(k ln(D/S)): at k ln(D/S) = 1, atan = pi/4, so half of p_con
    signal = PriceSignal(p_balance=15, p_con=4, k=1, ratio_limit=10)
    assert signal.price(math.e, 1) == pytest.approx(17.0)
    assert signal.price(1, math.e) == pytest.approx(13.0)
    assert signal.price(3, 1) - 15 == pytest.approx(15 - signal.price(1, 3))  # antisymmetric


def test_ratio_is_clamped_so_an_empty_side_is_not_the_rail():
    signal = PriceSignal(p_balance=15, p_con=5, k=1, ratio_limit=10)
    top, bottom = signal.price(10, 1), signal.price(1, 10)
    assert signal.price(1e300, 1) == signal.price(5, 0) == signal.price(1, 1e-300) == top
    assert signal.price(0, 5) == signal.price(1e-300, 1e300) == bottom
    assert 15 < top < 20 and 10 < bottom < 15  # atan of a finite ratio stays off the rail
    assert signal.ratio(5, 0) == 10 and signal.ratio(0, 5) == 0.1 and signal.ratio(0, 0) == 1


def test_from_book_reads_kwh_bid_against_kwh_offered():
    signal = PriceSignal(p_balance=15, p_con=5, k=2, ratio_limit=10)
    bids = [Order(0, BID, "agg", 20, 3), Order(1, BID, "agg", 18, 3)]
    asks = [Order(2, ASK, "bat", 10, 2)]
    assert signal.from_book(bids, asks) == signal.price(6, 2) > 15
    assert signal.from_book(asks[:0], asks) == signal.price(0, 2) < 15
    assert signal.from_book([], []) == 15


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"p_con": -1}, "p_con"),
        ({"k": 0}, "k must be > 0"),
        ({"k": -1}, "k must be > 0"),
        ({"ratio_limit": 1}, "ratio_limit"),
        ({"ratio_limit": 0.5}, "ratio_limit"),
        ({"p_balance": math.nan}, "p_balance"),
        ({"p_con": math.inf}, "p_con"),
        ({"k": "1"}, "k"),
        ({"ratio_limit": True}, "ratio_limit"),
    ],
)
def test_invalid_parameters_are_refused(kwargs, message):
    parameters = {"p_balance": 15, "p_con": 5, "k": 1, "ratio_limit": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        PriceSignal(**parameters)


@pytest.mark.parametrize("demand, supply", [(-1, 1), (1, -1), (math.nan, 1), (1, math.inf)])
def test_invalid_quantities_are_refused(demand, supply):
    with pytest.raises(ValueError):
        PriceSignal(15, 5).price(demand, supply)
