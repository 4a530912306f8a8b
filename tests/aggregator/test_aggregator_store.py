"""aggregator/store.py: an aggregator's own records, on a real SQLite file, and the
reputation its strategy sees after a restart."""

import sqlite3

import pytest

from aggregator import identity
from aggregator.store import AggregatorStore, StoreError
from aggregator.strategies import ValueBidder
from aggregator.trader import Trader


def test_records_and_the_reputation_seen_survive_a_restart(tmp_path):
    path = tmp_path / "acme.sqlite"
    store = AggregatorStore(path)
    store.bids("hub", "rt1.hub.60", [{"device": 1001, "price": 19.0, "kwh": 2.0}])
    store.fills("hub", "rt1.hub.60", 18.5, [{"device": 1001, "kwh": 2.0}])
    store.contract("c-1", "hub", "rt1.hub.60", 1001, 77, 901, 18.5, 2.0, 5.0, "Confirmed")
    store.contract("c-2", "hub", "rt1.hub.60", 1002, 78, 902, 18.5, 1.0, 5.0, "Confirmed")
    assert store.awaited() == {901: (1001, 2.0), 902: (1002, 1.0)}
    assert store.outcome(901, "CompletedFailureByScada", 0.5) == (1001, 2.0)
    assert store.outcome(999, "CompletedSuccess", 1.0) is None  # not ours
    store.close()

    again = AggregatorStore(path)  # a restarted aggregator
    assert again.delivery() == {1001: (0.5, 2.0)} and again.awaited() == {902: (1002, 1.0)}
    me = identity.Identity(2, "acme", b"m" * 32)
    strategy = ValueBidder(2, 22.0)
    trader = Trader(me, strategy, store=again)
    assert strategy.reputation(1001) < 1.0 == strategy.reputation(1002)  # it remembers
    assert trader.contracts == {902: (1002, 1.0)}  # and waits for 1002's outcome
    again.close()


def test_a_store_from_a_newer_gridbid_is_refused(tmp_path):
    path = tmp_path / "acme.sqlite"
    AggregatorStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="from a newer gridbid"):
        AggregatorStore(path)
