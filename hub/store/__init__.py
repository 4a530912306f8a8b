"""The hub's SQLite store: devices, offers, bid layers, trades, contracts and their history,
price signals, telemetry, settlements. The tables, columns and units are documented in
hub/store/schema.py, which also holds the migrations applied when a Store opens.

Why it looks like this:
- One SQLite file in WAL mode, so the status page (another connection or process) keeps
  reading while the market writes; a busy timeout, so two writers queue instead of failing;
  foreign keys on, so no offer, contract or reading names an unknown device.
- Every write method is one `BEGIN IMMEDIATE` transaction: the write lock is taken before
  anything is read, so a check-then-write (a contract's current state, whether a clearing
  is already recorded) cannot race another process. synchronous=FULL by default: a
  committed clearing survives a power cut, not only a crash (NORMAL is faster and loses at
  most the last commits on a power cut, never consistency).
- The audit tables (bids, trades, contract_states, price_signals, controls, refusals)
  are append-only, enforced by triggers, so the history cannot be rewritten by a bug.
  Telemetry is not contractual: it is rolled up per minute and per hour
  (hub/store/telemetry.py) after a window.
- record_trades is idempotent per clearing id: a hub restarted mid-slot re-records the
  same clearing and nothing is duplicated; the clearing is all-or-nothing, so a crash
  leaves either all of its fills or none.
- The contract rules have one owner, protocol.contract: advance_contract rebuilds the
  MarketContract from its row and calls .advance(), then stores the result.
- A Store (one connection) belongs to one thread; open one per thread or process.

Errors: ValueError for bad input (negative or non-finite prices and energies, unknown
devices or contracts, a bid layer or clearing recorded again with other terms, a fill no
recorded layer backs); protocol.errors.ContractError (a ValueError) for an invalid
contract or a transition its rules forbid; SchemaError for a file from a newer hub;
sqlite3.IntegrityError "<table> is append-only" for an attempt to rewrite the audit trail.

Measured (2-core x86_64 dev VM, virtio disk, CPython 3.11, SQLite 3.40; median of 3 runs,
±25 %): 10,000 bid layers as 10,000 record_bid calls (one commit each) take 2.0 s with
synchronous=FULL (~0.2 ms per fsync'd commit) and 0.38 s with NORMAL; as one record_bids
call 0.07 s. 10,000 trades as one clearing: 0.075 s (the idempotent retry: 0.027 s); as
1,000 clearings of 10 fills: 0.31 s FULL, 0.15 s NORMAL. stats() + a page of trades over
10,000 trades: 6 ms. Commits dominate, so on a Pi's SD card (a flash write per FULL commit)
batch what arrives together (record_bids) or choose NORMAL for the bid stream.
"""

import contextlib
import json
import sqlite3

from sqlite_utils import Database

from hub.store import telemetry
from hub.store.schema import (
    SchemaError,
    check_amount,
    check_at,
    check_fill,
    check_id,
    check_layer,
    check_page,
    check_party,
    check_reading,
    check_side,
    check_slot,
    check_state,
    migrate,
)
from protocol.contract import STATE_NAMES, MarketContract, parse_slot_name

__all__ = ["SchemaError", "Store"]


class Store:
    """The hub's store over the SQLite file at `path` (created and migrated on open)."""

    def __init__(self, path, *, busy_timeout_s=5.0, synchronous="FULL"):
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL, not %r" % (synchronous,))
        conn = sqlite3.connect(str(path), timeout=busy_timeout_s)  # the busy timeout
        self.db = Database(conn, execute_plugins=False)
        try:
            self.db.execute("PRAGMA foreign_keys = ON")
            self.db.enable_wal()
            self.db.execute("PRAGMA synchronous = %s" % synchronous)
            self.version = migrate(self.db)
        except BaseException:
            self.db.close()
            raise

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction (BEGIN IMMEDIATE) -> the connection. Each table family's
        owner writes its own tables through it (hub/store for the market's tables,
        hub/integrations/settlement/journal.py, hub/integrations/platform/engine.py). Inside
        another transaction on this connection (the platform engine's), it joins that one."""
        conn = self.db.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _snapshot(self):
        """Several reads from one consistent state of the database (a read transaction)."""
        self.db.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.db.conn.execute("COMMIT")

    def rows(self, sql, params=()):
        """A read of the caller's own tables -> [dict] (see transaction())."""
        return list(self.db.query(sql, params))

    def _first(self, sql, params):
        """The first row of a one-table read as a dict, or None: the hot paths' read
        (a contract report reads two), at a quarter of sqlite-utils' query()."""
        cursor = self.db.conn.execute(sql, params)
        row = cursor.fetchone()
        return None if row is None else dict(zip([c[0] for c in cursor.description], row))

    # --- devices ---------------------------------------------------------------------

    def add_device(self, device_id, key_id, address, at=None):
        """Register a device, or re-register it (new key or address after a reboot).
        Returns True when the device is new; registered_at keeps the first registration."""
        device_id, key_id, at = (
            check_id("device", device_id),
            check_id("key_id", key_id),
            check_at(at),
        )
        with self.transaction() as conn:
            done = conn.execute(
                "UPDATE devices SET key_id = ?, address = ?, last_seen = ? WHERE id = ?",
                (key_id, address, at, device_id),
            ).rowcount
            if not done:
                conn.execute(
                    "INSERT INTO devices (id, key_id, address, registered_at, last_seen) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (device_id, key_id, address, at, at),
                )
        return not done

    def touch_device(self, device_id, at=None, address=None):
        """The device was heard from (any message): move last_seen, and its address."""
        device_id, at = check_id("device", device_id), check_at(at)
        with self.transaction() as conn:
            _require_device(conn, device_id)
            conn.execute(
                "UPDATE devices SET last_seen = ?, address = coalesce(?, address) WHERE id = ?",
                (at, address, device_id),
            )

    def devices(self):
        """All devices with their last status and reputation (delivered / promised kWh)."""
        return self.rows(
            "SELECT d.*, r.promised_kwh, r.delivered_kwh, r.reputation FROM devices d "
            "LEFT JOIN device_reputation r ON r.device = d.id ORDER BY d.id"
        )

    # --- market: offers, bid layers, trades, price signals -------------------------

    def record_offer(self, device_id, slot, kwh, reserve, at=None):
        """A battery's offer for a slot (kWh, reserve c/kWh). Returns the row id."""
        row = (check_id("device", device_id), check_slot(slot), check_amount("kwh", kwh))
        row += (check_amount("reserve", reserve), check_at(at))
        with self.transaction() as conn:
            _require_device(conn, row[0])
            return conn.execute(
                "INSERT INTO offers (device, slot, kwh, reserve, at) VALUES (?, ?, ?, ?, ?)", row
            ).lastrowid

    def record_bid(self, slot, order_id, side, owner, price, kwh, ref=None, at=None):
        """Record one layer of a slot's book (hub.market's Order: order_id unique in the
        slot, price c/kWh, kWh; ref = the sender's id for it, e.g. the ETP message id).
        Returns True when new. Layers are never replaced; recording the same layer again
        (a restarted hub replaying) is a no-op, the same order id with other terms a
        ValueError."""
        ref = None if ref is None else check_party("ref", ref)
        layer = check_layer((order_id, side, owner, price, kwh))
        return self._record_layers(slot, [layer + (ref,)], at) == 1

    def record_bids(self, slot, layers, at=None):
        """Record many layers of a slot in one transaction, each an (order_id, side, owner,
        price, kwh) sequence such as a hub.market Order. Returns how many were new."""
        return self._record_layers(slot, [check_layer(x) + (None,) for x in layers], at)

    def _record_layers(self, slot, rows, at):
        slot, at, new = check_slot(slot), check_at(at), 0
        with self.transaction() as conn:
            for row in rows:
                new += conn.execute(
                    "INSERT INTO bids (slot, order_id, side, owner, price, kwh, ref, at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (slot, order_id) DO NOTHING",
                    (slot, *row, at),
                ).rowcount
                stored = conn.execute(
                    "SELECT order_id, side, owner, price, kwh FROM bids "
                    "WHERE slot = ? AND order_id = ?",
                    (slot, row[0]),
                ).fetchone()
                if stored != row[:5]:
                    raise ValueError(
                        "order %d of %s is already recorded as %r" % (row[0], slot, stored)
                    )
        return new

    def bids(self, slot, side=None):
        """Every layer of a slot in order id order (to rebuild a MarketSlot after a restart)."""
        sql, params = "SELECT * FROM bids WHERE slot = ?", [check_slot(slot)]
        if side is not None:
            sql, params = sql + " AND side = ?", params + [check_side(side)]
        return self.rows(sql + " ORDER BY order_id", params)

    def record_trades(self, clearing_id, slot, fills, price, at=None):
        """Record a clearing: its fills (hub.market Fills, or (order_id, owner, side, kwh)
        sequences) at the uniform `price` c/kWh. Each fill's order must be a recorded
        layer of the slot with the same owner and side. Returns the trade ids in the
        order of `fills`.

        Idempotent: UNIQUE(clearing_id, order_id). If the clearing is already recorded
        with the same fills (in any order), nothing is written and the existing ids are
        returned; other fills under the same clearing id are a ValueError."""
        if not isinstance(clearing_id, str) or not clearing_id:
            raise ValueError("clearing id must be a non-empty string, not %r" % (clearing_id,))
        slot, price, at = check_slot(slot), check_amount("price", price), check_at(at)
        rows = [check_fill(fill) for fill in fills]
        if len({row[0] for row in rows}) != len(rows):
            raise ValueError("clearing %r fills an order twice" % clearing_id)
        with self.transaction() as conn:
            stored = conn.execute(
                "SELECT order_id, owner, side, kwh, price, slot, id FROM trades "
                "WHERE clearing_id = ?",
                (clearing_id,),
            ).fetchall()
            if stored:
                by_order = {row[0]: row for row in stored}
                if sorted(by_order) != sorted(row[0] for row in rows) or any(
                    by_order[row[0]][:6] != row + (price, slot) for row in rows
                ):
                    raise ValueError(
                        "clearing %r is already recorded with other fills" % clearing_id
                    )
                return [by_order[row[0]][6] for row in rows]
            # The slot's layers in one read and the fills in one executemany: a clearing
            # of 1,000 batteries was 4,000 statements, most of gate -> fills.
            layers = {
                order_id: (owner, side, kwh)
                for order_id, owner, side, kwh in conn.execute(
                    "SELECT order_id, owner, side, kwh FROM bids WHERE slot = ?", (slot,)
                )
            }
            for order_id, owner, side, kwh in rows:
                layer = layers.get(order_id)
                if layer is None or layer[:2] != (owner, side) or kwh > layer[2] + 1e-9:
                    raise ValueError(
                        "fill of order %d (%s of %r, %r kWh): %s has no such layer (found %r)"
                        % (order_id, side, owner, kwh, slot, layer)
                    )
            conn.executemany(
                "INSERT INTO trades (clearing_id, slot, order_id, side, owner, kwh, price, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(clearing_id, slot, o, side, owner, kwh, price, at)
                 for o, owner, side, kwh in rows],
            )  # fmt: skip
            sql = "SELECT order_id, id FROM trades WHERE clearing_id = ?"
            made = dict(conn.execute(sql, (clearing_id,)))
            return [made[row[0]] for row in rows]

    def trades(self, slot=None, limit=100, offset=0):
        """Trades, newest first, with buyer and seller: the market maker is the
        counterparty of every fill, so a bid's seller and an ask's buyer is the slot's
        market maker (named in the slot name)."""
        where, params = ("WHERE slot = ?", [check_slot(slot)]) if slot is not None else ("", [])
        rows = self.rows(
            "SELECT * FROM trades %s ORDER BY id DESC LIMIT ? OFFSET ?" % where,
            params + check_page(limit, offset),
        )
        for row in rows:
            maker = parse_slot_name(row["slot"])[2]
            bid = row["side"] == "bid"
            row["buyer"], row["seller"] = (row["owner"], maker) if bid else (maker, row["owner"])
        return rows

    def record_price_signal(self, price, demand, supply, slot=None, at=None):
        """The market's published price (c/kWh) with the demand and supply (kWh) behind it."""
        row = (
            None if slot is None else check_slot(slot),
            check_at(at),
            check_amount("price", price),
        )
        row += (check_amount("demand", demand), check_amount("supply", supply))
        with self.transaction() as conn:
            return conn.execute(
                "INSERT INTO price_signals (slot, at, price, demand, supply) "
                "VALUES (?, ?, ?, ?, ?)",
                row,
            ).lastrowid

    def price_signals(self, limit=100):
        """Price signals, newest first."""
        return self.rows(
            "SELECT * FROM price_signals ORDER BY at DESC, id DESC LIMIT ?",
            [check_id("limit", limit)],
        )

    def set_control(self, name, value, by, at=None):
        """An operator's setting (JSON value; None clears it), kept with who set it."""
        row = (str(name), json.dumps(value), str(by), check_at(at))
        with self.transaction() as conn:
            conn.execute("INSERT INTO controls (name, value, by, at) VALUES (?, ?, ?, ?)", row)

    def controls(self):
        """{name: value} in force (the newest of each name; cleared ones left out)."""
        rows = self.rows(
            "SELECT name, value FROM controls WHERE id IN "
            "(SELECT max(id) FROM controls GROUP BY name)"
        )
        found = {r["name"]: json.loads(r["value"]) for r in rows}
        return {name: value for name, value in found.items() if value is not None}

    def record_refusal(self, aggregator, what, why, slot=None, at=None):
        """A request of the aggregator the market API refused (hub/market/exchange.py)."""
        slot = None if slot is None else str(slot)[:200]
        row = (check_at(at), check_id("aggregator", aggregator), slot, str(what)[:40],
               str(why)[:300])  # fmt: skip
        with self.transaction() as conn:
            conn.execute("INSERT INTO market_refusals (at, aggregator, slot, what, why) "
                         "VALUES (?, ?, ?, ?, ?)", row)  # fmt: skip

    def refusals(self, aggregator=None, limit=100):
        """The market's refusals, newest first."""
        where, params = (
            ("WHERE aggregator = ?", [aggregator]) if aggregator is not None else ("", [])
        )
        return self.rows("SELECT * FROM market_refusals %s ORDER BY id DESC LIMIT ?" % where,
                         params + [check_id("limit", limit)])  # fmt: skip

    def stats(self, limit=100):
        """Per slot (newest first): trades, kWh, kWh-weighted mean price, min and max price;
        and totals for the status page."""
        with self._snapshot():
            return self._stats(limit)

    def _stats(self, limit):
        slots = self.rows(
            "SELECT slot, count(*) AS trades, sum(kwh) AS kwh, "
            "sum(price * kwh) / sum(kwh) AS mean_price, min(price) AS min_price, "
            "max(price) AS max_price, min(at) AS first_at FROM trades "
            "GROUP BY slot ORDER BY first_at DESC LIMIT ?",
            [check_id("limit", limit)],
        )
        states = self.db.execute("SELECT state, count(*) FROM contracts GROUP BY state")
        count = self.db.execute("SELECT count(*), coalesce(sum(kwh), 0) FROM trades").fetchone()
        return {
            "slots": slots,
            "contracts_by_state": dict(states.fetchall()),
            "devices": self.db.execute("SELECT count(*) FROM devices").fetchone()[0],
            "trades": count[0],
            "kwh": count[1],
        }

    # --- contracts -------------------------------------------------------------------

    def record_contract(self, contract, device_id, buyer, price, at=None):
        """Record a contract (a MarketContract or its JSON dict) at its current state, with
        the device, the buyer's id and the agreed price (c/kWh). Returns True when new.

        Idempotent: the ContractId is derived from the bid, so recording the same contract
        again is a no-op; the same id with other terms is a ValueError."""
        if not isinstance(contract, MarketContract):
            contract = MarketContract.from_json_dict(contract)
        row = (contract.contract_id, check_id("device", device_id), check_id("buyer", buyer))
        row += (contract.market_slot_name, contract.start_unix_s, contract.duration_s)
        row += (contract.avg_power_watts, check_amount("price", price))
        at = check_at(at)
        with self.transaction() as conn:
            stored = conn.execute(
                "SELECT id, device, buyer, slot, start, duration_s, avg_watts, price "
                "FROM contracts WHERE id = ?",
                row[:1],
            ).fetchone()
            if stored:
                if stored != row:
                    raise ValueError("contract %s is already recorded with other terms" % row[0])
                return False
            _require_device(conn, row[1])
            conn.execute(
                "INSERT INTO contracts (id, device, buyer, slot, start, duration_s, avg_watts, "
                "price, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row + (contract.state_name, at),
            )
            conn.execute(
                "INSERT INTO contract_states (contract, from_state, to_state, by, at) "
                "VALUES (?, NULL, ?, 'buyer', ?)",
                (row[0], contract.state_name, at),
            )
        return True

    def advance_contract(
        self, contract_id, state, by, at=None, delivered_kwh=None, confirm_id=None
    ):
        """Move a contract to `state` (a STATE_NAMES name or number) on behalf of `by`
        ("buyer" or "device"), if protocol.contract's rules allow it; append the change to
        contract_states. delivered_kwh (metered) may come with a final state; it feeds the
        device's reputation; confirm_id comes with Confirmed. Returns the MarketContract."""
        state = check_state(state)
        if delivered_kwh is not None:
            delivered_kwh = check_amount("delivered_kwh", delivered_kwh)
        at = check_at(at)
        with self.transaction() as conn:
            contract = _market_contract(self._contract_row(contract_id))
            previous = STATE_NAMES[contract.advance(state, by)]
            if delivered_kwh is not None and contract.live:
                raise ValueError("delivered_kwh comes with a final state, not %s" % contract)
            conn.execute(
                "UPDATE contracts SET state = ?, delivered_kwh = coalesce(?, delivered_kwh), "
                "confirm_id = coalesce(?, confirm_id) WHERE id = ?",
                (contract.state_name, delivered_kwh, confirm_id, contract_id),
            )
            conn.execute(
                "INSERT INTO contract_states (contract, from_state, to_state, by, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (contract_id, previous, contract.state_name, by, at),
            )
        return contract

    def contract(self, contract_id):
        """One contract's row, with its terms as MarketContract JSON under "json"."""
        row = self._contract_row(contract_id)
        return dict(row, json=_market_contract(row).to_json_dict())

    def contracts(self, state=None, device=None, limit=100, offset=0):
        """Contracts, newest slot first, optionally only in one state or of one device."""
        where, params = [], []
        if state is not None:
            where, params = where + ["state = ?"], params + [STATE_NAMES[check_state(state)]]
        if device is not None:
            where, params = where + ["device = ?"], params + [check_id("device", device)]
        sql = "SELECT * FROM contracts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.rows(
            sql + " ORDER BY start DESC, created_at DESC LIMIT ? OFFSET ?",
            params + check_page(limit, offset),
        )

    def contracts_of_slot(self, slot):
        return self.rows("SELECT * FROM contracts WHERE slot = ?", (check_slot(slot),))

    def contract_by_confirm(self, buyer, confirm_id, device=None):
        """The contract whose BID_CONFIRM from `buyer` had this message id, or None.
        buyer None: battery `device`'s contract with that confirm (a battery's receipt
        names itself and the confirm it answers, not the buyer)."""
        if buyer is None:
            sql, params = "device = ? AND confirm_id = ? ORDER BY start DESC", (device, confirm_id)
        else:
            sql, params = "buyer = ? AND confirm_id = ?", (buyer, confirm_id)
        return self._first("SELECT * FROM contracts WHERE " + sql, params)

    def contract_history(self, contract_id):
        """Every state the contract went through, oldest first (from_state None = recorded)."""
        self._contract_row(contract_id)
        return self.rows(
            "SELECT from_state, to_state, by, at FROM contract_states WHERE contract = ? "
            "ORDER BY id",
            (contract_id,),
        )

    def _contract_row(self, contract_id):
        row = self._first("SELECT * FROM contracts WHERE id = ?", (contract_id,))
        if row is None:
            raise ValueError("unknown contract id %r" % (contract_id,))
        return row

    # --- telemetry -------------------------------------------------------------------

    def record_telemetry(
        self, device_id, soc=None, remaining_kwh=None, voltage=None, power_kw=None,
        health=None, at=None,
    ):  # fmt: skip
        """A status reading (None = unknown, never invented); it also becomes the device's
        last status and last_seen, in the same transaction. -> the battery's energy
        meters after it: (charged kWh, discharged kWh), see hub/store/telemetry.py."""
        row = check_reading(soc, remaining_kwh, voltage, power_kw, health)
        device_id, at = check_id("device", device_id), check_at(at)
        with self.transaction() as conn:
            _require_device(conn, device_id)
            meters = telemetry.record(conn, device_id, at, row)
            conn.execute(
                "UPDATE devices SET soc = ?, remaining_kwh = ?, voltage = ?, power_kw = ?, "
                "health = ?, last_seen = max(last_seen, ?) WHERE id = ?",
                row + (at, device_id),
            )
        return meters

    def energy_meters(self, device_id):
        """(charged kWh, discharged kWh) of a battery so far (hub/store/telemetry.py)."""
        return telemetry.meters(self.db.conn, check_id("device", device_id))

    def telemetry(self, device_id, limit=100):
        """A device's readings, newest first."""
        return self.rows(
            "SELECT * FROM telemetry WHERE device = ? ORDER BY at DESC, id DESC LIMIT ?",
            [check_id("device", device_id)] + [check_id("limit", limit)],
        )


def _require_device(conn, device_id):
    if conn.execute("SELECT 1 FROM devices WHERE id = ?", (device_id,)).fetchone() is None:
        raise ValueError("unknown device %d (add_device first)" % device_id)


def _market_contract(row):
    return MarketContract(
        row["id"], row["slot"], row["start"], row["duration_s"] / 60, row["avg_watts"],
        STATE_NAMES.index(row["state"]),
    )  # fmt: skip
