"""The settlement tables of the hub's store (schema.py): batches, their parts, and the
journal of signed transactions. The one module that reads and writes them.

Each function is one write transaction (Store.transaction: BEGIN IMMEDIATE) or one read, and
none awaits inside one, so it interleaves safely with the hub's own writes on the same
connection and event loop. Contract ids are the primary key of settlement_items: a
contract can be put in a batch once, ever, whatever the uploader does.
"""

import json
import time

from hub.store import views
from hub.store.views import shown

ATTEMPT_OPEN = ("signed", "sent", "confirmed")
ROLLUP = ("planned", "sent", "confirmed", "failed", "finalized")


def min_unsettled_start(store):
    """The earliest start of a contract in no batch (None: there is none)."""
    rows = views.contracts_not_in(store.db.conn, "settlement_items", "min(c.start) AS start")
    return rows[0]["start"]


def waiting(store, final_states):
    """Final contracts in no batch yet (their window has not ended, or waits for a
    live contract or a missing key)."""
    rows = views.contracts_not_in(store.db.conn, "settlement_items", "count(*) AS n",
                                  states=tuple(final_states))  # fmt: skip
    return rows[0]["n"]


def unsettled(store, floor, before):
    """Contracts in no batch whose slot starts in [floor, before), oldest first."""
    return views.contracts_not_in(store.db.conn, "settlement_items", start=floor,
                                  before=before, order="c.start, c.id")  # fmt: skip


def window_chunks(store, window):
    rows = store.db.execute(
        "SELECT id FROM settlements WHERE window_start = ?", (window,)
    ).fetchall()
    return [int(r[0].rsplit(".", 1)[1]) for r in rows]


def record_batch(store, batch, status, landed=None, error=None, at=None):
    """A new batch with its items and parts, in one transaction. `landed` ({part: signature},
    from the chain's memos) marks parts already paid: their attempt is journaled as
    finalized with no bytes."""
    at, landed = at or time.time(), landed or {}
    trade_ids = json.dumps([r["contract"] for r in batch.records])
    total = sum(r["amount"] for r in batch.records)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO settlements (id, trade_ids, tx_signature, status, at, window_start, "
            "hash, records, parts, amount, error, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (batch.id, trade_ids, landed.get(1), status, at, batch.window, batch.digest,
             batch.lines.decode(), len(batch.parts), total, error, at),
        )  # fmt: skip
        conn.executemany(
            "INSERT INTO settlement_items (contract, batch, kwh, amount) VALUES (?, ?, ?, ?)",
            [(r["contract"], batch.id, r["kwh"], r["amount"]) for r in batch.records],
        )
        for part in batch.parts:
            signature = landed.get(part.number)
            conn.execute(
                "INSERT INTO settlement_parts (batch, part, payer, payments, status, signature) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (batch.id, part.number, part.payer, json.dumps(part.payments),
                 "open" if signature is None else "finalized", signature),
            )  # fmt: skip
            if signature is not None:
                _adopt(conn, batch.id, part.number, signature, at)


def adopt(store, batch, part, signature, at=None):
    """The chain shows this part paid by `signature` (reconciliation): journal it so."""
    with store.transaction() as conn:
        _adopt(conn, batch, part, signature, at or time.time())


def _adopt(conn, batch, part, signature, at):
    conn.execute(
        "INSERT INTO settlement_txs (signature, batch, part, status, error, created_at, "
        "updated_at) VALUES (?, ?, ?, 'finalized', 'found on chain', ?, ?) "
        "ON CONFLICT (signature) DO UPDATE SET status = 'finalized', updated_at = ?",
        (signature, batch, part, at, at, at),
    )
    conn.execute(
        "UPDATE settlement_parts SET status = 'finalized', signature = ? "
        "WHERE batch = ? AND part = ?",
        (signature, batch, part),
    )


def open_parts(store):
    """Parts not yet paid (of batches not in conflict), each with its batch's hash and
    part count, and its latest attempt's columns prefixed a_ (None without one)."""
    return list(store.db.query(
        "SELECT p.batch, p.part, p.payer, p.payments, s.hash, s.parts, "
        "t.signature AS a_signature, t.raw AS a_raw, t.last_valid AS a_last_valid, "
        "t.nonce AS a_nonce, t.status AS a_status, t.updated_at AS a_updated_at "
        "FROM settlement_parts p JOIN settlements s ON s.id = p.batch "
        "LEFT JOIN settlement_txs t ON t.rowid = (SELECT max(rowid) FROM settlement_txs x "
        "    WHERE x.batch = p.batch AND x.part = p.part) "
        "WHERE p.status = 'open' AND s.status != 'conflict' ORDER BY p.batch, p.part"
    ))  # fmt: skip


def open_count(store):
    return store.db.execute(
        "SELECT count(*) FROM settlement_parts p JOIN settlements s ON s.id = p.batch "
        "WHERE p.status = 'open' AND s.status != 'conflict'"
    ).fetchone()[0]


def has_attempt(store, signature):
    return (
        store.db.execute(
            "SELECT 1 FROM settlement_txs WHERE signature = ?", (signature,)
        ).fetchone()
        is not None
    )


def add_attempts(store, attempts, at=None):
    """Journal signed transactions before their first broadcast: (signature, batch, part,
    raw bytes, last valid block height or None, nonce text or None) each."""
    at = at or time.time()
    with store.transaction() as conn:
        conn.executemany(
            "INSERT INTO settlement_txs (signature, batch, part, raw, last_valid, nonce, "
            "status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'signed', ?, ?)",
            [a + (at, at) for a in attempts],
        )


def update_attempts(store, updates, at=None):
    """(signature, status, error or None) each; a finalized one pays its part."""
    at = at or time.time()
    with store.transaction() as conn:
        for signature, status, error in updates:
            conn.execute(
                "UPDATE settlement_txs SET status = ?, error = coalesce(?, error), "
                "updated_at = ? WHERE signature = ?",
                (status, error, at, signature),
            )
            if status == "finalized":
                conn.execute(
                    "UPDATE settlement_parts SET status = 'finalized', signature = ? "
                    "WHERE (batch, part) = (SELECT batch, part FROM settlement_txs "
                    "WHERE signature = ?)",
                    (signature, signature),
                )
            elif status == "failed":  # the batch shows why until it is paid
                conn.execute(
                    "UPDATE settlements SET error = ? WHERE id = "
                    "(SELECT batch FROM settlement_txs WHERE signature = ?)",
                    ("part failed on chain: %s" % error, signature),
                )


def refresh(store, batch_ids, at=None):
    """Recompute the named batches' status from their parts. -> the rows that changed."""
    changed = []
    at = at or time.time()
    with store.transaction() as conn:
        for batch_id in batch_ids:
            old, first = conn.execute(
                "SELECT status, tx_signature FROM settlements WHERE id = ?", (batch_id,)
            ).fetchone()
            if old == "conflict":
                continue
            states = [
                row[0] if row[0] == "finalized" else (row[1] or "planned")
                for row in conn.execute(
                    "SELECT p.status, (SELECT status FROM settlement_txs x WHERE x.batch = "
                    "p.batch AND x.part = p.part ORDER BY rowid DESC LIMIT 1) "
                    "FROM settlement_parts p WHERE p.batch = ?",
                    (batch_id,),
                )
            ]
            status = rollup(states)
            if first is None:
                got = conn.execute(
                    "SELECT signature FROM settlement_parts WHERE batch = ? AND part = 1",
                    (batch_id,),
                ).fetchone()
                first = got[0] if got else None
            if status != old:
                conn.execute(
                    "UPDATE settlements SET status = ?, tx_signature = ?, updated_at = ?, "
                    "error = CASE WHEN ? = 'finalized' THEN NULL ELSE error END WHERE id = ?",
                    (status, first, at, status, batch_id),
                )
                changed.append(batch_id)
    return [batch(store, b) for b in changed]


def rollup(states):
    """A batch's status from its parts' (finalized, or the latest attempt's status)."""
    if all(s == "finalized" for s in states):
        return "finalized"
    if all(s in ("confirmed", "finalized") for s in states):
        return "confirmed"
    if any(s == "failed" for s in states):
        return "failed"
    if any(s != "planned" for s in states):
        return "sent"
    return "planned"


def batch(store, batch_id):
    """One batch's row, with trade_ids decoded and the landed signature of each part."""
    rows = list(store.db.query("SELECT * FROM settlements WHERE id = ?", (batch_id,)))
    if not rows:
        return None
    row = rows[0]
    row["trade_ids"] = json.loads(row["trade_ids"])
    row["signatures"] = [
        r[0] for r in store.db.execute(
            "SELECT signature FROM settlement_parts WHERE batch = ? ORDER BY part", (batch_id,)
        )
    ]  # fmt: skip
    return row


def batches(store, status=None, limit=100):
    """Batches, newest first (without their records)."""
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    return list(store.db.query(
        "SELECT id, window_start, status, parts, amount, hash, tx_signature, error, at, "
        "updated_at FROM settlements %s ORDER BY at DESC, id DESC LIMIT ?" % where,
        params + [limit],
    ))  # fmt: skip


def counts(store):
    """{status: batches}, contracts settled, transactions journaled by status."""
    by_status = dict(store.db.execute("SELECT status, count(*) FROM settlements GROUP BY status"))
    items = store.db.execute("SELECT count(*), coalesce(sum(amount), 0) FROM settlement_items")
    contracts, amount = items.fetchone()
    txs = dict(store.db.execute("SELECT status, count(*) FROM settlement_txs GROUP BY status"))
    return {"batches": by_status, "contracts": contracts, "amount": amount, "transactions": txs}


def finalized_payments(conn):
    """What finalized parts paid, on an open connection (the platform's credit ledger, in
    its own transaction): [(payer, [(owner, amount)])]."""
    rows = conn.execute("SELECT payer, payments FROM settlement_parts WHERE status = 'finalized'")
    return [(payer, json.loads(payments)) for payer, payments in rows]


# --- views for the status page (hub/integrations/web/api.py) -------------------------------


def settlements(store, status=None, limit=100, offset=0):
    """The settlements table as it is (columns may grow), newest first; trade_ids parsed.
    A batch's canonical records can be long: they are in settlement() only."""
    if not store.db["settlements"].exists():
        return []  # settlement never ran on this store
    where, params = ("WHERE status = ?", [status]) if status else ("", [])
    rows = store.rows("SELECT * FROM settlements %s ORDER BY at DESC LIMIT ? OFFSET ?" % where,
                       params + [limit, offset])  # fmt: skip
    return [_settlement(row, records=False) for row in rows]


def settlement(store, batch):
    """One batch whole, with its parts (one transaction each, their signatures) when the
    settlement tables hold them. None: no such batch."""
    if not store.db["settlements"].exists():
        return None
    rows = store.rows("SELECT * FROM settlements WHERE id = ?", (batch,))
    if not rows:
        return None
    found = _settlement(rows[0], records=True)
    if store.db["settlement_parts"].exists():
        found["parts_list"] = [shown(r) for r in store.rows(
            "SELECT * FROM settlement_parts WHERE batch = ? ORDER BY part", (batch,))]  # fmt: skip
    return found


def _settlement(row, records):
    row = shown(row)
    if not records:
        row.pop("records", None)
    try:
        row["trade_ids"] = json.loads(row["trade_ids"])
    except (KeyError, TypeError, ValueError):
        pass  # not JSON: shown as stored
    return row
