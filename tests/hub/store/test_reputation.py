"""hub/store/reputation.py: the reputations the market reads at each slot, tallied once
for final contracts and then only where they change, against views.py's full scans
of a real store (hub.store.Store), while contracts of several batteries and buyers are
made and move through their states by the contract rules, in random order, some with a
meter reading. A fraction of a second."""

import random

import pytest

from hub.store import Store, views
from hub.store.reputation import Reputations
from protocol import contract as pc

START = 1763700300  # a multiple of 900 s
SLOT = pc.slot_name(900, 300, "hub1", START)
PATHS = (  # the ways a contract goes, from Created (protocol/contract.py RULES)
    ("Received", "Confirmed", "Active", "CompletedSuccess"),
    ("Received", "Confirmed", "Active", "CompletedFailureByScada"),
    ("Received", "Confirmed", "Active", "TerminatedByScada"),
    ("Received", "TerminatedByAtn"),
    ("Received", "Confirmed", "TerminatedByAtn"),
    ("Received", "Confirmed", "CompletedUnknownOutcome"),
    ("TerminatedByScada",),
)
BY = {"Received": "device", "Confirmed": "buyer", "Active": "device", "TerminatedByAtn": "buyer"}
METERED = {"CompletedSuccess", "CompletedFailureByScada", "TerminatedByScada"}


def same(found, store):
    aggregators, batteries = found
    scanned = views.aggregator_reputation(store)
    assert sorted(aggregators) == sorted(scanned)
    for key_id, row in scanned.items():
        mine = aggregators[key_id]
        assert (mine["confirmed"], mine["withdrawn"]) == (row["confirmed"], row["withdrawn"])
        assert mine["reputation"] == pytest.approx(row["reputation"], abs=1e-12)
    scanned = views.battery_reputation(store)
    assert sorted(batteries) == sorted(scanned)
    for device, reputation in scanned.items():
        assert batteries[device] == pytest.approx(reputation, abs=1e-9)


def test_tallies_match_the_full_scans_as_contracts_move(tmp_path):
    rng = random.Random(17)
    store = Store(tmp_path / "hub.sqlite")
    for device in (7, 8, 9):
        store.add_device(device, device, "127.0.0.%d" % device, at=0.0)
    reputations, going, made, reads = Reputations(), {}, 0, 0
    try:
        same(reputations.read(store), store)  # an empty store
        for step in range(700):
            roll = rng.random()
            if roll < 0.3 or not going:  # a new contract
                made += 1
                device, buyer = rng.choice((7, 8, 9)), rng.choice((1, 2, 3))
                cid = pc.contract_id(device, buyer, made)
                watts = rng.choice((-3000, 1500, 2000, 4000))
                new = pc.MarketContract.create(pc.BUYER, cid, SLOT, START, 15, watts)
                store.record_contract(new.to_json_dict(), device, buyer, 18.0)
                going[cid] = list(rng.choice(PATHS))
            else:  # one moves on (an old one now and then: it held the watermark)
                cid = rng.choice(list(going)[:3] if rng.random() < 0.3 else list(going))
                state = going[cid].pop(0)
                metered = round(rng.uniform(0, 1.2), 3) if state in METERED else None
                if rng.random() < 0.3:
                    metered = None  # no reading: success counts in full, the rest as none
                store.advance_contract(cid, state, BY.get(state, "device"),
                                       delivered_kwh=metered)  # fmt: skip
                if not going[cid]:
                    del going[cid]
            if rng.random() < 0.2 or step == 699:  # a slot opens
                same(reputations.read(store), store)
                reads += 1
        assert reads > 60 and made > 150
        assert reputations.below > 1  # it moved on: later reads tallied only the rest
        # A restarted hub (a new tally) reads the same.
        same(Reputations().read(store), store)
    finally:
        store.close()
