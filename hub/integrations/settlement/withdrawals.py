"""Margin paid back: an aggregator's free margin returned to the wallet it deposits from.

An aggregator asks over its market session (hub/market/funding.py `withdraw`: an id of
its own, so a retry is the same withdrawal, and an amount in base units). The clearing
house (margin.py) checks it against the free margin less what the aggregator's open
layers and fills not contracted yet may cost; from then on it counts as spent, until it
fails. It is paid only to the wallet the aggregator deposits from (margin.py binds it at
the first deposit and refuses deposits from any other): a stolen session cannot send
the margin anywhere else.

What it costs the clearing account is bounded: at most MAX_PER_DAY withdrawals per
aggregator in 24 hours, failed ones included; at least one credit each, unless it is all
the free margin (to leave a market); and it is paid only into the wallet's existing token
account of this mint, which must still belong to the wallet (the clearing account pays
no rent for it, and a transfer refused for an account handed to another owner is
refused here, before a fee is paid).

Exactly once, as the uploader pays owners: the clearing account signs one transfer
(memo gridbid-withdraw:<market>:<aggregator>:<id>) and it is journaled here
(margin_withdrawals: signature, bytes, last valid height) before it is first sent. It is
final once the chain has it finalized; it fails, and the amount is free again, when it
lands with an error or when the chain's finalized height has passed its last valid
height with no trace of it (then it can never land). A failed withdrawal is never
signed again: the aggregator asks again under a new id.
"""

import logging
import time

from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.transaction import Transaction

from hub.integrations.settlement.backends import BackendError, SendError
from hub.integrations.settlement.transactions import ata, memo_ix, transfer_ix

log = logging.getLogger(__name__)

MEMO = "gridbid-withdraw:%s:%d:%s"
MAX_PENDING = 4  # per aggregator, on their way
MAX_PER_DAY = 12  # per aggregator, failed ones included (each costs the clearing a fee)
MAX_UNITS = 2**63 - 1


class WithdrawalError(ValueError):
    pass


class Withdrawals:
    """The margin paid back; owns margin_withdrawals."""

    def __init__(self, store, backend, mint, clearing, market, decimals, clock=time.time):
        self.store, self.backend, self.mint = store, backend, mint
        self.clearing, self.market, self.decimals = clearing, market, decimals  # a Wallet
        self.clock = clock
        self._out = {}  # aggregator -> base units withdrawn (running totals: read per bid)

    def withdrawn(self, key_id):
        """Base units paid back or on their way (they are not free)."""
        if key_id not in self._out:
            (self._out[key_id],) = self.store.db.conn.execute(
                "SELECT coalesce(sum(amount), 0) FROM margin_withdrawals WHERE aggregator = ? "
                "AND status != 'failed'", (key_id,)).fetchone()  # fmt: skip
        return self._out[key_id]

    async def withdraw(self, key_id, request_id, amount, free, wallet):
        """Pay `amount` back to `wallet` if free() (base units, less what the aggregator's
        bids may cost) covers it. -> {"id", "amount", "wallet", "status", "signature"};
        WithdrawalError when refused or failed."""
        if (
            not isinstance(request_id, str)
            or not 1 <= len(request_id) <= 64
            or not all(c.isalnum() or c in "-_." for c in request_id)
        ):
            raise WithdrawalError("id must be 1..64 letters, digits, '-', '_' or '.'")
        conn = self.store.db.conn
        known = conn.execute("SELECT 1 FROM margin_withdrawals WHERE aggregator = ? AND id = ?",
                             (key_id, request_id)).fetchone()  # fmt: skip
        if known is None:
            if (
                isinstance(amount, bool)
                or not isinstance(amount, int)
                or not (0 < amount <= MAX_UNITS)
            ):
                raise WithdrawalError("amount must be a whole number of base units > 0")
            if wallet is None:
                raise WithdrawalError("no deposit of yours is final yet: nothing to pay back")
            try:
                await self._check_account(wallet)
                blockhash, last_valid = await self.backend.latest_blockhash()
            except BackendError as exc:
                raise WithdrawalError("the chain is unreachable, nothing sent: %s" % exc) from None
            tx = self._journal(key_id, request_id, amount, free(), wallet, blockhash, last_valid)
            try:
                await self.backend.send(bytes(tx))
            except SendError as exc:  # proves nothing about landing: the status decides
                log.info("margin: withdrawal %s of aggregator %d: %s", request_id, key_id, exc)
            except BackendError as exc:  # journaled: check() looks it up later
                log.info("margin: withdrawal %s of aggregator %d not sent yet: %s",
                         request_id, key_id, exc)  # fmt: skip
        return await self._answer(key_id, request_id)

    def _journal(self, key_id, request_id, amount, free, wallet, blockhash, last_valid):
        """The checks and the journal row in one turn of the loop (no await): no bid is
        taken between reading `free` and counting the amount as spent."""
        conn = self.store.db.conn
        if conn.execute("SELECT 1 FROM margin_withdrawals WHERE aggregator = ? AND id = ?",
                        (key_id, request_id)).fetchone():  # fmt: skip
            raise WithdrawalError("withdrawal %s is asked already" % request_id)
        pending, today = conn.execute(
            "SELECT coalesce(sum(status = 'sent'), 0), count(*) FROM margin_withdrawals "
            "WHERE aggregator = ? AND created_at > ?", (key_id, self.clock() - 86400),
        ).fetchone()  # fmt: skip
        if pending >= MAX_PENDING:
            raise WithdrawalError("%d withdrawals of yours are on their way: wait" % pending)
        if today >= MAX_PER_DAY:
            raise WithdrawalError("%d withdrawals in 24 hours, the most a market pays back: "
                                  "ask again tomorrow" % today)  # fmt: skip
        scale = 10**self.decimals
        if amount > free:
            raise WithdrawalError("your free margin is %.4f credits (less what your bids may "
                                  "cost): cannot pay back %.4f"
                                  % (max(free, 0) / scale, amount / scale))  # fmt: skip
        if amount < scale and amount != free:
            raise WithdrawalError("at least 1 credit is paid back at a time, or all of your "
                                  "free margin (%.4f)" % (max(free, 0) / scale))  # fmt: skip
        owner, payer = Pubkey.from_string(wallet), self.clearing.pubkey
        ixs = [memo_ix(MEMO % (self.market, key_id, request_id), payer),
               transfer_ix(payer, owner, self.mint, amount, self.decimals)]  # fmt: skip
        tx = Transaction.new_signed_with_payer(ixs, payer, [self.clearing.keypair], blockhash)
        now = self.clock()
        with self.store.transaction():  # journaled before it is sent
            conn.execute(
                "INSERT INTO margin_withdrawals (aggregator, id, amount, wallet, clearing, "
                "signature, raw, last_valid, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?)",
                (key_id, request_id, amount, wallet, str(payer), str(tx.signatures[0]),
                 bytes(tx), last_valid, now, now),
            )  # fmt: skip
        self._out[key_id] = self.withdrawn(key_id) + amount
        return tx

    async def _check_account(self, wallet):
        """The wallet's token account of this mint exists and is still the wallet's."""
        from solders.token.state import TokenAccount, TokenAccountState

        owner = Pubkey.from_string(wallet)
        data = await self.backend.account_data(ata(owner, self.mint))
        try:
            account = TokenAccount.from_bytes(bytes(data)) if data else None
        except ValueError:
            account = None
        if (
            account is None
            or account.mint != self.mint
            or account.owner != owner
            or (account.state != TokenAccountState.Initialized)
        ):
            raise WithdrawalError("your wallet's token account of this market's credit (%s) is "
                                  "missing, frozen or not yours: nothing sent"
                                  % ata(owner, self.mint))  # fmt: skip

    async def _answer(self, key_id, request_id):
        row = self.store.db.conn.execute(
            "SELECT amount, wallet, status, signature, error FROM margin_withdrawals "
            "WHERE aggregator = ? AND id = ?", (key_id, request_id)).fetchone()  # fmt: skip
        amount, wallet, status, signature, error = row
        if status == "sent":
            try:
                status = await self._settle(signature)
            except BackendError:
                pass  # journaled: looked up again by check()
        if status == "failed":
            error = self.store.db.conn.execute(
                "SELECT error FROM margin_withdrawals WHERE signature = ?", (signature,)
            ).fetchone()[0]
            raise WithdrawalError("withdrawal %s failed: %s" % (request_id, error))
        return {"id": request_id, "amount": amount, "wallet": wallet, "status": status,
                "signature": signature}  # fmt: skip

    async def check(self):
        """Withdrawals sent but not final: the chain's answer, or expiry. -> how many left"""
        sql = "SELECT signature FROM margin_withdrawals WHERE status = 'sent'"
        rows = self.store.db.conn.execute(sql).fetchall()
        left = 0
        for (signature,) in rows:
            left += await self._settle(signature) == "sent"
        return left

    async def _settle(self, signature):
        (last_valid,) = self.store.db.conn.execute(
            "SELECT last_valid FROM margin_withdrawals WHERE signature = ?", (signature,)
        ).fetchone()
        height = await self.backend.finalized_height()  # before the status (uploader.py)
        (status,) = await self.backend.statuses([Signature.from_string(signature)])
        if status is None:
            if height <= last_valid:
                return "sent"
            new, error = "failed", "never landed (its blockhash expired): nothing was paid"
        elif status.err is not None:
            new, error = "failed", status.err
        elif not status.finalized:
            return "sent"
        else:
            new, error = "finalized", None
        with self.store.transaction():
            changed = self.store.db.conn.execute(
                "UPDATE margin_withdrawals SET status = ?, error = ?, updated_at = ? "
                "WHERE signature = ? AND status = 'sent'", (new, error, self.clock(), signature),
            ).rowcount  # fmt: skip
        if changed and new == "failed":
            self._out.clear()  # read again from the table: the amount is free again
        if new == "finalized":
            log.info("margin: withdrawal %s paid back", signature)
        return new


def finalized(conn):
    """[(clearing, wallet, amount)] of withdrawals the chain holds, with no Withdrawals
    at hand (the platform's credit ledger); [] before the table exists."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'margin_withdrawals'").fetchone():
        return []
    return conn.execute(
        "SELECT clearing, wallet, amount FROM margin_withdrawals WHERE status = 'finalized'"
    ).fetchall()
