"""A lost journal or store: what the chain's memos say the platform did.

Every platform transaction is paid by the platform authority and carries one memo,
gridbid-<area>:<kind>:<command>:<fields> (credit.py, rec.py, rec_ops.py, gov.py,
incentives.py), so the authority's history (backend.history, getSignaturesForAddress on a
cluster) lists, per landed transaction, the command it carried out. recover() runs at a
start (service.py; Platform.recover()) and before anything new is signed:

1. The hold (as hub/integrations/settlement/recovery.py): wait until the finalized height passes the
   last valid height of the newest blockhash. Every transaction signed before, whatever
   journal it was in, has then landed (and is in the history) or never will.
2. The authority's history back to `since` (default: all of it) is read; failed
   transactions are skipped (they moved nothing). For each memo's command:
     in the store, 'pending', its transaction not journaled (journal rows lost):
         the signature is journaled as finalized: resume() then applies the command
         from its stored payload exactly as if the answer had come back (REBUILT);
     in the store, 'done': nothing to do;
     in the store, 'failed' (its reservations released) yet landed, or 'pending' and
         still waiting for its participant's signature (so none of its transactions
         exists: the memo is someone else's): a conflict, kept in platform_landed and
         reported by reconcile(), never applied;
     not in the store (its rows lost, or a fresh store): kept in platform_landed; that
         command id is REFUSED from then on (engine.run), so it is never paid or minted
         twice, and reconcile() reports it.
3. A 'pending' command with no journaled transaction and none landed may be signed
   again (engine._finish), only in a process that made the hold: before it, an unseen
   transaction of it could still land.

NOT rebuilt: the effects of a command the store has no row for (credit_moves,
certificates and their serials, rec_energy reservations, stakes, votes, rewards). The
memo names the command and a summary, not the payload (a certificate's serials, the
contracts whose energy it counted, a stake's lock), so those rows cannot be recreated
faithfully: the chain's balances then differ from the store's, and reconcile() reports
the differences and the unknown transactions side by side for an operator. Nor is a
vintage's mint (rec_vintages, created without a memo) re-found: its `rec-<vintage>`
key still names it, and a new vintage command for it fails on chain (the account
exists), never minting anything.

Command ids are free text: a memo whose fields may themselves hold ':' (a retirement's
reason, a vote's proposal id) gives every possible split as a candidate, and all are
refused when none is in the store: refusing too much is safe, running twice is not.
"""

import re
import time

# memo prefix -> (fields after the command, whether later fields may contain ':')
FORMATS = {
    "gridbid-credit:purchase:": (2, False),
    "gridbid-credit:redemption:": (2, False),
    "gridbid-rec:mint:": (2, False),
    "gridbid-rec:list:": (2, False),
    "gridbid-rec:unlist:": (2, False),
    "gridbid-rec:buy:": (2, False),
    "gridbid-rec:retire:": (3, True),  # vintage:serials:reason
    "gridbid-gov:genesis:": (1, False),
    "gridbid-gov:grant:": (1, False),
    "gridbid-gov:stake:": (1, False),
    "gridbid-gov:unstake:": (1, False),
    "gridbid-gov:propose:": (2, False),  # param:value
    "gridbid-gov:vote:": (3, True),  # proposal:choice:weight
    "gridbid-reward:": (1, False),
}
_RENDERED = re.compile(rb"\[(\d+)\] ")


def memos(rendering):
    """The memo texts of a history entry: a node renders them "[len] text; [len] text"
    (len in bytes, so a text holding "; " is still cut right); a bare text as it is."""
    data, out, i = (rendering or "").encode(), [], 0
    if data and not _RENDERED.match(data):
        return [rendering]
    while i < len(data):
        found = _RENDERED.match(data, i)
        if found is None:
            break
        start = found.end()
        end = start + int(found.group(1))
        out.append(data[start:end].decode("utf-8", "replace"))
        i = end + 2  # "; "
    return out


def candidates(text):
    """The command ids a platform memo may carry (usually one); empty if not ours."""
    for prefix, (after, loose) in FORMATS.items():
        if text.startswith(prefix):
            parts = text[len(prefix) :].split(":")
            if len(parts) <= after:
                return []
            if not loose:
                return [":".join(parts[:-after])]
            return [":".join(parts[:i]) for i in range(1, len(parts) - after + 1)]
    return []


async def recover(engine, since=0.0, hold=True):
    """Steps 1-2 above, then resume(). -> {"adopted", "unknown", "conflicts"}: lists of
    command ids (adopted: pending ones whose landed transaction was journaled again)."""
    backend = engine.backend
    if hold:
        _hash, last_valid = await backend.latest_blockhash()
        await backend.wait_past(last_valid)
    history = await backend.history(engine.keys.authority.pubkey, since)
    report = {"adopted": [], "unknown": [], "conflicts": []}
    now = time.time()
    with engine.write() as conn:
        for signature, rendering, err in history:
            if err is not None:
                continue
            signature = str(signature)
            for text in memos(rendering):
                found = candidates(text)
                known = [
                    (c, row[0])
                    for c in found
                    for row in conn.execute(
                        "SELECT status FROM platform_commands WHERE id = ?", (c,)
                    )
                ]
                if not known:
                    for command in found:
                        _landed(conn, signature, command, text, now)
                        report["unknown"].append(command)
                    continue
                for command, status in known:
                    journaled = conn.execute(
                        "SELECT 1 FROM platform_txs WHERE signature = ?", (signature,)
                    ).fetchone()
                    unsigned = conn.execute(
                        "SELECT 1 FROM platform_requests WHERE command = ?", (command,)
                    ).fetchone()
                    if status == "pending" and unsigned:
                        # Never signed by its participant, so nothing of it landed: this
                        # memo is someone else's. Kept and reported, never applied.
                        _landed(conn, signature, command, text, now)
                        report["conflicts"].append(command)
                    elif status == "pending" and not journaled:
                        conn.execute(
                            "INSERT INTO platform_txs VALUES (?, ?, ?, 0, 'finalized', ?, ?, ?)",
                            (signature, command, b"", "found by its memo (journal lost)",
                             now, now),
                        )  # fmt: skip
                        report["adopted"].append(command)
                    elif status == "failed":
                        _landed(conn, signature, command, text, now)
                        report["conflicts"].append(command)
    engine.recovered = engine.recovered or hold  # re-signing needs the hold
    await engine.resume()
    return report


def _landed(conn, signature, command, text, now):
    conn.execute(
        "INSERT OR IGNORE INTO platform_landed VALUES (?, ?, ?, ?)",
        (signature, command, text, now),
    )


def differences(conn):
    """What reconcile() reports for the transactions recover() could not place."""
    out = []
    for signature, command, text, status in conn.execute(
        "SELECT l.signature, l.command, l.memo, c.status FROM platform_landed l "
        "LEFT JOIN platform_commands c ON c.id = l.command ORDER BY l.found_at, l.rowid"
    ):
        if status is None:
            why = "the store has no record of command %r: its effects are not rebuilt" % command
        else:
            why = "command %r is recorded %s in the store" % (command, status)
        out.append("chain: transaction %s (%s) landed; %s" % (signature, text, why))
    return out
