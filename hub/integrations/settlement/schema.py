"""The settlement's tables in the hub's SQLite file, versioned apart from the hub's own
(table settlement_schema_version), as the platform's are: a numbered, append-only list of
steps, each applied once inside the transaction that records it; a file from a newer
settlement is refused. The uploader applies them when it opens the store (uploader.py),
the platform before its own (it pays from settlement's mint); nothing else writes here.

Version 1 (what hub/store/schema.py's versions 1 and 5 made before the split, so a store
made then is adopted: this step creates only what is missing):
  settlements(id = batch id, trade_ids JSON list of contract ids, tx_signature (the first
          part's landed signature), status, at, window_start, hash (sha256 of the
          canonical records), records (the canonical JSON lines), parts, amount (the
          mint's base units), error, updated_at)
  settlement_items(contract, batch, kwh paid, amount)  -- a contract is in one batch, ever
  settlement_parts(batch, part 1..n, payer, payments JSON [[owner, amount], ...], status
          'open'|'finalized', signature that landed)  -- one transaction's worth each
  settlement_txs(signature, batch, part, raw signed bytes, last_valid block height, nonce,
          status, error, created_at, updated_at)  -- the journal: every signed attempt,
          written before it is first sent

Version 2 (the market as clearing house, margin.py):
  margin_deposits(signature, aggregator, amount base units, payer (the tokens' owner),
          clearing (the account's owner it paid), raw signed bytes,
          status 'sent'|'finalized'|'failed', error, created_at, updated_at)
          -- journaled before it is sent, credited once per signature
  margin_faucet(wallet, aggregator, amount, at)  -- LiteSVM: wallets the faucet funded

Version 3 (margin paid back, withdrawals.py):
  margin_withdrawals(aggregator, id (the aggregator's), amount, wallet (paid to), clearing
          (paid from), signature, raw signed bytes, last_valid height,
          status 'sent'|'finalized'|'failed', error, created_at, updated_at)
          -- journaled before it is sent; never signed twice
"""

from hub.store.schema import apply

VERSION_TABLE = "settlement_schema_version"
FIRST = (  # settlements' columns as hub schema v1 made them
    ("id", "TEXT PRIMARY KEY"), ("trade_ids", "TEXT NOT NULL"), ("tx_signature", "TEXT"),
    ("status", "TEXT NOT NULL"), ("at", "REAL NOT NULL"),
)  # fmt: skip
LATER = (  # and as hub schema v5 added them
    ("window_start", "INTEGER"), ("hash", "TEXT"), ("records", "TEXT"), ("parts", "INTEGER"),
    ("amount", "INTEGER"), ("error", "TEXT"), ("updated_at", "REAL"),
)  # fmt: skip
TABLES = """
CREATE TABLE IF NOT EXISTS settlement_items (
    contract TEXT PRIMARY KEY REFERENCES contracts(id),
    batch TEXT NOT NULL REFERENCES settlements(id),
    kwh REAL NOT NULL CHECK (kwh >= 0),
    amount INTEGER NOT NULL CHECK (amount >= 0)
);
CREATE INDEX IF NOT EXISTS settlement_items_batch ON settlement_items (batch);
CREATE TABLE IF NOT EXISTS settlement_parts (
    batch TEXT NOT NULL REFERENCES settlements(id),
    part INTEGER NOT NULL CHECK (part >= 1),
    payer TEXT NOT NULL,
    payments TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'finalized')),
    signature TEXT,
    PRIMARY KEY (batch, part)
);
CREATE TABLE IF NOT EXISTS settlement_txs (
    signature TEXT PRIMARY KEY,
    batch TEXT NOT NULL,
    part INTEGER NOT NULL,
    raw BLOB,
    last_valid INTEGER,
    nonce TEXT,
    status TEXT NOT NULL CHECK (status IN
        ('signed', 'sent', 'confirmed', 'finalized', 'failed', 'expired')),
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    FOREIGN KEY (batch, part) REFERENCES settlement_parts (batch, part)
);
CREATE INDEX IF NOT EXISTS settlement_txs_part ON settlement_txs (batch, part);
CREATE INDEX IF NOT EXISTS settlement_txs_open ON settlement_txs (status)
    WHERE status IN ('signed', 'sent', 'confirmed');
CREATE INDEX IF NOT EXISTS settlements_status ON settlements (status);
"""


def _adopt(db):
    conn = db.conn
    have = {row[1] for row in conn.execute("PRAGMA table_info(settlements)")}
    if not have:
        conn.execute("CREATE TABLE settlements (%s)"
                     % ", ".join("%s %s" % c for c in FIRST + LATER))  # fmt: skip
    for name, declared in LATER:
        if name not in have and have:
            conn.execute("ALTER TABLE settlements ADD COLUMN %s %s" % (name, declared))
    for statement in TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)


MARGIN = """
CREATE TABLE margin_deposits (
    signature TEXT PRIMARY KEY,
    aggregator INTEGER NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    payer TEXT NOT NULL,
    clearing TEXT NOT NULL,
    raw BLOB NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('sent', 'finalized', 'failed')),
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX margin_deposits_aggregator ON margin_deposits (aggregator, status);
CREATE TABLE margin_faucet (
    wallet TEXT PRIMARY KEY,
    aggregator INTEGER NOT NULL,
    amount INTEGER NOT NULL,
    at REAL NOT NULL
);
"""

WITHDRAWALS = """
CREATE TABLE margin_withdrawals (
    aggregator INTEGER NOT NULL,
    id TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    wallet TEXT NOT NULL,
    clearing TEXT NOT NULL,
    signature TEXT NOT NULL UNIQUE,
    raw BLOB NOT NULL,
    last_valid INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('sent', 'finalized', 'failed')),
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (aggregator, id)
);
CREATE INDEX margin_withdrawals_status ON margin_withdrawals (status);
"""

# (description, SQL script or function(db)), in order: step k turns version k-1 into k.
MIGRATIONS = (
    ("settlement batches, their parts and the journal of signed transactions", _adopt),
    ("aggregators' margin: deposits (journaled) and the LiteSVM faucet's wallets", MARGIN),
    ("aggregators' margin paid back (journaled)", WITHDRAWALS),
)
CURRENT = len(MIGRATIONS)


def migrate(db, target=None):
    """Apply the missing steps to a sqlite_utils Database (a Store's .db). -> the version"""
    return apply(db, MIGRATIONS, VERSION_TABLE, target, "settlement schema")
