"""The market maker over a real SQLite store: slots, layered books, the price
signal, clearing at gate closure, and a hub restarted mid-slot."""

import pytest

from hub.market.maker import KEEP_BOOKS, GateOpen, MarketMaker
from hub.store import Store

NOW = 1763700000  # unix s
SLOT_S, GATE_S = 900, 300


@pytest.fixture
def store(tmp_path):
    with Store(str(tmp_path / "hub.db")) as s:
        for device in (1001, 1002, 1003):
            s.add_device(device, device, "127.0.0.%d" % (device - 980), at=NOW)
        yield s


def market(store):
    return MarketMaker(store, name="hub1", slot_s=SLOT_S, gate_s=GATE_S)


def fill_book(mm, slot):
    mm.offer(slot, 1001, 2.0, 14.0, ref="q1", at=NOW)
    mm.offer(slot, 1002, 2.0, 15.0, ref="q2", at=NOW)
    mm.offer(slot, 1003, 2.0, 19.0, ref="q3", at=NOW)
    mm.bid(slot, "agg1", 18.0, 3.0, ref=11, at=NOW)
    mm.bid(slot, "agg2", 16.0, 2.0, ref=21, at=NOW)


def test_the_open_slot_is_the_first_whose_gate_has_not_closed(store):
    mm = market(store)
    slot = mm.open_slot(NOW)
    start = int(slot.rsplit(".", 1)[1])
    assert slot.startswith("rt15gate5.hub1.") and start % SLOT_S == 0
    assert start - GATE_S > NOW >= start - GATE_S - SLOT_S  # open now, and the first such
    assert not mm.gate_closed(slot, NOW) and mm.gate_closed(slot, start - GATE_S)


def test_clearing_at_gate_closure_pairs_buyers_with_batteries_at_one_price(store):
    mm = market(store)
    slot = mm.open_slot(NOW)
    fill_book(mm, slot)
    with pytest.raises(GateOpen):
        mm.close(slot, NOW)
    start = int(slot.rsplit(".", 1)[1])
    result, trades = mm.close(slot, start - GATE_S)
    # Demand: 3 kWh at 18, 2 at 16. Supply: 2 at 14, 2 at 15, 2 at 19. 4 kWh cross.
    assert result.volume_kwh == pytest.approx(4.0)
    assert 15.0 <= result.price <= 16.0
    assert sum(t.kwh for t in trades) == pytest.approx(4.0)
    assert all(t.price == result.price for t in trades)
    assert {t.battery for t in trades} == {1001, 1002}  # the 19 c battery is priced out
    assert trades[0].buyer == "agg1" and trades[0].battery == 1001  # best bid, cheapest ask
    assert len(store.trades(slot=slot)) == len(result.fills)


def test_a_hub_restarted_mid_slot_loses_and_duplicates_nothing(store):
    slot = market(store).open_slot(NOW)
    fill_book(market(store), slot)
    again = market(store)  # a new market maker on the same store: the restarted hub
    assert len(again.book(slot).layers) == 5
    again.bid(slot, "agg1", 18.0, 3.0, ref=11, at=NOW)  # a re-sent layer counts once
    assert len(again.book(slot).layers) == 5
    start = int(slot.rsplit(".", 1)[1])
    first, _ = again.close(slot, start - GATE_S)
    third = market(store)  # restarted again, after clearing
    second, trades = third.close(slot, start - GATE_S)
    assert (second.price, second.volume_kwh) == (first.price, first.volume_kwh)
    assert len(store.trades(slot=slot)) == len(first.fills)  # recorded once


def test_the_price_signal_follows_the_book(store):
    mm = market(store)
    slot = mm.open_slot(NOW)
    mm.offer(slot, 1001, 5.0, 14.0)
    scarce = mm.indicative_price(slot)  # supply, no demand yet: below balance
    mm.bid(slot, "agg1", 18.0, 20.0)
    mm.bid(slot, "agg2", 18.0, 20.0)
    busy = mm.indicative_price(slot)
    assert busy > scarce
    assert mm.signal.low <= scarce < busy <= mm.signal.high
    assert len(store.price_signals()) == 2


def test_bad_orders_are_refused_and_not_stored(store):
    mm = market(store)
    slot = mm.open_slot(NOW)
    for bad in (lambda: mm.bid(slot, "agg1", -1.0, 1.0), lambda: mm.bid(slot, "agg1", 15.0, 0.0),
                lambda: mm.offer(slot, 9999, 1.0, 14.0)):  # fmt: skip
        with pytest.raises(ValueError):
            bad()
    assert store.bids(slot) == []  # nothing half-recorded
    with pytest.raises(ValueError):
        MarketMaker(store, slot_s=900, gate_s=900)


def test_a_layer_the_store_refuses_does_not_count_and_can_be_sent_again(store):
    mm = market(store)
    slot = mm.open_slot(NOW)
    mm.bid(slot, "agg1", 18.0, 1.0, ref=1)
    store.record_bid(slot, 1, "bid", "intruder", 1.0, 1.0)  # the next order id is taken
    with pytest.raises(ValueError):
        mm.bid(slot, "agg2", 17.0, 1.0, ref=7)
    assert [o.owner for o in mm.book(slot).layers] == ["agg1"]


def test_books_of_past_slots_are_not_kept_in_memory_and_rebuild_from_the_store(store):
    """Issue 17 row 12: a hub kept every slot's book (its layers and their refs) for as
    long as it ran, ~2 kB per battery a slot. Failed before the fix: 300 books kept."""
    mm = market(store)
    first = mm.open_slot(NOW)
    slots = []
    for n in range(300):
        slot = mm.grid.slot_name("hub1", int(first.rsplit(".", 1)[1]) + n * SLOT_S)
        start = int(slot.rsplit(".", 1)[1])
        fill_book(mm, slot)
        mm.close(slot, start - GATE_S)
        slots.append(slot)
    assert len(mm._books) <= KEEP_BOOKS
    old = mm.book(slots[0])  # long gone from memory: rebuilt, the same layers
    assert [(o.order_id, o.side, o.owner, o.price) for o in old.layers] == [
        (o.order_id, o.side, o.owner, o.price) for o in market(store).book(slots[0]).layers
    ]
    assert len(old.layers) == 5 and len(mm._books) <= KEEP_BOOKS
