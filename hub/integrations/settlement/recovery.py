"""The uploader's start-up: nothing signed before it may land unseen afterwards, and
what the chain says was paid is in the journal before anything new is signed.

1. Durable nonces: a missing nonce account is created; an idle one (no journaled
   transaction in flight on it) is advanced, which cancels any transaction signed on its
   old nonce whose journal was lost.
2. The hold: wait until the finalized block height passes the last valid block height
   of the newest blockhash. Every transaction signed before, on any older blockhash, has
   then either landed (and is visible) or can never land. On a cluster that is up to a
   blockhash's life (~60-90 s) after each start; the LiteSVM backend makes the blocks.
3. Reconciliation: every payer's transactions back to reconcile_s are read with their
   memos (getSignaturesForAddress). A part found there is journaled as paid, for a batch
   the journal knows (its last updates were lost) or, when its window is batched again
   (uploader._match), for one it lost: same hash, same parts. Another hash under the
   same batch id is a "conflict": the store's records differ from what was paid, and
   the batch is never paid again without an operator.
"""

import logging

from solders.system_program import create_nonce_account
from solders.transaction import Transaction

from hub.integrations.settlement import journal, records
from hub.integrations.settlement.backends import BackendError, SendError
from hub.integrations.settlement.transactions import advance_nonce_ix

log = logging.getLogger(__name__)

NONCE_RENT = 1_447_680  # lamports: rent exemption of the 80-byte nonce account


async def start(up):
    if up.nonces:
        await nonce_accounts(up)
    _hash, last_valid = await up.backend.latest_blockhash()
    await up.backend.wait_past(last_valid)
    await reconcile(up)


async def reconcile(up):
    """Read every payer's memos back to reconcile_s; journal what was paid."""
    since, found = up.clock() - up.reconcile_s, {}
    prefix = up.name + "."
    for wallet in up.payers.values():
        for signature, memo, err in await up.backend.history(wallet.pubkey, since):
            parsed = records.parse_memo(memo)
            if err is not None or parsed is None or not parsed[0].startswith(prefix):
                continue
            batch_id, digest, part, parts = parsed
            entry = found.setdefault(batch_id, {"digests": set(), "sigs": {}})
            entry["digests"].add((digest, parts))
            entry["sigs"][part] = str(signature)
    up.landed = found
    repaired = []
    for batch_id, entry in found.items():
        row = journal.batch(up.store, batch_id)
        if row is None or row["status"] == "conflict":
            continue
        if entry["digests"] != {(row["hash"], row["parts"])}:
            log.warning("settlement: batch %s on chain does not match the journal" % batch_id)
            continue
        for part, signature in entry["sigs"].items():
            if row["signatures"][part - 1] is None:
                journal.adopt(up.store, batch_id, part, signature)
                repaired.append(batch_id)
    up.publish(journal.refresh(up.store, set(repaired)))
    return found


async def nonce_accounts(up):
    """Create missing nonce accounts; advance idle ones (cancels unknown strays)."""
    busy = {r["a_nonce"].split()[0] for r in journal.open_parts(up.store)
            if r["a_nonce"] and r["a_status"] in journal.ATTEMPT_OPEN}  # fmt: skip
    for payer, nonce in up.nonces.items():
        wallet = up.by_pubkey[payer]
        if await up.backend.account_data(nonce.pubkey) is None:
            ixs = create_nonce_account(wallet.pubkey, nonce.pubkey, wallet.pubkey, NONCE_RENT)
            await submit(up, wallet, ixs, [nonce])
        elif str(nonce.pubkey) not in busy:
            await submit(up, wallet, [advance_nonce_ix(nonce.pubkey, wallet.pubkey)], [])


async def submit(up, wallet, ixs, signers, tries=3):
    """Send a set-up transaction until it is finalized (signed again when it expired
    unseen, at most `tries` times)."""
    refused = None
    for _ in range(tries):
        blockhash, last_valid = await up.backend.latest_blockhash()
        keys = [wallet.keypair] + [s.keypair for s in signers]
        tx = Transaction.new_signed_with_payer(ixs, wallet.pubkey, keys, blockhash)
        while True:
            try:
                await up.backend.send(bytes(tx))
            except SendError as exc:
                refused = exc
            height = await up.backend.finalized_height()
            (status,) = await up.backend.statuses([tx.signatures[0]])
            if status is not None and status.err is not None:
                raise BackendError("set-up transaction failed: %s" % status.err)
            if status is not None and status.finalized:
                return
            if status is None and height > last_valid:
                break  # expired unseen: sign again
            await up.backend.wait_past(height)
    raise BackendError("set-up transaction never landed (last refusal: %s)" % refused)
