"""The hub store's schema, as an ordered list of migrations (see hub/store/__init__.py for the API).

Why migrations and not CREATE TABLE IF NOT EXISTS: a hub in the field keeps its database
across upgrades (contracts and trades are money and must survive), so every change to the
schema is a numbered step that turns version N into N + 1, applied once, in order, inside
the transaction that records it in `schema_version`. Opening is therefore idempotent; a
crash mid-migration leaves the previous version intact; and a database written by a newer
hub is refused (SchemaError) instead of being half-understood. Never edit a released step:
append a new one.

Units everywhere: times are unix seconds (REAL, UTC; contracts' `start` is whole seconds),
prices cents/kWh, energies kWh, power kW (contracts: watts, as AvgPowerWatts), voltage V,
state of charge % (0..100). Ids: devices are the ETP device_id (INTEGER); a contract's
buyer is the aggregator's key id (INTEGER, as in protocol.contract.contract_id); contracts
are ContractIds (UUID text); order ids are hub.market's per-slot ints, order owners its
int or str party ids; clearing ids are the market's text.

Version 1 (the first release):
  devices(id, key_id, address "host:port", registered_at, last_seen, soc %, remaining_kwh,
          voltage V, power_kw, health code)        -- last status fields: the newest reading
  offers(id, device, slot, kwh, reserve c/kWh, at)  -- what a battery offered for a slot
  bids(id, slot, order_id, side 'bid'|'ask', owner, price, kwh, ref, at)
          -- every layer (hub.market's Order: one layer each, order_id unique per slot,
          -- never replaced); owner and ref are untyped (an int id or a name);
          -- ref = the sender's id for the layer (e.g. the ETP message id)
  trades(id, clearing_id, slot, order_id, side, owner, kwh, price, at)
          -- one row per hub.market Fill; the market maker is the counterparty of
          -- every fill, so a bid fill's seller and an ask fill's buyer is the slot's
          -- market maker; UNIQUE(clearing_id, order_id); (slot, order_id) -> bids
  contracts(id, device, buyer, slot, start, duration_s, avg_watts, price, state, created_at)
          -- state is a protocol.contract STATE_NAMES name ("Created", ...)
  contract_states(id, contract, from_state (NULL when recorded), to_state, by, at)
  price_signals(id, slot (NULL = not per slot), at, price, demand kWh, supply kWh)
  telemetry(id, device, at, soc %, remaining_kwh, voltage V, power_kw, health code)
  bids, trades, contract_states, price_signals and telemetry are append-only (telemetry
  until version 7, which rolls it up: hub/store/telemetry.py): triggers
  RAISE(ABORT) on UPDATE and DELETE (and on INSERT OR REPLACE over a row, since the
  Store's connection has recursive_triggers on, so REPLACE's delete fires them).

Version 2 (reputation and the status page's indexes):
  contracts.delivered_kwh (metered energy, NULL = not reported); view device_reputation
  (device, promised_kwh, delivered_kwh, reputation = delivered / promised), and indexes
  for the history queries.

Version 3 (the hub's contract ledger):
  contracts.confirm_id: the buyer's BID_CONFIRM message id, which the device's outcome
  report (a TERMINATE) answers; unique per buyer.

Version 4 (operators' controls): controls(id, name, value JSON, by, at), append-only; the
newest row of a name is in force.

Version 5: contracts indexed by start.

Version 6 (the market API's audit): market_refusals(id, at, aggregator, slot, what, why),
append-only: every request of an aggregator the market refused (a malformed, late or
over-limit bid, a report that fits no fill), and why.

Version 8: energy_meters(device, charged_kwh, discharged_kwh, at, power_kw, low_kwh):
  each battery's cumulative kWh (hub/store/telemetry.py says how they are counted); at,
  power_kw and low_kwh are where the count stands (the last reading counted, its power,
  the remaining energy a rise is measured from). Meters start at 0 at the upgrade.

The settlement's tables are its own (hub/integrations/settlement/schema.py), as the
platform's are. Until the split, versions 1 and 5 made them here too; the settlement's
first step adopts such a store (it makes only what is missing), and stores made since
have them only once settlement runs.
"""

import math
import time

from protocol.contract import STATE_NAMES, parse_slot_name


class SchemaError(RuntimeError):
    """The file is not a gridbid store, or was written by a newer version of the hub."""


def append_only(tables):
    """SQL: triggers that refuse UPDATE and DELETE on each table (an audit history)."""
    return "".join(
        """
CREATE TRIGGER %(t)s_no_update BEFORE UPDATE ON %(t)s
BEGIN SELECT RAISE(ABORT, '%(t)s is append-only'); END;
CREATE TRIGGER %(t)s_no_delete BEFORE DELETE ON %(t)s
BEGIN SELECT RAISE(ABORT, '%(t)s is append-only'); END;
"""
        % {"t": table}
        for table in tables
    )


V1_APPEND_ONLY = ("bids", "trades", "contract_states", "price_signals", "telemetry")
# V4 and V6 add their own; V7 lifts telemetry's (it is rolled up)
APPEND_ONLY = ("bids", "trades", "contract_states", "price_signals", "controls", "market_refusals")
_STATES = ", ".join("'%s'" % name for name in STATE_NAMES)

V1 = (
    """
CREATE TABLE devices (
    id INTEGER PRIMARY KEY,
    key_id INTEGER,
    address TEXT,
    registered_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    soc REAL,
    remaining_kwh REAL,
    voltage REAL,
    power_kw REAL,
    health INTEGER
);
CREATE TABLE offers (
    id INTEGER PRIMARY KEY,
    device INTEGER NOT NULL REFERENCES devices(id),
    slot TEXT NOT NULL,
    kwh REAL NOT NULL CHECK (kwh >= 0),
    reserve REAL NOT NULL CHECK (reserve >= 0),
    at REAL NOT NULL
);
CREATE TABLE bids (
    id INTEGER PRIMARY KEY,
    slot TEXT NOT NULL,
    order_id INTEGER NOT NULL CHECK (order_id >= 0),
    side TEXT NOT NULL CHECK (side IN ('bid', 'ask')),
    owner NOT NULL,
    price REAL NOT NULL CHECK (price >= 0),
    kwh REAL NOT NULL CHECK (kwh > 0),
    ref,
    at REAL NOT NULL,
    UNIQUE (slot, order_id)
);
CREATE TABLE trades (
    id INTEGER PRIMARY KEY,
    clearing_id TEXT NOT NULL,
    slot TEXT NOT NULL,
    order_id INTEGER NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('bid', 'ask')),
    owner NOT NULL,
    kwh REAL NOT NULL CHECK (kwh > 0),
    price REAL NOT NULL CHECK (price >= 0),
    at REAL NOT NULL,
    UNIQUE (clearing_id, order_id),
    FOREIGN KEY (slot, order_id) REFERENCES bids (slot, order_id)
);
CREATE TABLE contracts (
    id TEXT PRIMARY KEY,
    device INTEGER NOT NULL REFERENCES devices(id),
    buyer INTEGER NOT NULL,
    slot TEXT NOT NULL,
    start INTEGER NOT NULL,
    duration_s INTEGER NOT NULL CHECK (duration_s > 0),
    avg_watts INTEGER NOT NULL,
    price REAL NOT NULL CHECK (price >= 0),
    state TEXT NOT NULL CHECK (state IN (%(states)s)),
    created_at REAL NOT NULL
);
CREATE TABLE contract_states (
    id INTEGER PRIMARY KEY,
    contract TEXT NOT NULL REFERENCES contracts(id),
    from_state TEXT CHECK (from_state IN (%(states)s)),
    to_state TEXT NOT NULL CHECK (to_state IN (%(states)s)),
    by TEXT NOT NULL CHECK (by IN ('buyer', 'device')),
    at REAL NOT NULL
);
CREATE TABLE price_signals (
    id INTEGER PRIMARY KEY,
    slot TEXT,
    at REAL NOT NULL,
    price REAL NOT NULL CHECK (price >= 0),
    demand REAL NOT NULL CHECK (demand >= 0),
    supply REAL NOT NULL CHECK (supply >= 0)
);
CREATE TABLE telemetry (
    id INTEGER PRIMARY KEY,
    device INTEGER NOT NULL REFERENCES devices(id),
    at REAL NOT NULL,
    soc REAL,
    remaining_kwh REAL,
    voltage REAL,
    power_kw REAL,
    health INTEGER
);
"""
    % {"states": _STATES}
    + append_only(V1_APPEND_ONLY)
)

# Reputation counts what the device owed: contracts that ended by the device's doing or
# unobserved. A buyer's termination or failure (…ByAtn) is not the device's fault. Where
# no meter reading was reported, success counts as delivered in full and anything else as
# nothing, so a device that goes dark (CompletedUnknownOutcome) does not escape the count.
V2 = """
ALTER TABLE contracts ADD COLUMN delivered_kwh REAL CHECK (delivered_kwh >= 0);
CREATE VIEW device_reputation AS
SELECT device, promised_kwh, delivered_kwh,
       CASE WHEN promised_kwh > 0 THEN delivered_kwh / promised_kwh END AS reputation
FROM (
    SELECT device,
           sum(abs(avg_watts) * duration_s / 3600000.0) AS promised_kwh,
           sum(coalesce(delivered_kwh, CASE state WHEN 'CompletedSuccess'
               THEN abs(avg_watts) * duration_s / 3600000.0 ELSE 0 END)) AS delivered_kwh
    FROM contracts
    WHERE state IN ('TerminatedByScada', 'CompletedUnknownOutcome', 'CompletedSuccess',
                    'CompletedFailureByScada')
    GROUP BY device
);
CREATE INDEX contracts_device_state ON contracts (device, state);
CREATE INDEX contracts_state ON contracts (state);
CREATE INDEX contract_states_contract ON contract_states (contract);
CREATE INDEX trades_slot ON trades (slot);
CREATE INDEX trades_order ON trades (slot, order_id);
CREATE INDEX offers_slot ON offers (slot);
CREATE INDEX telemetry_device_at ON telemetry (device, at);
CREATE INDEX price_signals_at ON price_signals (at);
"""

# The buyer's BID_CONFIRM id: the device's outcome report (a TERMINATE) answers it, so
# a report that arrives after a hub restart still finds its contract.
V3 = """
ALTER TABLE contracts ADD COLUMN confirm_id INTEGER;
CREATE UNIQUE INDEX contracts_confirm ON contracts (buyer, confirm_id)
    WHERE confirm_id IS NOT NULL;
CREATE INDEX contracts_slot ON contracts (slot);
"""

# Operators' settings (a battery's reserve floor, a paused aggregator), kept as a history:
# the newest row per name is in force; who changed what, and when, stays on record.
V4 = """
CREATE TABLE controls (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    by TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX controls_name ON controls (name, id);
""" + append_only(("controls",))

# Contracts by start: the settlement's windows and the page's history read them that way.
V5 = """
CREATE INDEX contracts_start ON contracts (start);
"""

# What the market API refused, and why: the aggregators' audit trail.
V6 = """
CREATE TABLE market_refusals (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    aggregator INTEGER NOT NULL,
    slot TEXT,
    what TEXT NOT NULL,
    why TEXT NOT NULL
);
CREATE INDEX market_refusals_aggregator ON market_refusals (aggregator, id);
""" + append_only(("market_refusals",))

# Telemetry is kept raw for a window, then rolled up per minute and then per hour
# (hub/store/telemetry.py): raw readings may now be deleted, once rolled up. The
# contractual records (bids, trades, contracts and their states, price signals,
# controls, refusals) stay append-only.
V7 = """
DROP TRIGGER telemetry_no_update;
DROP TRIGGER telemetry_no_delete;
CREATE TABLE telemetry_rollup (
    device INTEGER NOT NULL REFERENCES devices(id),
    period INTEGER NOT NULL CHECK (period IN (60, 3600)),
    start INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    soc_n INTEGER NOT NULL, soc_sum REAL, soc_min REAL, soc_max REAL,
    remaining_kwh_n INTEGER NOT NULL, remaining_kwh_sum REAL, remaining_kwh_min REAL,
    remaining_kwh_max REAL,
    voltage_n INTEGER NOT NULL, voltage_sum REAL, voltage_min REAL, voltage_max REAL,
    power_kw_n INTEGER NOT NULL, power_kw_sum REAL, power_kw_min REAL, power_kw_max REAL,
    health_max INTEGER,
    charged_kwh REAL NOT NULL,
    discharged_kwh REAL NOT NULL,
    held_s REAL NOT NULL,
    PRIMARY KEY (device, period, start)
) WITHOUT ROWID;
CREATE INDEX telemetry_rollup_period ON telemetry_rollup (period, start);
CREATE INDEX telemetry_at ON telemetry (at);
CREATE TABLE telemetry_horizon (
    period INTEGER PRIMARY KEY,
    until REAL NOT NULL
);
"""

# Each battery's energy meters (hub/store/telemetry.py, their one writer): cumulative kWh
# charged and discharged, never lowered, so they outlive the roll-up and trim of the
# readings they were counted from. Not contractual: a reading's own row is the record.
V8 = """
CREATE TABLE energy_meters (
    device INTEGER PRIMARY KEY REFERENCES devices(id),
    charged_kwh REAL NOT NULL,
    discharged_kwh REAL NOT NULL,
    at REAL NOT NULL,
    power_kw REAL,
    low_kwh REAL
);
"""

# (description, SQL script or function(db)), in order: step k turns version k-1 into k.
MIGRATIONS = (
    ("tables and append-only triggers", V1),
    ("reputation view and history indexes", V2),
    ("contracts know the confirm their outcome report answers", V3),
    ("operators' controls, with their history", V4),
    ("contracts indexed by start (settlement's own tables: its schema)", V5),
    ("the market API's refusals, for audit", V6),
    ("telemetry rolled up per minute and per hour", V7),
    ("energy meters per battery (kWh charged and discharged)", V8),
)
CURRENT = len(MIGRATIONS)


def version(db):
    """The schema version of an open sqlite_utils Database (0 = empty file)."""
    if not db["schema_version"].exists() and db.table_names():
        raise SchemaError("%s has tables but no schema_version: not a gridbid store" % db)
    return table_version(db.conn, "schema_version")


def migrate(db, target=None):
    """Apply the missing steps up to `target` (default: all) in one transaction; return
    the version. (target < CURRENT exists to build old databases in tests.)"""
    return apply(db, MIGRATIONS, "schema_version", target, "database schema", version)


def table_version(conn, table):
    """The newest version recorded in a version table (0: no such table yet)."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone():
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM %s" % table).fetchone()[0]


def apply(db, migrations, table, target, what, current_of=None):
    """Apply the missing steps of `migrations` ((description, SQL script or function(db)),
    step k turning version k-1 into k), recorded in the version table `table`, in one
    transaction; -> the version. Also the platform's own list (hub/integrations/platform/schema.py).

    BEGIN IMMEDIATE takes the write lock before the version is read, so two processes
    opening the same new file cannot both apply a step.
    """
    conn, target = db.conn, len(migrations) if target is None else target
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = current_of(db) if current_of else table_version(conn, table)
        if current > len(migrations):
            raise SchemaError(
                "%s version %d is newer than this hub's %d: upgrade gridbid "
                "(it is not downgraded, and nothing was changed)" % (what, current, len(migrations))
            )
        if current == 0:
            conn.execute(
                "CREATE TABLE %s (version INTEGER PRIMARY KEY, "
                "description TEXT NOT NULL, applied_at REAL NOT NULL)" % table
            )
        for number in range(current + 1, target + 1):
            description, step = migrations[number - 1]
            if callable(step):
                step(db)
            else:
                db.executescript(step)  # in a transaction, sqlite-utils runs it without COMMIT
            conn.execute(
                "INSERT INTO %s VALUES (?, ?, ?)" % table, (number, description, time.time())
            )
        conn.execute("COMMIT")
        return max(current, target)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# --- values the columns accept ---------------------------------------------------------
# The same rules as the CHECK constraints above, in Python, so that bad input is a clear
# ValueError naming the field before it reaches SQL (where the CHECKs are the backstop).

SIDES = ("bid", "ask")
MAX_ID = 2**63 - 1  # SQLite INTEGER; ETP ids are u64 but real ones are far smaller


def is_finite(value):
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_amount(name, value, positive=False):
    if not is_finite(value) or value < 0 or (positive and value == 0):
        raise ValueError(
            "%s must be a %s number, not %r" % (name, "positive" if positive else "≥ 0", value)
        )
    return float(value)


def check_id(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise ValueError("%s must be a whole number 0..2**63-1, not %r" % (name, value))
    return value


def check_at(at):
    if at is None:
        return time.time()
    return check_amount("at", at)


def check_slot(slot):
    parse_slot_name(slot)  # ContractError (a ValueError) unless "<rtNgateG>.<maker>.<start>"
    return slot


def check_party(name, value):
    """An id as hub.market has them: an int or a non-empty string."""
    if isinstance(value, str) and value:
        return value
    return check_id(name, value)


def check_side(side):
    if side not in SIDES:
        raise ValueError("side must be 'bid' or 'ask', not %r" % (side,))
    return side


def check_state(state):
    if isinstance(state, str) and state in STATE_NAMES:
        return STATE_NAMES.index(state)
    if isinstance(state, int) and not isinstance(state, bool) and 0 <= state < len(STATE_NAMES):
        return state
    raise ValueError("unknown contract state %r" % (state,))


def check_reading(soc, remaining_kwh, voltage, power_kw, health):
    """A telemetry reading; None = unknown (a failed or stale reading is never invented)."""
    if soc is not None and not 0 <= check_amount("soc", soc) <= 100:
        raise ValueError("soc %r is not a percentage 0..100" % (soc,))
    for name, value in (("remaining_kwh", remaining_kwh), ("voltage", voltage)):
        if value is not None:
            check_amount(name, value)
    if power_kw is not None and not is_finite(power_kw):
        raise ValueError("power_kw %r is not a finite number" % (power_kw,))
    if health is not None:
        check_id("health", health)
    return (soc, remaining_kwh, voltage, power_kw, health)


def check_page(limit, offset):
    return [check_id("limit", limit), check_id("offset", offset)]


def check_layer(layer):
    """(order_id, side, owner, price, kwh, ...): a hub.market Order is one."""
    try:
        order_id, side, owner, price, kwh = tuple(layer)[:5]
    except (TypeError, ValueError):
        raise ValueError(
            "a layer is (order_id, side, owner, price, kwh), not %r" % (layer,)
        ) from None
    return (check_id("order id", order_id), check_side(side), check_party("owner", owner),
            check_amount("price", price), check_amount("kwh", kwh, positive=True))  # fmt: skip


def check_fill(fill):
    try:
        order_id, owner, side, kwh = fill
    except (TypeError, ValueError):
        raise ValueError("a fill is (order_id, owner, side, kwh), not %r" % (fill,)) from None
    return (check_id("order id", order_id), check_party("owner", owner), check_side(side),
            check_amount("kwh", kwh, positive=True))  # fmt: skip
