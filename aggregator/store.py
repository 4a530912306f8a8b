"""An aggregator's own records, in a SQLite file of its own (aggregator.toml `store`):
what it bid, what it was filled, the contracts it made, and how each battery
delivered, so a restarted aggregator knows its batteries' reputation with it.

    bids(id, at, market, slot, device, price, kwh)           every layer it sent
    fills(id, at, market, slot, device, kwh, price)          what the clearing gave it
    contracts(id, market, slot, device, bid_id, confirm_id, price, kwh, kw, state,
              delivered_kwh, at)                             one per battery bought
                                                             (state: Confirmed,
                                                             Withdrawn, or the outcome)
    deposits(signature, market, amount, raw, status, at)     margin it sent (margin.py):
                                                             signed bytes kept before they
                                                             leave; status signed, sent,
                                                             finalized or failed

Versioned by SQLite's user_version: a file from a newer gridbid is refused, an older
one migrated forward. This module is the one writer of the file.
"""

import sqlite3
import time

VERSION = 2
SCHEMA = """
CREATE TABLE bids (id INTEGER PRIMARY KEY, at REAL NOT NULL, market TEXT NOT NULL,
    slot TEXT NOT NULL, device INTEGER NOT NULL, price REAL NOT NULL, kwh REAL NOT NULL);
CREATE TABLE fills (id INTEGER PRIMARY KEY, at REAL NOT NULL, market TEXT NOT NULL,
    slot TEXT NOT NULL, device INTEGER NOT NULL, kwh REAL NOT NULL, price REAL NOT NULL);
CREATE TABLE contracts (id TEXT PRIMARY KEY, market TEXT NOT NULL, slot TEXT NOT NULL,
    device INTEGER NOT NULL, bid_id INTEGER NOT NULL, confirm_id INTEGER, price REAL NOT NULL,
    kwh REAL NOT NULL, kw REAL NOT NULL, state TEXT NOT NULL, delivered_kwh REAL,
    at REAL NOT NULL);
CREATE INDEX bids_slot ON bids (market, slot);
CREATE INDEX fills_slot ON fills (market, slot);
CREATE UNIQUE INDEX contracts_confirm ON contracts (confirm_id) WHERE confirm_id IS NOT NULL;
"""
V2 = """
CREATE TABLE deposits (signature TEXT PRIMARY KEY, market TEXT NOT NULL,
    amount INTEGER NOT NULL, raw BLOB NOT NULL, status TEXT NOT NULL, at REAL NOT NULL);
"""


class StoreError(RuntimeError):
    pass


class AggregatorStore:
    def __init__(self, path):
        try:
            self.db = sqlite3.connect(str(path))  # `with self.db:` is one transaction
            self.db.execute("PRAGMA journal_mode=WAL")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StoreError("cannot open the aggregator's store %s: %s" % (path, exc)) from None
        if version > VERSION:
            raise StoreError("%s is from a newer gridbid (version %d, this one knows %d)"
                             % (path, version, VERSION))  # fmt: skip
        for number, script in enumerate((SCHEMA, V2), 1):
            if version < number:
                self.db.executescript("BEGIN; %s PRAGMA user_version = %d; COMMIT;"
                                      % (script, number))  # fmt: skip

    def close(self):
        self.db.close()

    def bids(self, market, slot, layers):
        """layers: [{"device", "price", "kwh"}] as sent."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT INTO bids (at, market, slot, device, price, kwh) VALUES (?, ?, ?, ?, ?, ?)",
                [(now, market, slot, x["device"], x["price"], x["kwh"]) for x in layers],
            )

    def fills(self, market, slot, price, fills):
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT INTO fills (at, market, slot, device, kwh, price) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(now, market, slot, f["device"], f["kwh"], price) for f in fills],
            )

    def slot_bids(self, market, slot):
        """The layers it sent in a slot, as Bid(price, kwh)."""
        from aggregator.strategies import Bid

        rows = self.db.execute(
            "SELECT price, kwh FROM bids WHERE market = ? AND slot = ?", (market, slot)
        )
        return [Bid(price, kwh) for price, kwh in rows]

    def contract(self, contract_id, market, slot, device, bid_id, confirm_id, price, kwh, kw,
                 state):  # fmt: skip
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO contracts (id, market, slot, device, bid_id, confirm_id, "
                "price, kwh, kw, state, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (contract_id, market, slot, device, bid_id, confirm_id, price, kwh, kw, state,
                 time.time()),
            )  # fmt: skip

    def outcome(self, confirm_id, state, delivered_kwh):
        """The battery's report on the contract our BidConfirm confirm_id made. -> (device,
        kWh promised), or None when no such contract is ours."""
        with self.db:
            row = self.db.execute(
                "SELECT device, kwh FROM contracts WHERE confirm_id = ?", (confirm_id,)
            ).fetchone()
            if row is not None:
                self.db.execute(
                    "UPDATE contracts SET state = ?, delivered_kwh = ? WHERE confirm_id = ?",
                    (state, delivered_kwh, confirm_id),
                )
        return row

    def delivery(self):
        """{device: (kWh delivered, kWh promised)} over its reported contracts: the
        reputation it has seen, for its strategy after a restart."""
        rows = self.db.execute(
            "SELECT device, sum(min(delivered_kwh, kwh)), sum(kwh) FROM contracts "
            "WHERE delivered_kwh IS NOT NULL GROUP BY device"
        )
        return {device: (delivered, promised) for device, delivered, promised in rows}

    def awaited(self):
        """{confirm id: (device, kWh promised)} of contracts whose outcome has not come."""
        rows = self.db.execute(
            "SELECT confirm_id, device, kwh FROM contracts WHERE state = 'Confirmed'"
        )
        return {confirm_id: (device, kwh) for confirm_id, device, kwh in rows}

    def deposit(self, market, signature, amount, raw):
        """A margin deposit, signed, kept before it is sent."""
        with self.db:
            self.db.execute(
                "INSERT OR IGNORE INTO deposits (signature, market, amount, raw, status, at) "
                "VALUES (?, ?, ?, ?, 'signed', ?)",
                (signature, market, amount, raw, time.time()),
            )

    def deposited(self, signature, status):
        with self.db:
            self.db.execute("UPDATE deposits SET status = ? WHERE signature = ?",
                            (status, signature))  # fmt: skip

    def unanswered(self, market):
        """[(signature, raw)] of deposits the market has not finished with."""
        return self.db.execute(
            "SELECT signature, raw FROM deposits WHERE market = ? AND status IN ('signed', "
            "'sent') ORDER BY at",
            (market,),
        ).fetchall()
