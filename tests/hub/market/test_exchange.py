"""hub/market/exchange.py: the market API's rules, with a real store, market maker and
ledger. Participants here are plain recorders of what the exchange sends them (the
transports are tested with real sockets: tests/transport/test_market_wire.py,
tests/aggregator/test_independent.py)."""

import time

import pytest

from hub import controls as hub_controls
from hub.events import Events
from hub.ledger import Ledger
from hub.market import exchange as exchange_module
from hub.market.exchange import Exchange
from hub.market.grid import SlotGrid
from hub.market.maker import MarketMaker
from hub.store import Store
from protocol import contract

SLOT_S, GATE_S = 60, 20
DEVICES = (1001, 1002)


class Slot:
    def __init__(self):
        now = time.time()
        self.start = int(now // SLOT_S + 2) * SLOT_S  # its gate is at least 20 s away
        self.name = SlotGrid(SLOT_S, GATE_S, 0.0).slot_name("hub", self.start)
        self.gate = self.start - GATE_S


@pytest.fixture
def market(tmp_path):
    store = Store(tmp_path / "hub.sqlite")
    for device in DEVICES:
        store.add_device(device, device, "127.0.0.%d" % (device - 980))
    maker = MarketMaker(store, "hub", SLOT_S, GATE_S)
    ledger = Ledger(store, SLOT_S, GATE_S, "hub")
    controls = hub_controls.Controls(store, Events())
    ex = Exchange(maker, ledger, store, controls, "hub", {1: "one", 2: "two"}, 47401)
    yield ex
    store.close()


def joined(ex, key_id):
    got = []
    participant = ex.join(key_id, got.append)
    ex.received(participant, {"type": "subscribe"})
    return participant, got


def opened(ex, slot):
    offers = [{"device": d, "kwh": 1.0, "reserve": 15.0, "max_kw": 5.0,
               "address": "127.0.0.%d" % (d - 980)} for d in DEVICES]  # fmt: skip
    for d in DEVICES:
        ex.market.offer(slot.name, d, 1.0, 15.0, ref="offer:%d" % d)
    ex.open_slot(slot.name, slot.start, slot.gate, offers, 16.0)


def layer(device, price, kwh=1.0, layer_id=1):
    return {"device": device, "price": price, "kwh": kwh, "id": layer_id}


def kinds(got):
    return [m["type"] for m in got]


def test_the_book_is_sealed_and_each_buyer_gets_only_its_fills(market):
    slot = Slot()
    one, seen_by_one = joined(market, 1)
    two, seen_by_two = joined(market, 2)
    opened(market, slot)
    layers = [layer(1001, 20.0), layer(1002, 18.0, layer_id=2)]
    market.received(one, {"type": "bid", "slot": slot.name, "ref": 5, "layers": layers})
    market.received(two, {"type": "bid", "slot": slot.name, "ref": 6,
                          "layers": [layer(1002, 19.0)]})  # fmt: skip
    # before the gate each saw the offers and its own bid's result, nothing of the other's
    assert kinds(seen_by_one) == ["welcome", "slot", "bid_result"]
    assert kinds(seen_by_two) == ["welcome", "slot", "bid_result"]
    assert "20.0" not in repr(seen_by_two) and "19.0" not in repr(seen_by_one)
    assert seen_by_one[2] == {"type": "bid_result", "ref": 5, "slot": slot.name,
                              "accepted": 2, "refused": []}  # fmt: skip
    result, trades = market.market.close(slot.name, slot.gate)
    market.close_slot(slot.name, slot.start, result, trades, set())
    fills_one = [m for m in seen_by_one if m["type"] == "fills"]
    fills_two = [m for m in seen_by_two if m["type"] == "fills"]
    assert [f["device"] for f in fills_one[0]["fills"]] == [1001]
    assert [f["device"] for f in fills_two[0]["fills"]] == [1002]
    assert fills_one[0]["fills"][0]["address"] == "127.0.0.21"  # where to buy it
    assert kinds(seen_by_one)[-1] == kinds(seen_by_two)[-1] == "clearing"
    assert seen_by_one[-1]["price"] == result.price


@pytest.mark.parametrize(
    "bid, why",
    [
        ({"slot": "rt1gate0.hub.60"}, "is not open for bids"),
        ({"layers": []}, "layers must be a non-empty list"),
        ({"layers": [layer(1003, 20.0)]}, "battery 1003 offered nothing"),
        ({"layers": [layer(1001, -1.0)]}, "price must be a positive"),
        ({"layers": [layer(1001, 20.0, kwh=5.0)]}, "kwh must be within the 1.0000 kWh"),
        ({"layers": [layer(1001, 20.0, layer_id="x")]}, "id must be a whole number"),
        ({"layers": [layer(1001, float("inf"))]}, "price must be a positive"),
        ({"layers": [layer(1001, 20.0)] * 1001}, "1001 layers in one message"),
        ({"layers": "many"}, "layers must be a non-empty list"),
    ],
)
def test_a_malformed_bid_gets_one_refusal_and_an_audit_row(market, bid, why):
    slot = Slot()
    one, got = joined(market, 1)
    opened(market, slot)
    market.received(one, {"type": "bid", "slot": slot.name, "ref": 9,
                          "layers": [layer(1001, 20.0)], **bid})  # fmt: skip
    assert got[-1]["type"] == "error" and got[-1]["ref"] == 9 and why in got[-1]["why"], got
    (row,) = market.store.refusals(1)
    assert row["what"] == "bid" and why in row["why"]
    assert not [b for b in market.store.bids(slot.name) if b["side"] == "bid"]  # nothing added


def test_a_late_bid_a_paused_or_revoked_aggregator_is_refused(market, monkeypatch):
    slot = Slot()
    one, got = joined(market, 1)
    opened(market, slot)
    bid = {"type": "bid", "slot": slot.name, "layers": [layer(1001, 20.0)]}
    monkeypatch.setattr(exchange_module.time, "time", lambda: slot.gate + 0.001)
    market.received(one, dict(bid, ref=1))
    assert "late: the gate of slot" in got[-1]["why"]
    monkeypatch.undo()
    market.controls.record("paused.one", True, "test")
    market.received(one, dict(bid, ref=2))
    assert "paused" in got[-1]["why"]
    market.controls.record("paused.one", None, "test")
    market.received(one, dict(bid, ref=3))
    assert got[-1]["type"] == "bid_result" and got[-1]["accepted"] == 1
    # re-sending a layer is harmless; re-using its id with other terms is refused
    market.received(one, dict(bid, ref=4))
    market.received(one, dict(bid, ref=5, layers=[layer(1001, 21.0)]))
    assert got[-2]["accepted"] == 1 and got[-1]["refused"][0][0] == 1
    assert len([b for b in market.store.bids(slot.name) if b["side"] == "bid"]) == 1
    market.store.set_control("revoked.1", True, "gridbid hub revoke")  # another process
    market._read_at = 0.0  # (read at most once a second: not wait here)
    market.received(one, dict(bid, ref=6, layers=[layer(1002, 20.0, layer_id=7)]))
    assert "was revoked" in got[-1]["why"]
    with pytest.raises(exchange_module.Refused, match="not admitted .* or was revoked"):
        market.join(1, got.append)
    with pytest.raises(exchange_module.Refused, match="not admitted"):
        market.join(99, got.append)  # never admitted
    whys = [r["why"] for r in market.store.refusals(1, limit=10)]
    assert len(whys) == 4 and any("revoked" in w for w in whys)


def test_a_flood_is_refused_at_the_rate_limit_and_its_audit_stays_bounded(market):
    slot = Slot()
    one, got = joined(market, 1)
    two, got_two = joined(market, 2)
    opened(market, slot)
    began = time.monotonic()
    for n in range(1000):  # far past the burst, within a second
        market.received(one, {"type": "nonsense", "ref": n})
    refilled = (time.monotonic() - began) * exchange_module.LIMITS["rate"]
    refused = [m for m in got if m["type"] == "error"]
    assert len(refused) == 1000
    limited = sum("over the rate limit" in m["why"] for m in refused)
    assert limited >= 1000 - exchange_module.LIMITS["burst"] - refilled - 1
    rows = market.store.refusals(1, limit=10_000)
    assert len(rows) <= 2 * exchange_module.LIMITS["refusal_rows_per_s"]
    # the other aggregator trades on, unhindered
    market.received(two, {"type": "bid", "slot": slot.name, "ref": 1,
                          "layers": [layer(1001, 20.0)]})  # fmt: skip
    assert got_two[-1]["type"] == "bid_result" and got_two[-1]["accepted"] == 1


def bought(market):
    """Aggregator 1 won both batteries of a slot whose gate closed: it is buying them.
    -> (slot, its participant, what it was sent, the clearing)"""
    slot = Slot()
    one, got = joined(market, 1)
    opened(market, slot)
    layers = [layer(1001, 20.0), layer(1002, 20.0, layer_id=2)]
    market.received(one, {"type": "bid", "slot": slot.name, "ref": 1, "layers": layers})
    result, trades = market.market.close(slot.name, slot.gate)
    market.close_slot(slot.name, slot.start, result, trades, set())
    return slot, one, got, result


def test_reports_must_fit_a_fill_and_an_unconfirmed_contract_is_withdrawn(market):
    slot, one, got, result = bought(market)
    report = {"type": "contract", "slot": slot.name, "bid_id": 77, "price": result.price,
              "kwh": 1.0, "kw": 5.0}  # fmt: skip
    for bad, why in (
        ({"device": 1003}, "no fill of battery 1003"),
        ({"device": 1001, "price": result.price + 1}, "must be the clearing price"),
        ({"device": 1001, "kwh": 2.0}, "kwh must be within the fill"),
        ({"device": 1001, "state": "Confirmed", "confirm_id": 5}, "is not Received"),
        ({"device": 1001, "state": "Done"}, "state must be one of"),
    ):
        market.received(one, {**report, "state": "Received", "ref": 2, **bad})
        assert got[-1]["type"] == "error" and why in got[-1]["why"], (bad, got[-1])
    market.received(one, {**report, "device": 1001, "state": "Received", "ref": 3})
    market.received(one, {**report, "device": 1001, "state": "Confirmed", "confirm_id": 901,
                          "ref": 4})  # fmt: skip
    market.received(one, {**report, "device": 1002, "bid_id": 78, "state": "Received",
                          "ref": 5})  # fmt: skip
    assert [m["state"] for m in got[-3:]] == ["Received", "Confirmed", "Received"]
    assert not market.settled(slot.name)  # battery 1002's is not confirmed yet
    market.leave(one)  # the aggregator is gone mid-slot
    contracts = market.finish(slot.name)
    assert contracts[(1, 1001)][1] == "Confirmed"
    assert contracts[(1, 1002)][1] == "TerminatedByAtn"  # no orphan: withdrawn
    states = {r["device"]: r["state"] for r in market.store.contracts_of_slot(slot.name)}
    assert states == {1001: "Confirmed", 1002: "TerminatedByAtn"}


def test_reports_in_one_message_are_answered_each_in_order_after_one_commit(market):
    slot, one, got, result = bought(market)
    report = {"slot": slot.name, "price": result.price, "kwh": 1.0, "kw": 5.0}
    reports = [
        {**report, "device": 1001, "bid_id": 77, "state": "Received", "ref": 11},
        {**report, "device": 1003, "bid_id": 78, "state": "Received", "ref": 12},  # no fill
        {**report, "device": 1002, "bid_id": 79, "state": "Received", "ref": 13},
        {**report, "device": 1001, "state": "Confirmed", "confirm_id": 901, "ref": 14},
        "not a report",
    ]
    market.received(one, {"type": "contracts", "ref": 5, "reports": reports})
    answer = got[-1]
    assert answer["type"] == "contract_results" and answer["ref"] == 5
    assert [(r["type"], r.get("ref"), r.get("state")) for r in answer["results"]] == [
        ("contract_result", 11, "Received"), ("error", 12, None),
        ("contract_result", 13, "Received"), ("contract_result", 14, "Confirmed"),
        ("error", None, None)]  # fmt: skip
    assert "no fill of battery 1003" in answer["results"][1]["why"]
    states = {r["device"]: r["state"] for r in market.store.contracts_of_slot(slot.name)}
    assert states == {1001: "Confirmed", 1002: "Received"}  # committed, then answered
    assert len(market.store.rows("SELECT * FROM market_refusals")) == 2  # each audited
    for bad, why in (([], "non-empty list"), ([{}] * 1001, "1001 reports in one message")):
        market.received(one, {"type": "contracts", "ref": 6, "reports": bad})
        assert got[-1]["type"] == "error" and why in got[-1]["why"]


def test_a_buyer_that_leaves_its_fills_unconfirmed_is_refused_below_the_threshold(market):
    """Reputation in the market: of the fills an aggregator was given, the share it
    confirmed (a prior of 5 kept). Aggregator 1 left 6 unconfirmed: (0 + 5) / (6 + 5) =
    0.45, under a threshold of 0.5; aggregator 2 confirmed one. Batteries' reputations
    (delivered / promised) reach the strategies in the offers."""
    market.min_reputation = 0.5
    past = Slot()
    ledger = market.ledger
    for n in range(6):
        deal = ledger.accepted(1001, 1, 100 + n, 18.0, 0.1, 5.0, past.start - 3600)
        ledger.withdrawn(deal.contract_id, "test: never confirmed")
    deal = ledger.accepted(1002, 2, 200, 18.0, 1.0, 5.0, past.start - 3600)
    ledger.confirming(deal.contract_id, 901)
    assert ledger.reported(1002, None, 901, contract.TERM_CONTRACT_FAILURE, 0.5)  # half
    slot = Slot()
    one, got_one = joined(market, 1)
    two, got_two = joined(market, 2)
    opened(market, slot)
    offers = {o["device"]: o for o in got_two[1]["offers"]}
    assert offers[1002]["reputation"] == pytest.approx((0.5 + 5) / (1.0 + 5), abs=1e-4)
    assert offers[1001]["reputation"] == 1.0  # no record
    bid = {"type": "bid", "slot": slot.name, "ref": 1, "layers": [layer(1001, 20.0)]}
    market.received(one, bid)
    market.received(two, bid)
    assert "reputation 0.45 is below this market's 0.50" in got_one[-1]["why"]
    assert got_two[-1]["type"] == "bid_result" and got_two[-1]["accepted"] == 1
    record = market.reputation[1]
    assert (record["confirmed"], record["withdrawn"]) == (0, 6)
