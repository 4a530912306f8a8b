"""Reserve price policy and the device's auction — on CPython and the MicroPython VM."""

from auction import Auction, Bid
from reserve import offer_kwh, reserve_price

from protocol import message


def test_reserve_is_the_floor_for_a_full_healthy_battery():
    assert reserve_price(14.0, 100.0, message.HEALTH_GOOD) == 14.0


def test_reserve_rises_as_the_battery_empties_and_ages():
    full = reserve_price(14.0, 100.0, message.HEALTH_GOOD)
    half = reserve_price(14.0, 50.0, message.HEALTH_GOOD)
    empty = reserve_price(14.0, 0.0, message.HEALTH_GOOD)
    assert full < half < empty and empty == 21.0
    tired = reserve_price(14.0, 50.0, message.HEALTH_POOR)
    assert tired > reserve_price(14.0, 50.0, message.HEALTH_DEGRADED) > half


def test_no_offer_from_a_faulted_or_unmeasured_battery():
    assert reserve_price(14.0, 50.0, message.HEALTH_FAULT) is None
    assert reserve_price(14.0, None, message.HEALTH_GOOD) is None


def test_the_price_signal_lifts_the_reserve_but_never_lowers_it():
    assert reserve_price(14.0, 100.0, message.HEALTH_GOOD, signal=20.0) == 18.0
    assert reserve_price(14.0, 100.0, message.HEALTH_GOOD, signal=10.0) == 14.0


def test_offer_keeps_the_owners_minimum_and_what_contracts_hold():
    # 10 kWh stored of 13.5, keep 20 % (2.7 kWh): 7.3 kWh above the minimum
    assert offer_kwh(10.0, 13.5, 20, 100) == 7.3
    assert offer_kwh(10.0, 13.5, 20, 50) == 3.65
    assert offer_kwh(10.0, 13.5, 20, 100, committed_kwh=7.0) == 0.3
    assert offer_kwh(2.0, 13.5, 20, 100) == 0.0  # below the minimum
    assert offer_kwh(None, 13.5, 20, 100) == 0.0


def test_best_bid_at_or_above_reserve_wins_and_the_rest_are_told_why():
    auction = Auction(reserve=14.0, kwh=1.0, window_ms=300, now_ms=0)
    auction.add(Bid(1, 11, 15.0, 1.0, at_ms=10))
    auction.add(Bid(2, 21, 16.5, 1.0, at_ms=20))
    auction.add(Bid(3, 31, 13.0, 1.0, at_ms=30))
    assert not auction.due(309) and auction.due(310)  # closes 300 ms after the first bid
    winners, rejects = auction.close()
    assert [(b.peer, b.price, kwh) for b, kwh in winners] == [(2, 16.5, 1.0)]
    reasons = {bid.peer: why for bid, why in rejects}
    assert reasons == {1: message.REJECT_OUTBID, 3: message.REJECT_BELOW_RESERVE}


def test_ties_go_to_the_earlier_bid_and_a_raised_bid_replaces_the_old_one():
    auction = Auction(14.0, 1.0, 300, 0)
    auction.add(Bid(1, 11, 15.0, 1.0, 10))
    auction.add(Bid(2, 21, 15.0, 1.0, 20))
    auction.add(Bid(1, 12, 15.5, 1.0, 30))  # aggregator 1 raises
    winners, rejects = auction.close()
    assert [(b.peer, b.message_id) for b, _kwh in winners] == [(1, 12)]
    assert sorted((b.peer, b.message_id) for b, _why in rejects) == [(1, 11), (2, 21)]
    tie = Auction(14.0, 1.0, 300, 0)
    tie.add(Bid(1, 11, 15.0, 1.0, 10))
    tie.add(Bid(2, 21, 15.0, 1.0, 20))
    assert tie.close()[0][0][0].peer == 1


def test_nobody_wins_below_the_reserve():
    auction = Auction(14.0, 1.0, 300, 0)
    auction.add(Bid(1, 11, 13.99, 1.0, 10))
    winners, rejects = auction.close()
    assert winners == [] and rejects[0][1] == message.REJECT_BELOW_RESERVE


def test_shares_split_by_a_market_maker_are_all_accepted_while_energy_lasts():
    auction = Auction(14.0, 1.0, 300, 0)
    auction.add(Bid(1, 11, 15.0, 0.4, 10))
    auction.add(Bid(2, 21, 15.0, 0.6, 20))
    auction.add(Bid(3, 31, 15.0, 0.2, 30))  # nothing left for it
    winners, rejects = auction.close()
    assert [(b.peer, kwh) for b, kwh in winners] == [(1, 0.4), (2, 0.6)]
    assert [(b.peer, why) for b, why in rejects] == [(3, message.REJECT_OUTBID)]


def test_a_bid_for_more_than_is_left_gets_the_rest_and_zero_means_all():
    auction = Auction(14.0, 1.0, 300, 0)
    auction.add(Bid(1, 11, 16.0, 0.7, 10))
    auction.add(Bid(2, 21, 15.0, 0.0, 20))
    winners, _rejects = auction.close()
    assert [(b.peer, kwh) for b, kwh in winners] == [(1, 0.7), (2, 0.3)]


def test_a_last_tenth_of_a_wh_share_is_accepted_not_outbid():
    """0.7497 - 0.7496 is a hair under 0.0001 in floats: counted in whole tenths of a Wh,
    the market maker's last 0.1 Wh share is the one left, and it is accepted."""
    auction = Auction(14.0, 0.7497, 300, 0)
    auction.add(Bid(1, 11, 15.0, 0.7496, 10))
    auction.add(Bid(2, 21, 15.0, 0.0001, 20))
    winners, rejects = auction.close()
    assert [(b.peer, kwh) for b, kwh in winners] == [(1, 0.7496), (2, 0.0001)]
    assert rejects == []
    # Many small shares add up exactly to the offer, and one more is outbid.
    auction = Auction(14.0, 0.3, 300, 0)
    for peer in range(1, 5):
        auction.add(Bid(peer, peer, 15.0, 0.1 if peer < 4 else 0.0001, peer))
    winners, rejects = auction.close()
    assert [kwh for _b, kwh in winners] == [0.1, 0.1, 0.1]
    assert [(b.peer, why) for b, why in rejects] == [(4, message.REJECT_OUTBID)]


def test_a_bid_below_a_tenth_of_a_wh_asks_for_one_tenth():
    auction = Auction(14.0, 1.0, 300, 0)
    auction.add(Bid(1, 11, 15.0, 0.00003, 10))
    winners, _rejects = auction.close()
    assert [(b.peer, kwh) for b, kwh in winners] == [(1, 0.0001)]
