"""The market as clearing house: each aggregator's margin, and who pays the owners.

The payment model (issue 15; README "Settlement"). The hub never holds an aggregator's
wallet. An aggregator funds a margin account up front: with its own wallet it signs a
transfer of the stable credit to the market's clearing account, memo

    gridbid-margin:<market>:<aggregator id>

and hands the signed bytes to the market (the market API's `deposit`). Before they go
near the chain the market checks what they do: their signatures verify (a deposit is
filed under its first), one transfer_checked of the signer's own tokens of this mint to
the clearing account, the memo naming the aggregator whose session sent them, nothing
else, at most MAX_PENDING of its deposits on their way. They are journaled
(margin_deposits: signature, bytes) before they are sent, and credited once per
signature, once the chain has them finalized without error. The clearing
account's key (<wallets>/clearing.json) is the operator's, and signs only the market's
own payments: every final contract's, in the uploader's batches (uploader.py, exactly
once, unchanged), whoever bought it.

An aggregator's account (base units of the mint):

    deposited   its deposits the chain holds
    withdrawn   what was paid back to its wallet, or is on its way (withdrawals.py)
    paid        what the clearing house paid owners for its contracts (finalized batches)
    owed        its contracts not paid yet, at their promise (price x promised kWh)
    free        deposited - withdrawn - paid - owed

A bid layer that could cost more than the free margin (its price x kWh, with the
aggregator's other layers of the slot and its fills not yet contracted) is refused:
under-funded (hub/market/exchange.py). So every contract is covered before it exists.
An account below zero (contracts made while the hub settled without margin) bids no
more until it deposits: that is what "unpaid" means here, and the reputation shows it.

On LiteSVM (the demo, the tests) the chain runs in the hub's process, so the market also
serves a faucet: an aggregator's own wallet gets SOL for fees and `fund_credits` credits,
once per aggregator, as a devnet faucet would. The faucet's wallets are kept (margin_faucet)
and funded again when the chain is rebuilt at a start, before the journals replay.
"""

import base64
import logging
import math
import struct
import time

from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from hub.integrations.settlement import records
from hub.integrations.settlement.backends import BackendError, SendError
from hub.integrations.settlement.transactions import (
    MEMO_PROGRAM,
    PACKET_BYTES,
    TOKEN_PROGRAM,
    TRANSFER_CHECKED,
    ata,
    memos,
)

log = logging.getLogger(__name__)

MEMO = "gridbid-margin:%s:%d"
EXPIRE_S = 180.0  # a deposit the chain has not seen this long after it was sent is dead
MAX_PENDING = 4  # deposits per aggregator sent and not yet settled (a journal row each)


class DepositError(ValueError):
    """A deposit refused before it reached the chain, or failed on it (one line)."""


def read_deposit(raw, mint, clearing, decimals, memo):
    """What a deposit transaction does, checked. -> (signature text, amount, payer text)"""
    if len(raw) > PACKET_BYTES:
        raise DepositError("a deposit is one transaction of at most %d bytes" % PACKET_BYTES)
    try:
        tx = Transaction.from_bytes(raw)
    except ValueError:
        raise DepositError("not a signed Solana transaction") from None
    if not tx.signatures or not tx.message.account_keys:
        raise DepositError("not a signed Solana transaction")
    try:  # its signatures first: the credit is filed under the first, which must be its own
        tx.verify()
    except Exception:  # solders raises its own errors: any failure is a refusal
        raise DepositError("its signatures do not verify") from None
    try:
        return _transfer(tx, mint, clearing, decimals, memo)
    except (IndexError, OverflowError, struct.error):
        raise DepositError("not a well-formed transfer") from None


def _transfer(tx, mint, clearing, decimals, memo):
    keys = tx.message.account_keys
    if memos(tx) != [memo]:
        raise DepositError("its memo must be exactly %r" % memo)
    transfers = []
    for ix in tx.message.instructions:
        program, data = keys[ix.program_id_index], bytes(ix.data)
        if program == MEMO_PROGRAM:
            continue
        if program != TOKEN_PROGRAM or data[:1] != bytes([TRANSFER_CHECKED]) or len(data) != 10:
            raise DepositError("a deposit holds a memo and one transfer_checked, nothing else")
        transfers.append((ix, data))
    if len(transfers) != 1:
        raise DepositError("a deposit holds exactly one transfer")
    ix, data = transfers[0]
    _code, amount, places = struct.unpack("<BQB", data)
    accounts = [keys[i] for i in ix.accounts]
    if len(accounts) < 4 or accounts[1] != mint or places != decimals:
        raise DepositError("it does not move this market's credit (mint %s)" % mint)
    if accounts[2] != ata(clearing, mint):
        raise DepositError("it does not pay the clearing account %s" % ata(clearing, mint))
    if not 0 < amount < 2**63:
        raise DepositError("its amount must be above 0 and below 2^63")
    if not tx.message.is_signer(ix.accounts[3]):
        raise DepositError("the tokens' owner did not sign it")
    if accounts[0] != ata(accounts[3], mint):  # not a delegate moving another's tokens
        raise DepositError("it must move the signer's own tokens (its associated account)")
    return str(tx.signatures[0]), amount, str(accounts[3])


class Margin:
    """The clearing house's margin accounts; owns margin_deposits and margin_faucet."""

    def __init__(self, store, backend, mint, clearing, market, decimals, per_cent,
                 faucet=None, clock=time.time, withdrawals=None):  # fmt: skip
        self.store, self.backend, self.mint = store, backend, mint
        self.withdrawals = withdrawals  # withdrawals.py: margin paid back (None: never)
        self.clearing, self.market = clearing, market  # the clearing wallet's Pubkey
        self.decimals, self.per_cent = decimals, per_cent
        self.faucet_fn = faucet  # LiteSVM: fund(pubkey) -> base units minted, else None
        self.clock = clock
        # What a bid's check reads, kept up to date from the rows added since (a scan of
        # every contract per bid message would grow with the market's history):
        self._contracts_read = 0  # the contracts' rowid read up to
        self._promised = {}  # buyer -> cents promised over all its contracts
        self._batches_read = set()  # finalized batches counted
        self._batch_mark = 0.0  # their newest updated_at
        self._paid = {}  # buyer -> [base units paid, cents promised, contracts] (finalized)

    def memo(self, key_id):
        return MEMO % (self.market, key_id)

    def terms(self, key_id):
        """What an aggregator needs to deposit (in the market's welcome)."""
        return {"mint": str(self.mint), "clearing": str(self.clearing),
                "decimals": self.decimals, "units_per_cent": self.per_cent,
                "memo": self.memo(key_id), "faucet": self.faucet_fn is not None}  # fmt: skip

    def cost(self, price, kwh):
        """The most a layer of `kwh` at `price` c/kWh can cost, in base units."""
        return records.amount(price, kwh, self.per_cent)

    async def blockhash(self):
        """A recent blockhash to sign a deposit with (base58)."""
        try:
            blockhash, _last_valid = await self.backend.latest_blockhash()
        except BackendError as exc:
            raise DepositError("the chain is unreachable: %s" % exc) from None
        return str(blockhash)

    # --- deposits ----------------------------------------------------------------------

    async def deposit(self, key_id, text):
        """A deposit from aggregator key_id's session (base64 of the signed bytes).
        -> {"signature", "amount", "status"}; DepositError when refused or failed."""
        try:
            raw = base64.b64decode(text or "", validate=True)
        except (TypeError, ValueError):
            raise DepositError("tx must be base64 of a signed transaction") from None
        signature, amount, payer = read_deposit(
            raw, self.mint, self.clearing, self.decimals, self.memo(key_id)
        )
        conn, now = self.store.db.conn, self.clock()
        row = conn.execute("SELECT aggregator, status, error FROM margin_deposits "
                           "WHERE signature = ?", (signature,)).fetchone()  # fmt: skip
        if row is None:
            bound = aggregator_wallet(conn, key_id, pending=True)
            if bound is not None and bound != payer:
                raise DepositError("this market takes your margin from wallet %s, the one your "
                                   "first deposit came from (what is paid back goes there)"
                                   % bound)  # fmt: skip
            pending = conn.execute("SELECT count(*) FROM margin_deposits WHERE aggregator = ? "
                                   "AND status = 'sent'", (key_id,)).fetchone()[0]  # fmt: skip
            if pending >= MAX_PENDING:
                raise DepositError("%d deposits of yours are still on their way: wait for them"
                                   % pending)  # fmt: skip
            with self.store.transaction():  # journaled before it is sent
                conn.execute(
                    "INSERT INTO margin_deposits (signature, aggregator, amount, payer, clearing, "
                    "raw, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'sent', ?, ?)",
                    (signature, key_id, amount, payer, str(self.clearing), raw, now, now),
                )
        elif row[1] != "sent":  # the same bytes again: the answer it had
            if row[1] == "failed":
                raise DepositError("deposit %s failed: %s" % (signature, row[2]))
            return {"signature": signature, "amount": amount, "status": row[1]}
        try:
            try:
                await self.backend.send(raw)
            except SendError as exc:  # proves nothing about landing: the status decides
                log.info("margin: deposit %s of aggregator %d: %s", signature, key_id, exc)
            status = await self._settle(signature, now)
        except BackendError as exc:  # journaled: the next rounds look it up (check())
            raise DepositError("the chain is unreachable (the deposit is looked up again "
                               "later): %s" % exc) from None  # fmt: skip
        if status == "failed":
            error = conn.execute("SELECT error FROM margin_deposits WHERE signature = ?",
                                 (signature,)).fetchone()[0]  # fmt: skip
            raise DepositError("deposit %s failed on chain: %s" % (signature, error))
        if status == "finalized":
            log.info("margin: aggregator %d deposited %.2f credits (%s)", key_id,
                     amount / 10**self.decimals, signature)  # fmt: skip
        return {"signature": signature, "amount": amount, "status": status}

    async def check(self):
        """Deposits (and withdrawals) sent but not yet seen: the chain's answer, or
        expiry. -> how many left"""
        rows = self.store.db.conn.execute(
            "SELECT signature, created_at FROM margin_deposits WHERE status = 'sent'"
        ).fetchall()
        left = await self.withdrawals.check() if self.withdrawals is not None else 0
        for signature, created_at in rows:
            left += await self._settle(signature, created_at) == "sent"
        return left

    async def _settle(self, signature, sent_at):
        (status,) = await self.backend.statuses([Signature.from_string(signature)])
        if status is None:
            if self.clock() - sent_at < EXPIRE_S:
                return "sent"
            new, error = "failed", "never landed (expired)"
        elif status.err is not None:  # landed with an error: atomic, nothing moved
            new, error = "failed", status.err
        elif not status.finalized:  # confirmed only: a fork could still drop it
            return "sent"
        else:
            new, error = "finalized", None
        with self.store.transaction():
            self.store.db.conn.execute(
                "UPDATE margin_deposits SET status = ?, error = ?, updated_at = ? "
                "WHERE signature = ? AND status = 'sent'",
                (new, error, self.clock(), signature),
            )
        return new

    # --- paying margin back -------------------------------------------------------------

    async def withdraw(self, key_id, request_id, amount, committed):
        """Pay free margin back to the wallet aggregator key_id deposits from
        (withdrawals.py); committed(): what its open layers and fills may cost now."""
        if self.withdrawals is None:
            raise DepositError("this market pays no margin back")
        wallet = aggregator_wallet(self.store.db.conn, key_id)
        return await self.withdrawals.withdraw(
            key_id, request_id, amount, lambda: self.free(key_id) - committed(), wallet
        )

    # --- the faucet (LiteSVM) ----------------------------------------------------------

    async def faucet(self, key_id, wallet):
        """Fund aggregator key_id's own wallet, once per aggregator and per wallet.
        -> base units given now"""
        if self.faucet_fn is None:
            raise DepositError("this market's chain has no faucet: fund your wallet yourself")
        try:
            pubkey = Pubkey.from_string(str(wallet))
        except ValueError:
            raise DepositError("wallet must be a base58 public key") from None
        conn = self.store.db.conn
        if conn.execute("SELECT 1 FROM margin_faucet WHERE wallet = ? OR aggregator = ?",
                        (str(pubkey), key_id)).fetchone():  # fmt: skip
            return 0  # once per aggregator (else one could mint without end) and per wallet
        given = self.faucet_fn(pubkey)
        with self.store.transaction():
            conn.execute(
                "INSERT INTO margin_faucet (wallet, aggregator, amount, at) VALUES (?, ?, ?, ?)",
                (str(pubkey), key_id, given, self.clock()),
            )
        return given

    # --- accounts ----------------------------------------------------------------------

    def account(self, key_id):
        """{"deposited", "withdrawn", "paid", "owed", "free"} in base units, and
        "paid_contracts" (kept as running totals: a few indexed reads, however long the
        history). Withdrawn counts what is paid back or on its way."""
        self._catch_up()
        conn = self.store.db.conn
        (deposited,) = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM margin_deposits WHERE aggregator = ? "
            "AND status = 'finalized'", (key_id,)).fetchone()  # fmt: skip
        paid, paid_cents, count = self._paid.get(key_id, (0, 0.0, 0))
        owed = math.ceil(max(0.0, self._promised.get(key_id, 0.0) - paid_cents) * self.per_cent)
        out = self.withdrawals.withdrawn(key_id) if self.withdrawals is not None else 0
        return {"deposited": deposited, "withdrawn": out, "paid": paid, "owed": owed,
                "free": deposited - out - paid - owed, "paid_contracts": count}  # fmt: skip

    def free(self, key_id):
        return self.account(key_id)["free"]

    def _catch_up(self):
        conn = self.store.db.conn
        for rowid, buyer, cents in conn.execute(
            "SELECT rowid, buyer, price * ABS(avg_watts) * duration_s / 3600000.0 "
            "FROM contracts WHERE rowid > ? ORDER BY rowid", (self._contracts_read,)):  # fmt: skip
            self._promised[buyer] = self._promised.get(buyer, 0.0) + cents
            self._contracts_read = rowid
        # A batch is finalized once; its updated_at says when (5 s of overlap: clocks).
        for batch, at in conn.execute(
            "SELECT id, coalesce(updated_at, at) FROM settlements WHERE status = 'finalized' "
            "AND coalesce(updated_at, at) >= ?", (self._batch_mark - 5.0,)).fetchall():  # fmt: skip
            if batch in self._batches_read:
                continue
            self._batches_read.add(batch)
            self._batch_mark = max(self._batch_mark, at)
            for buyer, amount, cents, count in conn.execute(
                "SELECT c.buyer, sum(i.amount), "
                "sum(c.price * ABS(c.avg_watts) * c.duration_s / 3600000.0), count(*) "
                "FROM settlement_items i JOIN contracts c ON c.id = i.contract "
                "WHERE i.batch = ? GROUP BY c.buyer", (batch,)):  # fmt: skip
                total = self._paid.setdefault(buyer, [0, 0.0, 0])
                total[0] += amount
                total[1] += cents
                total[2] += count

    def accounts(self, key_ids=None):
        """{aggregator id: account} of key_ids (None: every one with deposits or contracts)."""
        if key_ids is None:
            self._catch_up()
            key_ids = set(self._promised) | {k for (k,) in self.store.db.conn.execute(
                "SELECT DISTINCT aggregator FROM margin_deposits")}  # fmt: skip
        return {k: self.account(k) for k in sorted(key_ids)}

    def in_credits(self, account):
        """An account as people read it: credits, with "unpaid" (owed beyond its margin)."""
        scale = 10**self.decimals
        names = ("deposited", "withdrawn", "paid", "owed", "free")
        shown = {name: account[name] / scale for name in names}
        shown["unpaid"] = max(0, -account["free"]) / scale
        shown["paid_contracts"] = account["paid_contracts"]
        return shown


def _has_margin_tables(conn):
    return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'margin_faucet'").fetchone()


def faucet_wallets(conn):
    """[(Pubkey, base units)] the faucet funded, oldest first (a LiteSVM rebuild funds
    them again before the journals replay: rebuild.py)."""
    if not _has_margin_tables(conn):
        return []
    rows = conn.execute("SELECT wallet, amount FROM margin_faucet ORDER BY at, rowid")
    return [(Pubkey.from_string(w), amount) for w, amount in rows]


def faucet_funded(conn):
    """{wallet base58: base units the faucet gave it} (the platform's credit ledger opens
    each with them: Credit.open_funded)."""
    if not _has_margin_tables(conn):
        return {}
    return dict(conn.execute("SELECT wallet, amount FROM margin_faucet"))


def aggregator_wallet(conn, key_id, pending=False):
    """The base58 wallet aggregator `key_id` deposits its margin from: its first deposit's
    (finalized; with pending, one on its way counts too), or None. Every later deposit
    must come from it, and what is paid back goes to it, so a stolen market session
    cannot redirect the margin to a wallet of its own."""
    if not _has_margin_tables(conn):
        return None
    counted = "'finalized', 'sent'" if pending else "'finalized'"
    row = conn.execute(
        "SELECT payer FROM margin_deposits WHERE aggregator = ? AND status IN (%s) "
        "ORDER BY created_at, rowid LIMIT 1" % counted,
        (key_id,),
    ).fetchone()
    return row[0] if row else None


def finalized_deposits(conn):
    """[(payer, clearing, amount)] of the deposits the chain holds (the platform's credit
    ledger moves them, as it moves settlement's payments)."""
    if not _has_margin_tables(conn):
        return []
    return conn.execute(
        "SELECT payer, clearing, amount FROM margin_deposits WHERE status = 'finalized'"
    ).fetchall()
