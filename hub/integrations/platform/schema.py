"""The platform's tables in the hub's SQLite file, versioned apart from the hub's own.

The hub's schema (hub/store/schema.py, table schema_version) belongs to the hub; this
layer keeps its own numbered, append-only list of steps and its own version table,
platform_schema_version, so either can grow without renumbering the other. The same
rules as the hub's: a step is applied once, inside the transaction that records it; a
file from a newer platform is refused; never edit a released step, append one.

Version 1:
  platform_commands(id, kind, args JSON, status 'pending'|'done'|'failed', payload JSON,
          result JSON, error, created_at, updated_at)
          -- every operation carries a caller-chosen id: the same id again is refused
          -- (its first result is in the error); the payload is what the operation
          -- decided when it was planned, so a crash between send and apply resumes it
  platform_txs(signature, command, raw bytes, last_valid height, status
          'sent'|'finalized'|'failed'|'expired', error, created_at, updated_at)
          -- the journal: written before the transaction is first sent
  credit_rates(id, fiat_per_credit (minor units of `currency`), currency, command, at)
  credit_moves(id, command, account base58, kind, units (signed, base units),
          fiat (minor units, purchase/redemption), rate, at)
          -- purchase +, redemption -, rec payment -/+, opening (adopted balance)
  rec_vintages(vintage, mint base58, command)         -- one SPL mint per vintage year
  rec_energy(contract PK, device, vintage, kwh, command)
          -- metered renewable energy counted once (a contract's energy, ever)
  rec_certificates(serial, vintage, device, source, command, minted_at)
  rec_events(id, serial, event 'mint'|'list'|'unlist'|'buy'|'retire', owner, price,
          command, memo, at)
  rec_state(serial PK, owner, status 'held'|'listed'|'retired', price, listing)
          -- current state; a retired certificate's row can never change (trigger)
credit_rates, credit_moves, rec_certificates and rec_events are append-only (triggers).

Version 2 (governance, gov.py):
  gov_token(mint, supply, command); gov_moves(command, src, dst, units, kind)
  (append-only, double entry); gov_stakes(command, account, amount, locked_until,
  released_by: set once); gov_proposals(id, proposer, param, value JSON, voting_ends,
  effective_at, status open|passed|rejected|executed, yes, no, ...); gov_votes(proposal,
  account, yes, weight, command, at) (append-only, one per account and proposal).

Version 3 (incentives, incentives.py):
  incentive_rewards(epoch, account, rule, basis_kwh, amount NRG, command, paid_by)
  -- one row per (epoch, account, rule); paid_by set once, by the paying command

Version 4 (recovery.py): platform_landed(signature, command, memo, found_at): a landed
  platform transaction whose command the store has no row for (a lost store/journal)

Version 5 (participants sign their own commands, engine.py):
  platform_requests(command PK, signer base58, message bytes, last_valid height,
          created_at) -- a participant's command planned and waiting for the
          participant's signature (nothing sendable yet); removed once signed
  platform_holds(subject PK, command) -- what a command not finished yet has taken
          (a certificate, a stake, a vote): a second command on it is refused until the
          first is done or failed
"""

from hub.store.schema import append_only, apply, table_version

APPEND_ONLY = ("credit_rates", "credit_moves", "rec_certificates", "rec_events")

V1 = """
CREATE TABLE platform_commands (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    payload TEXT,
    result TEXT,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE platform_txs (
    signature TEXT PRIMARY KEY,
    command TEXT NOT NULL REFERENCES platform_commands(id),
    raw BLOB NOT NULL,
    last_valid INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('sent', 'finalized', 'failed', 'expired')),
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX platform_txs_command ON platform_txs (command, created_at);
CREATE TABLE credit_rates (
    id INTEGER PRIMARY KEY,
    fiat_per_credit INTEGER NOT NULL CHECK (fiat_per_credit > 0),
    currency TEXT NOT NULL,
    command TEXT NOT NULL REFERENCES platform_commands(id),
    at REAL NOT NULL
);
CREATE TABLE credit_moves (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL REFERENCES platform_commands(id),
    account TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('purchase', 'redemption', 'rec', 'opening')),
    units INTEGER NOT NULL,
    fiat INTEGER,
    rate INTEGER,
    at REAL NOT NULL
);
CREATE INDEX credit_moves_account ON credit_moves (account);
CREATE TABLE rec_vintages (
    vintage INTEGER PRIMARY KEY,
    mint TEXT NOT NULL UNIQUE,
    command TEXT NOT NULL REFERENCES platform_commands(id)
);
CREATE TABLE rec_energy (
    contract TEXT PRIMARY KEY,
    device INTEGER NOT NULL,
    vintage INTEGER NOT NULL,
    kwh REAL NOT NULL CHECK (kwh >= 0),
    command TEXT NOT NULL REFERENCES platform_commands(id)
);
CREATE TABLE rec_certificates (
    serial INTEGER PRIMARY KEY,
    vintage INTEGER NOT NULL REFERENCES rec_vintages(vintage),
    device INTEGER NOT NULL,
    source TEXT NOT NULL,
    command TEXT NOT NULL REFERENCES platform_commands(id),
    minted_at REAL NOT NULL
);
CREATE TABLE rec_events (
    id INTEGER PRIMARY KEY,
    serial INTEGER NOT NULL REFERENCES rec_certificates(serial),
    event TEXT NOT NULL CHECK (event IN ('mint', 'list', 'unlist', 'buy', 'retire')),
    owner TEXT NOT NULL,
    price INTEGER,
    command TEXT NOT NULL REFERENCES platform_commands(id),
    memo TEXT,
    at REAL NOT NULL
);
CREATE TABLE rec_state (
    serial INTEGER PRIMARY KEY REFERENCES rec_certificates(serial),
    owner TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('held', 'listed', 'retired')),
    price INTEGER,
    listing TEXT
);
CREATE INDEX rec_state_owner ON rec_state (owner, status);
CREATE TRIGGER rec_state_retired_is_final BEFORE UPDATE ON rec_state
WHEN OLD.status = 'retired'
BEGIN SELECT RAISE(ABORT, 'a retired certificate never changes'); END;
CREATE TRIGGER rec_state_no_delete BEFORE DELETE ON rec_state
BEGIN SELECT RAISE(ABORT, 'rec_state rows are never deleted'); END;
""" + append_only(APPEND_ONLY)

# Governance (gov.py): NRG's mint, its moves (double entry), stakes, proposals, votes.
V2 = """
CREATE TABLE gov_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    mint TEXT NOT NULL,
    supply INTEGER NOT NULL CHECK (supply > 0),
    command TEXT NOT NULL REFERENCES platform_commands(id)
);
CREATE TABLE gov_moves (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL REFERENCES platform_commands(id),
    src TEXT,
    dst TEXT NOT NULL,
    units INTEGER NOT NULL CHECK (units > 0),
    kind TEXT NOT NULL CHECK (kind IN ('genesis', 'grant', 'stake', 'unstake', 'reward'))
);
CREATE TABLE gov_stakes (
    command TEXT PRIMARY KEY REFERENCES platform_commands(id),
    account TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    locked_until REAL NOT NULL,
    released_by TEXT
);
CREATE TRIGGER gov_stakes_release_once BEFORE UPDATE ON gov_stakes
WHEN OLD.released_by IS NOT NULL OR NEW.amount != OLD.amount OR NEW.account != OLD.account
    OR NEW.locked_until != OLD.locked_until
BEGIN SELECT RAISE(ABORT, 'a stake is released once and never edited'); END;
CREATE TABLE gov_proposals (
    id TEXT PRIMARY KEY REFERENCES platform_commands(id),
    proposer TEXT NOT NULL,
    param TEXT NOT NULL,
    value TEXT NOT NULL,
    voting_ends REAL NOT NULL,
    effective_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'passed', 'rejected', 'executed')),
    yes INTEGER,
    no INTEGER,
    created_at REAL NOT NULL,
    decided_at REAL,
    executed_at REAL
);
CREATE TABLE gov_votes (
    proposal TEXT NOT NULL REFERENCES gov_proposals(id),
    account TEXT NOT NULL,
    yes INTEGER NOT NULL,
    weight INTEGER NOT NULL CHECK (weight > 0),
    command TEXT NOT NULL REFERENCES platform_commands(id),
    at REAL NOT NULL,
    PRIMARY KEY (proposal, account)
);
""" + append_only(("gov_moves", "gov_votes"))

# Incentives (incentives.py): what each epoch's rules gave each account, and the
# payment that carried it (paid_by: set once).
V3 = """
CREATE TABLE incentive_rewards (
    epoch INTEGER NOT NULL,
    account TEXT NOT NULL,
    rule TEXT NOT NULL CHECK (rule IN ('conservation', 'demand_response', 'liquidity')),
    basis_kwh REAL NOT NULL,
    amount INTEGER NOT NULL CHECK (amount > 0),
    command TEXT NOT NULL REFERENCES platform_commands(id),
    paid_by TEXT REFERENCES platform_commands(id),
    PRIMARY KEY (epoch, account, rule)
);
CREATE TRIGGER incentive_rewards_pay_once BEFORE UPDATE ON incentive_rewards
WHEN OLD.paid_by IS NOT NULL OR NEW.amount != OLD.amount OR NEW.account != OLD.account
BEGIN SELECT RAISE(ABORT, 'a reward is paid once and never edited'); END;
CREATE TRIGGER incentive_rewards_no_delete BEFORE DELETE ON incentive_rewards
BEGIN SELECT RAISE(ABORT, 'incentive_rewards is append-only'); END;
"""

# Recovery (recovery.py): platform transactions found on chain by their memo whose
# command the store does not know (its rows were lost). Never run again, never rebuilt:
# reconcile() reports each one until an operator has dealt with it.
V4 = """
CREATE TABLE platform_landed (
    signature TEXT NOT NULL,
    command TEXT NOT NULL,
    memo TEXT NOT NULL,
    found_at REAL NOT NULL,
    PRIMARY KEY (signature, command)
);
CREATE INDEX platform_landed_command ON platform_landed (command);
"""

# Participants' signatures (engine.py): a request waits for its signer; holds keep two
# unfinished commands off one certificate, stake or vote.
V5 = """
CREATE TABLE platform_requests (
    command TEXT PRIMARY KEY REFERENCES platform_commands(id),
    signer TEXT NOT NULL,
    message BLOB NOT NULL,
    last_valid INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE platform_holds (
    subject TEXT PRIMARY KEY,
    command TEXT NOT NULL REFERENCES platform_commands(id)
);
CREATE INDEX platform_holds_command ON platform_holds (command);
"""

MIGRATIONS = (
    ("commands, journal, stable credit and certificates", V1),
    ("governance: NRG, stakes, proposals and votes", V2),
    ("incentive rewards per epoch", V3),
    ("platform transactions found on chain with no command in the store", V4),
    ("participants' signing requests and the holds of unfinished commands", V5),
)


def version(conn):
    return table_version(conn, "platform_schema_version")


def migrate(db, target=None):
    """Apply the missing steps to a sqlite_utils Database (the hub Store's .db) in one
    transaction, as the hub's own schema does (hub/store/schema.py apply). -> the version."""
    return apply(db, MIGRATIONS, "platform_schema_version", target, "platform schema")
