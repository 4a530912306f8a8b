"""An in-process Solana chain for the demo and the tests: LiteSVM (solders.litesvm)
running the real SPL Token, Associated Token Account and Memo programs, plus what a
cluster's RPC node adds around a bank and LiteSVM lacks:

- blocks and expiry like a cluster's: a block every `block_s` of wall time (None: only
  when new_block() is called), and a transaction is valid while its blockhash is one of
  the last `valid_blocks` (150 on clusters, lastValidBlockHeight = height + 150), or,
  with a durable nonce, while the nonce account still holds its nonce. (LiteSVM alone
  accepts only its latest blockhash, and checks no nonce once its check is off.)
- a status for every signature ever processed (a cluster's status cache plus history),
  so a re-sent transaction is refused as AlreadyProcessed however old: LiteSVM's own
  history keeps ~32 by default, and an identical payment could land twice past it;
- an index of signatures by address with their memos (getSignaturesForAddress), which
  reconciliation reads.

Every processed transaction is final at once (finalized = processed here). State lives
in this process, but it is durable through the store's journals: at each start the
chain is provisioned again (hub/integrations/settlement/provision.py, the same mint, aggregators and
funding) and every finalized journaled transaction re-executed by replay()
(hub/integrations/settlement/rebuild.py), so the token balances are those the hub left. That is
still no ledger of its own: real money needs a cluster (an RPC backend).
"""

import time
from collections import namedtuple

from solders.litesvm import LiteSVM
from solders.system_program import ID as SYSTEM_PROGRAM
from solders.token.state import TokenAccount
from solders.transaction import Transaction
from solders.transaction_status import TransactionErrorFieldless

from hub.integrations.settlement.transactions import memos, nonce_of, nonce_value

SOL = 10**9
REPLAY_FLOOR, REPLAY_TOP_UP = 1 * SOL, 100 * SOL  # a replayed fee payer's lamports
Landed = namedtuple("Landed", "signature slot err memo block_time error")  # error: solders'


class Chain:
    def __init__(self, valid_blocks=150, block_s=None, clock=time.monotonic):
        # Our checks replace LiteSVM's: blockhash age and nonces here, duplicates by our
        # own status table (history 0: LiteSVM keeps no copy of every transaction).
        self.svm = LiteSVM().with_transaction_history(0).with_blockhash_check(False)
        self.valid_blocks, self.block_s, self.clock = valid_blocks, block_s, clock
        self.height = 0
        self._born = clock()
        self._recent = {self.svm.latest_blockhash(): 0}  # blockhash -> height it was made
        self._landed = {}  # Signature -> Landed
        self._by_address = {}  # Pubkey -> [Signature, ...] oldest first
        self.last_error = None  # the last send's error, as solders' error object

    # --- blocks ------------------------------------------------------------------------

    def tick(self):
        """Produce the blocks wall time says are due (block_s set)."""
        if self.block_s:
            due = int((self.clock() - self._born) / self.block_s) - self.height
            if due > 0:
                self.new_block(due)

    def new_block(self, count=1):
        skipped = max(0, count - self.valid_blocks - 1)  # their blockhashes expired unseen
        self.height += skipped
        for _ in range(count - skipped):
            self.svm.expire_blockhash()
            self.height += 1
            self._recent[self.svm.latest_blockhash()] = self.height
        oldest = self.height - self.valid_blocks
        self._recent = {h: at for h, at in self._recent.items() if at >= oldest}

    def latest_blockhash(self):
        """(blockhash, last valid block height)."""
        self.tick()
        return self.svm.latest_blockhash(), self.height + self.valid_blocks

    def block_height(self):
        self.tick()
        return self.height

    # --- transactions ------------------------------------------------------------------

    def send(self, tx):
        """Process a Transaction (or its bytes). -> (Signature, error text or None, landed):
        landed = processed (fee charged, status recorded), with or without an error."""
        if isinstance(tx, (bytes, bytearray)):
            tx = Transaction.from_bytes(bytes(tx))
        self.tick()
        signature = tx.signatures[0]
        if signature in self._landed:
            self.last_error = TransactionErrorFieldless.AlreadyProcessed
            return signature, "AlreadyProcessed", False
        if not self._fresh(tx):
            self.last_error = TransactionErrorFieldless.BlockhashNotFound
            return signature, "BlockhashNotFound", False
        return self._execute(tx)

    def replay(self, raws):
        """Re-execute journaled transactions (signed bytes, oldest first) exactly as send()
        records them (status, signatures by address, memos), but with no blockhash age:
        their blockhashes were another chain's. A signature already seen is skipped, as
        send() refuses it (AlreadyProcessed). -> (replayed, failed): failed = bytes that
        do not parse, or a transaction refused or landed with an error."""
        replayed = failed = 0
        for raw in raws:
            try:
                tx = Transaction.from_bytes(bytes(raw))
            except ValueError:
                failed += 1
                continue
            self.tick()
            if tx.signatures[0] in self._landed:
                continue
            # The journal holds no airdrops: its fee payers had the lamports when these
            # landed, so they get them again (lamport balances are not rebuilt exactly).
            payer = tx.message.account_keys[0]
            if (self.svm.get_balance(payer) or 0) < REPLAY_FLOOR:
                self.airdrop(payer, REPLAY_TOP_UP)
            _sig, err, _landed = self._execute(tx)
            replayed += err is None
            failed += err is not None
        return replayed, failed

    def _execute(self, tx):
        signature = tx.signatures[0]
        payer = tx.message.account_keys[0]
        before = self.svm.get_balance(payer) or 0
        result = self.svm.send_transaction(tx)
        error = None if hasattr(result, "compute_units_consumed") else result.err()
        err, self.last_error = None if error is None else str(error), error
        # A processed transaction always pays its fee, failed or not; a refused one
        # (bad signature, unknown fee payer) never does.
        landed = err is None or (self.svm.get_balance(payer) or 0) < before
        if landed:
            text = "; ".join("[%d] %s" % (len(m.encode()), m) for m in memos(tx)) or None
            self._landed[signature] = Landed(
                signature, self.height, err, text, int(time.time()), error
            )
            for key in set(tx.message.account_keys):
                self._by_address.setdefault(key, []).append(signature)
            if _touches_nonce(tx):
                self.new_block()  # a nonce advances once per block: the next is in a new one
        return signature, err, landed

    def _fresh(self, tx):
        """A recent blockhash, or else (as a bank checks) the nonce of a nonce account."""
        made = self._recent.get(tx.message.recent_blockhash)
        if made is not None and made + self.valid_blocks >= self.height:
            return True
        nonce = nonce_of(tx)
        return nonce is not None and nonce_value(self.account_data(nonce[0])) == nonce[1]

    def status(self, signature):
        """Landed(...) or None (never processed)."""
        return self._landed.get(signature)

    def signatures_for_address(self, address, before=None, limit=1000):
        """Landed entries touching `address`, newest first, after `before` (a Signature)."""
        sigs = self._by_address.get(address, [])
        end = len(sigs)
        if before is not None:
            end = next((i for i in range(len(sigs) - 1, -1, -1) if sigs[i] == before), 0)
        return [self._landed[s] for s in reversed(sigs[max(0, end - limit) : end])]

    # --- accounts ----------------------------------------------------------------------

    def account_data(self, address):
        account = self.svm.get_account(address)
        return None if account is None or account.lamports == 0 else bytes(account.data)

    def token_balance(self, address):
        data = self.account_data(address)
        return None if data is None else TokenAccount.from_bytes(data).amount

    def airdrop(self, address, lamports):
        self.svm.airdrop(address, lamports)


def _touches_nonce(tx):
    """Does it initialize or advance a nonce account (system instructions 6 and 4)?"""
    keys = tx.message.account_keys
    return any(
        keys[ix.program_id_index] == SYSTEM_PROGRAM and bytes(ix.data)[:4] in _NONCE_OPS
        for ix in tx.message.instructions
    )


_NONCE_OPS = (b"\x04\x00\x00\x00", b"\x06\x00\x00\x00")
