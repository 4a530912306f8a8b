"""metrics.StoreCounts: the store's figures of /metrics, counted once and then only
where they change, against the plain count of a real store (hub.store.Store, through
the read-only connection the page reads with) while contracts are made, move through
their states by the contract rules and get settled, in random order. A fraction of a
second."""

import random

from hub.integrations.settlement import schema as settlement_schema
from hub.integrations.settlement.records import FINAL_STATES
from hub.integrations.web.metrics import StoreCounts
from hub.store import Store
from hub.store.views import ReadStore
from protocol import contract as pc

START = 1763700300  # a multiple of 900 s
SLOT = pc.slot_name(900, 300, "hub1", START)
# The ways a contract goes, from Created (protocol/contract.py RULES).
PATHS = (
    ("Received", "Confirmed", "Active", "CompletedSuccess"),
    ("Received", "Confirmed", "Active", "CompletedFailureByScada"),
    ("Received", "TerminatedByAtn"),
    ("Received", "Confirmed", "CompletedUnknownOutcome"),
    ("TerminatedByScada",),
)
BY = {"Received": "device", "Confirmed": "buyer", "Active": "device", "TerminatedByAtn": "buyer"}


def truth(db):
    counted = dict(db.execute("SELECT state, count(*) FROM contracts GROUP BY state").fetchall())
    settled = db.execute("SELECT count(*) FROM settlement_items").fetchone()[0]
    return {s: counted.get(s, 0) for s in pc.STATE_NAMES}, settled


def test_counts_match_the_store_as_contracts_move_and_settle(tmp_path):
    rng = random.Random(18)
    store = Store(tmp_path / "hub.sqlite")
    settlement_schema.migrate(store.db)
    store.add_device(7, 7, "127.0.0.1", at=0.0)
    store.db.execute("INSERT INTO settlements (id, trade_ids, status, at) VALUES "
                     "('b', '[]', 'finalized', 0)")  # fmt: skip
    reader, counts = ReadStore(tmp_path / "hub.sqlite"), StoreCounts()
    going = {}  # contract id -> the states still ahead of it
    made, settled, reads = 0, set(), 0
    try:
        for step in range(600):
            roll = rng.random()
            if roll < 0.3 or not going:  # a new contract
                made += 1
                cid = pc.contract_id(7, 3, made)
                new = pc.MarketContract.create(pc.BUYER, cid, SLOT, START, 15, 2000)
                store.record_contract(new.to_json_dict(), 7, 3, 18.0)
                going[cid] = list(rng.choice(PATHS))
            elif roll < 0.9:  # one moves on (an old one now and then: it held the watermark)
                cid = rng.choice(list(going)[:3] if rng.random() < 0.3 else list(going))
                state = going[cid].pop(0)
                store.advance_contract(cid, state, BY.get(state, "device"))
                if not going[cid]:
                    del going[cid]
            else:  # a final contract is settled
                final = store.db.execute("SELECT id FROM contracts WHERE state IN (%s)" % ",".join(
                    "'%s'" % s for s in FINAL_STATES)).fetchall()  # fmt: skip
                todo = [c for (c,) in final if c not in settled]
                if todo:
                    cid = rng.choice(todo)
                    store.db.execute("INSERT INTO settlement_items (contract, batch, kwh, "
                                     "amount) VALUES (?, 'b', 0.5, 9)", [cid])  # fmt: skip
                    settled.add(cid)
            if rng.random() < 0.2 or step == 599:  # a scrape
                found = counts.read(reader, True)
                states, items = truth(store.db)
                assert found == {"contracts": states, "settled": items}, step
                reads += 1
        assert reads > 50 and made > 100
        assert counts.below > 1  # it moved on: later reads counted only what changed
        assert counts.read(reader, False)["settled"] is None  # a hub that does not settle
    finally:
        reader.close()
        store.close()
