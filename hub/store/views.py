"""The market's tables as pages and reports read them (the status page, hub/integrations/web):
hub/store/__init__.py's read methods plus the per-slot, per-aggregator and per-device views
below, over a read-only connection. The store package owns these tables' SQL; the
settlement's and the platform's views are their own (settlement/journal.py,
platform/views.py).

Why a read-only connection in one worker thread (Reader): the hub's own Store
belongs to the hub's event loop, and a query for a big page must not hold the
market up; SQLite in WAL mode lets this reader see every committed write while
the hub keeps writing, and mode=ro means no bug in the page can change the
audit trail. Each call runs fn(store, ...) in that thread and returns plain
JSON-able rows.

Units as in the store: c/kWh, kWh, cents, unix seconds. The price improvement of
a slot is (clearing price - reserve) / reserve, the reserve being the kWh-weighted
mean of the slot's asks (all offers, as the hub's clearing event reports it).
"""

import asyncio
import json
import re
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlite_utils import Database

from aggregator.strategies import PRIOR_KWH
from hub.store import Store
from protocol.contract import STATE_NAMES, parse_slot_name

# Contract ends that count against the battery (as hub/store/schema.py's reputation view).
FAILED = ("TerminatedByScada", "CompletedUnknownOutcome", "CompletedFailureByScada")
# Columns never shown, should one ever be added (the settlements table grows with its engine).
SECRET_COLUMN = re.compile(r"secret|private|seed|password|keypair", re.I)


class ReadStore(Store):
    """hub.store.Store's read methods over a read-only connection (writes fail)."""

    def __init__(self, path, busy_timeout_s=5.0):  # no super(): that would migrate (write)
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        self.db = Database(sqlite3.connect(uri, uri=True, timeout=busy_timeout_s),
                           execute_plugins=False)  # fmt: skip


class Reader:
    """Runs queries on one ReadStore in its own thread: `await reader(fn, *args)`."""

    def __init__(self, path):
        self.store = None
        self._pool = ThreadPoolExecutor(1, "gridbid-web-db", self._open, (path,))

    def _open(self, path):
        self.store = ReadStore(path)

    async def __call__(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: fn(self.store, *args)
        )

    async def close(self):
        if self.store is not None:  # opened (by the first query) in the pool's thread
            await self(lambda store: store.close())
        self._pool.shutdown(wait=True)


def slot_start(slot):
    return parse_slot_name(slot)[3]


def sealed(slot, now=None):
    """The slot's gate is still open: its bid layers are sealed (no view shows them)."""
    _length, gate_s, _maker, start = parse_slot_name(slot)
    return (time.time() if now is None else now) < start - gate_s


SEALED_FIELDS = ("bid_layers", "bidders", "best_bid")


def improvement(price, reserve):
    return (price - reserve) / reserve if price is not None and reserve else None


# The newest slots without reading the whole book history: hub/service.py records a
# slot's layers together, slot after slot, so stepping from the newest layer to the
# newest layer below the current slot's first one visits each slot once, newest first,
# at a few index lookups per slot (a GROUP BY over a year of layers takes seconds).
_WALK = """
WITH RECURSIVE walk(slot, low) AS (
    SELECT slot, (SELECT min(id) FROM bids b WHERE b.slot = last.slot)
    FROM bids last WHERE id = (SELECT max(id) FROM bids)
    UNION ALL
    SELECT b.slot, (SELECT min(id) FROM bids c WHERE c.slot = b.slot)
    FROM walk, bids b WHERE b.id = (SELECT max(id) FROM bids WHERE id < walk.low)
)
SELECT slot FROM walk LIMIT ? OFFSET ?
"""
_SLOTS = """
WITH layers AS (
    SELECT slot, sum(side = 'ask') AS offers,
           sum(CASE WHEN side = 'ask' THEN kwh END) AS offered_kwh,
           sum(CASE WHEN side = 'ask' THEN price * kwh END)
               / sum(CASE WHEN side = 'ask' THEN kwh END) AS reserve,
           sum(side = 'bid') AS bid_layers,
           count(DISTINCT CASE WHEN side = 'bid' THEN owner END) AS bidders,
           max(CASE WHEN side = 'bid' THEN price END) AS best_bid,
           min(at) AS first_at
    FROM bids WHERE slot IN (%(slots)s) GROUP BY slot
), cleared AS (
    SELECT slot, max(price) AS price, sum(CASE WHEN side = 'bid' THEN kwh END) AS volume_kwh,
           count(CASE WHEN side = 'bid' THEN 1 END) AS won_layers, min(at) AS cleared_at
    FROM trades WHERE slot IN (%(slots)s) GROUP BY slot
)
SELECT l.*, c.price, c.volume_kwh, coalesce(c.won_layers, 0) AS won_layers, c.cleared_at
FROM layers l LEFT JOIN cleared c USING (slot)
"""


def slots(store, limit, offset, slot=None):
    """One row per slot, newest first: its offers, bid layers and clearing."""
    names = [slot] if slot else [r["slot"] for r in store.rows(_WALK, [limit, offset])]
    if not names:
        return []
    marks = ",".join("?" * len(names))
    rows = {r["slot"]: r for r in store.rows(_SLOTS % {"slots": marks}, names + names)}
    found = [rows[name] for name in names if name in rows]
    for row in found:
        row["start"] = slot_start(row["slot"])
        row["improvement"] = improvement(row["price"], row["reserve"])
        row["sealed"] = sealed(row["slot"])
        if row["sealed"]:
            row.update(dict.fromkeys(SEALED_FIELDS))
    return found


def slot_book(store, slot, names):
    """A slot's whole auction, in arrival order: asks at reserve, every bid layer with
    what it won, the clearing and the contracts it made. None: no such slot."""
    layers = store.bids(slot)
    if not layers:
        return None
    if sealed(slot):  # the asks (offers at their reserve) only, until the gate
        layers = [row for row in layers if row["side"] == "ask"]
    fills = {t["order_id"]: t for t in store.trades(slot, limit=10**6)}
    offers, bids = [], []
    for row in layers:
        fill = fills.get(row["order_id"])
        layer = {"order_id": row["order_id"], "price": row["price"], "kwh": row["kwh"],
                 "at": row["at"], "won_kwh": fill["kwh"] if fill else 0.0}  # fmt: skip
        if row["side"] == "ask":
            offers.append(dict(layer, device=row["owner"], reserve=row["price"]))
        else:
            bids.append(dict(layer, aggregator=names.get(row["owner"], str(row["owner"])),
                             key_id=row["owner"], device=device_of(row["ref"])))  # fmt: skip
    summary = slots(store, 1, 0, slot)[0]
    contracts = [_contract(r, names) for r in store.contracts_of_slot(slot)]
    signal = store.rows(
        "SELECT price, demand, supply, at FROM price_signals WHERE slot = ? ORDER BY id DESC "
        "LIMIT 1",
        (slot,),
    )
    return dict(summary, offers_list=offers, bids_list=bids, contracts=contracts,
                signal=signal[0] if signal else None)  # fmt: skip


def device_of(ref):
    """A bid layer's ref is "bid:<device id>:<the aggregator's layer id>" (the market API:
    hub/market/exchange.py; "bid:<device id>" before it)."""
    kind, _, rest = str(ref or "").partition(":")
    device = rest.partition(":")[0]
    return int(device) if kind == "bid" and device.isdigit() else None


def totals(store):
    """Over every cleared slot: kWh, kWh-weighted price and reserve, the improvement."""
    row = store.rows(
        "WITH c AS (SELECT slot, max(price) AS price, sum(kwh) AS kwh FROM trades "
        "WHERE side = 'bid' GROUP BY slot), "
        "r AS (SELECT slot, sum(price * kwh) / sum(kwh) AS reserve FROM bids "
        "WHERE side = 'ask' AND slot IN (SELECT slot FROM c) GROUP BY slot) "
        "SELECT count(*) AS cleared_slots, coalesce(sum(c.kwh), 0) AS kwh, "
        "sum(c.price * c.kwh) / sum(c.kwh) AS price, "
        "sum(r.reserve * c.kwh) / sum(c.kwh) AS reserve, "
        "coalesce(sum(c.price * c.kwh), 0) AS money "
        "FROM c JOIN r USING (slot)"
    )[0]
    row["improvement"] = improvement(row["price"], row["reserve"])
    row["slots"] = store.rows("SELECT count(DISTINCT slot) AS n FROM bids")[0]["n"]
    row["contracts"] = store.rows("SELECT count(*) AS n FROM contracts")[0]["n"]
    return row


def competition(store):
    """The live market's gain by how many aggregators competed: per number of
    aggregators that bid in a cleared slot, its slots, kWh sold, the kWh-weighted
    price, and the reserves of what sold (the filled asks' own prices: what a buyer
    posting each battery's reserve would pay for the same kWh); improvement = price
    over those reserves. Only cleared slots count, so no sealed book is read."""
    rows = store.rows(
        "WITH sold AS (SELECT t.slot, sum(t.kwh) AS kwh, sum(t.kwh * t.price) AS paid, "
        "sum(t.kwh * b.price) AS at_reserve FROM trades t JOIN bids b "
        "ON b.slot = t.slot AND b.order_id = t.order_id WHERE t.side = 'ask' GROUP BY t.slot), "
        "active AS (SELECT slot, count(DISTINCT owner) AS n FROM bids WHERE side = 'bid' "
        "AND slot IN (SELECT slot FROM sold) GROUP BY slot) "
        "SELECT a.n AS aggregators, count(*) AS slots, sum(s.kwh) AS kwh, "
        "sum(s.paid) / sum(s.kwh) AS price, sum(s.at_reserve) / sum(s.kwh) AS reserve "
        "FROM sold s JOIN active a USING (slot) GROUP BY a.n ORDER BY a.n"
    )
    for row in rows:
        row["improvement"] = improvement(row["price"], row["reserve"])
    return rows


def aggregators(store):
    """Per bidder (key id): bid layers, layers that won kWh, kWh and money; the layers of
    a slot whose gate is still open are not counted (sealed)."""
    open_slots = [r["slot"] for r in store.rows(_WALK, [3, 0]) if sealed(r["slot"])]
    rows = store.rows(
        "SELECT b.owner AS key_id, count(*) AS bids, count(t.id) AS won, "
        "count(DISTINCT b.slot) AS slots, coalesce(sum(t.kwh), 0) AS kwh, "
        "coalesce(sum(t.kwh * t.price), 0) AS money, avg(b.price) AS mean_bid "
        "FROM bids b LEFT JOIN trades t "
        "ON t.slot = b.slot AND t.order_id = b.order_id AND t.side = 'bid' "
        "WHERE b.side = 'bid' AND b.slot NOT IN (%s) GROUP BY b.owner"
        % ",".join("?" * len(open_slots)),
        open_slots,
    )
    for row in rows:
        row["win_rate"] = row["won"] / row["bids"] if row["bids"] else None
        row["mean_price"] = row["money"] / row["kwh"] if row["kwh"] else None
    return {row["key_id"]: row for row in rows}


PRIOR_CONTRACTS = 5  # an aggregator's prior: this many kept, so one miss condemns no one


def aggregator_reputation(store):
    """{aggregator key id: {"confirmed", "withdrawn", "reputation"}}: of the fills it was
    given, how many it confirmed and how many it left unconfirmed (withdrawn at the
    deadline, or by it); reputation = (confirmed + PRIOR_CONTRACTS) / (confirmed +
    withdrawn + PRIOR_CONTRACTS).
    Payment is the margin's (hub/integrations/settlement/margin.py Margin.account: contracts
    paid from it, credits owed beyond it), shown beside it on /api/aggregators."""
    found = {}
    for row in store.rows(
        "SELECT c.buyer AS key_id, "
        "sum(EXISTS (SELECT 1 FROM contract_states s WHERE s.contract = c.id "
        "AND s.to_state = 'Confirmed')) AS confirmed, "
        "sum(c.state = 'TerminatedByAtn') AS withdrawn FROM contracts c GROUP BY c.buyer"
    ):
        row["reputation"] = (row["confirmed"] + PRIOR_CONTRACTS) / (
            row["confirmed"] + row["withdrawn"] + PRIOR_CONTRACTS
        )
        found[row["key_id"]] = row
    return found


def battery_reputation(store):
    """{device: delivered / promised kWh} (the view device_reputation), with the prior
    a strategy's own tally starts from (aggregator/strategies.py PRIOR_KWH): what the
    market tells strategies of each battery."""
    return {
        r["device"]: (r["delivered_kwh"] + PRIOR_KWH) / (r["promised_kwh"] + PRIOR_KWH)
        for r in store.rows("SELECT * FROM device_reputation")
    }


def contracts_by_buyer(store):
    """{buyer key id: {state: count}}."""
    found = {}
    for row in store.rows("SELECT buyer, state, count(*) AS n FROM contracts "
                           "GROUP BY buyer, state"):  # fmt: skip
        found.setdefault(row["buyer"], {})[row["state"]] = row["n"]
    return found


def devices(store):
    """store.devices() with what each sold, earned and failed."""
    rows = store.devices()
    sold = {r["owner"]: r for r in store.rows(
        "SELECT owner, count(*) AS sales, sum(kwh) AS sold_kwh, sum(kwh * price) AS earned "
        "FROM trades WHERE side = 'ask' GROUP BY owner")}  # fmt: skip
    offers = dict(
        store.db.execute("SELECT device, count(*) FROM offers GROUP BY device").fetchall()
    )
    failed = dict(store.db.execute(
        "SELECT device, count(*) FROM contracts WHERE state IN (%s) GROUP BY device"
        % ",".join("?" * len(FAILED)), FAILED).fetchall())  # fmt: skip
    for row in rows:
        mine = sold.get(row["id"], {})
        row["offers"] = offers.get(row["id"], 0)
        row["sold_kwh"] = mine.get("sold_kwh") or 0.0
        row["earned"] = mine.get("earned") or 0.0
        row["failed_contracts"] = failed.get(row["id"], 0)
    return rows


def contracts(store, names, state=None, device=None, buyer=None, slot=None, limit=100, offset=0):
    """Contracts, newest slot first, filtered by any of state, device, buyer, slot."""
    where, params = [], []
    for column, value in (("state", state), ("device", device), ("buyer", buyer),
                          ("slot", slot)):  # fmt: skip
        if value is not None:
            where, params = where + ["%s = ?" % column], params + [value]
    where = " WHERE " + " AND ".join(where) if where else ""
    total = store.rows("SELECT count(*) AS n FROM contracts" + where, params)[0]["n"]
    order = " ORDER BY start DESC, created_at DESC LIMIT ? OFFSET ?"
    rows = store.rows("SELECT * FROM contracts" + where + order, params + [limit, offset])
    return total, [_contract(r, names) for r in rows]


def contract(store, contract_id, names):
    """One contract with its MarketContract JSON and every state it went through."""
    try:
        row = store.contract(contract_id)
    except ValueError:
        return None
    return dict(_contract(row, names), history=store.contract_history(contract_id))


def _contract(row, names):
    row = dict(row)
    row["kwh"] = abs(row["avg_watts"]) * row["duration_s"] / 3_600_000
    row["buyer_name"] = names.get(row["buyer"], str(row["buyer"]))
    row["live"] = STATE_NAMES.index(row["state"]) < 4
    return row


def trades(store, names, slot=None, limit=100, offset=0):
    rows = store.trades(slot, limit, offset)
    for row in rows:  # a bid's owner is an aggregator's key id, an ask's a battery's id
        bid = row["side"] == "bid"
        row["party"] = names.get(row["owner"], str(row["owner"])) if bid else row["owner"]
    return rows


def shown(row):
    """Columns fit to show: none that looks secret, no raw bytes."""
    return {
        k: v for k, v in row.items() if not SECRET_COLUMN.search(k) and not isinstance(v, bytes)
    }


def control_history(store, limit=100):
    rows = store.rows("SELECT name, value, by, at FROM controls ORDER BY id DESC LIMIT ?",
                       [limit])  # fmt: skip
    for row in rows:
        row["value"] = json.loads(row["value"])
    return rows


def telemetry(store, device, limit=100):
    return store.telemetry(device, limit)


def prices(store, limit=100):
    return store.price_signals(limit)


# --- the market's records as the platform's incentives read them (on its connection, in
# its transaction: hub/integrations/platform/incentives.py) ----------------------------------


def device_ids(conn):
    return [device for (device,) in conn.execute("SELECT id FROM devices ORDER BY id")]


def slot_names(conn):
    """Every slot the market has a record of: a layer, a contract or a price signal."""
    return [name for (name,) in conn.execute(
        "SELECT slot FROM bids UNION SELECT slot FROM contracts UNION "
        "SELECT slot FROM price_signals WHERE slot IS NOT NULL"
    )]  # fmt: skip


def latest_signal(conn, slot):
    """The price signal last recorded for a slot, c/kWh, or None."""
    row = conn.execute(
        "SELECT price FROM price_signals WHERE slot = ? ORDER BY at DESC, id DESC LIMIT 1",
        (slot,),
    ).fetchone()
    return None if row is None else row[0]


def metered(conn, slot):
    """[(device, avg_watts, duration_s, delivered_kwh)] of a slot's contracts with a
    meter reading."""
    return conn.execute(
        "SELECT device, avg_watts, duration_s, delivered_kwh FROM contracts "
        "WHERE slot = ? AND delivered_kwh IS NOT NULL",
        (slot,),
    ).fetchall()


def clearing_price(conn, slot):
    row = conn.execute("SELECT price FROM trades WHERE slot = ? LIMIT 1", (slot,)).fetchone()
    return None if row is None else row[0]


def layers_filled(conn, slot):
    """[(side, owner, price, kwh, kWh filled)] per layer of a slot's book."""
    return conn.execute(
        "SELECT b.side, b.owner, b.price, b.kwh, coalesce(sum(t.kwh), 0) FROM bids b "
        "LEFT JOIN trades t ON t.slot = b.slot AND t.order_id = b.order_id "
        "WHERE b.slot = ? GROUP BY b.id",
        (slot,),
    ).fetchall()


# --- contracts another family has not recorded yet (settlement's unpaid, the platform's
# uncounted): the anti-join reads the contracts table here, the family names its own ------


def contracts_not_in(conn, table, columns="c.*", states=None, start=None, before=None,
                     metered=False, order=None):  # fmt: skip
    """[dict] of contracts that no row of `table` (keyed by its `contract` column) names:
    in these states, starting in [start, before), with a meter reading if metered."""
    if not table.isidentifier():
        raise ValueError("not a table name: %r" % table)
    where, params = ["NOT EXISTS (SELECT 1 FROM %s x WHERE x.contract = c.id)" % table], []
    if states is not None:
        where.append("c.state IN (%s)" % ",".join("?" * len(states)))
        params += list(states)
    if start is not None:
        where, params = where + ["c.start >= ?"], params + [start]
    if before is not None:
        where, params = where + ["c.start < ?"], params + [before]
    if metered:
        where.append("c.delivered_kwh IS NOT NULL")
    sql = "SELECT %s FROM contracts c WHERE %s" % (columns, " AND ".join(where))
    cursor = conn.execute(sql + (" ORDER BY " + order if order else ""), params)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
