"""Commands: idempotent by id, planned in the store, journaled, sent, then applied.

Every operation (buy credits, mint certificates, vote, ...) is a command with a
caller-chosen id and runs in three steps:

1. plan    one write transaction (BEGIN IMMEDIATE): the id is checked (used before:
           refused, see below), the operation validates against the store and decides
           everything it will do (the payload: accounts, amounts, serials) and reserves
           what must not be taken twice (e.g. a contract's metered energy, a
           certificate being retired); the command is recorded 'pending'; when it has a
           chain part its transaction is signed and JOURNALED (platform_txs) in the same
           transaction. Nothing has been sent yet.
2. send    the journaled bytes are sent; the status is read as the uploader does
           (hub/integrations/settlement/uploader.py): height first, then the signature's status.
             finalized, no error -> 3.   error -> failed: the command fails, its
             reservations are released (a failed transaction moved nothing).
             not found and expired -> signed again from the payload, journaled, sent.
             not found, still valid -> the same bytes again, later (resume()).
3. apply   one write transaction: the ledger entries and state changes of the payload,
           and the command 'done' with its result.

An unanswered call (BackendError: a lost request or response) proves nothing: the
status is asked again, and a command still open after the last try is left pending.
A pending command whose journal rows were lost is not applied blind: only after
recovery.py's hold and memo scan (which journals a landed transaction again) is it
signed anew (engine.recovered).

A crash anywhere leaves a 'pending' command whose journal says what may be on chain;
resume() (called before every command) finishes it, so the store and the chain agree
again. At most one transaction of a command may still land: a new one is signed only
once the previous one is provably dead.

The same id again is refused (Replayed, with the first result), whatever its
arguments: a retried CLI call can never act twice.

Who signs (signing.py): the platform's keys sign the operator's commands; a participant's
command carries the participant's own signature, given as its wallet to run() or later
to submit() for the signing request run() returned.

Holds. plan() may name what the command takes (operation.holds: a certificate, a stake,
a vote); a second command on one of them is refused until the first is done or failed,
so a command waiting for a signature cannot be overtaken by another on the same thing.
"""

import asyncio
import contextlib
import json
import time

from solders.message import Message
from solders.signature import Signature

from hub.integrations.platform import schema, signing
from hub.integrations.platform.errors import Pending, PlatformError, Replayed
from hub.integrations.settlement import schema as settlement_schema
from hub.integrations.settlement.backends import BackendError, SendError

# Command ids the platform makes itself: no other kind of command may take them.
RESERVED_IDS = {
    "reward-": ("reward.compute", "reward.pay"),
    "rec-vintage-": ("rec.vintage",),
    "nrg-genesis": ("gov.genesis",),
    "litesvm-funding-": ("credit.opening",),
}


class Operation:
    """What a kind of command does. plan() runs inside the plan transaction and returns
    the payload (JSON-able; a participant's command sets payload["signer"], the base58
    key that must sign it); instructions() turns a payload into (instructions, the
    platform's own signer Wallets) or None when there is nothing to send; holds() names
    what it takes until it ends; apply() writes the effects and returns the result;
    release() undoes plan()'s reservations after a failure."""

    kind = ""

    def holds(self, payload):
        return ()

    def plan(self, conn, args, command):
        raise NotImplementedError

    def instructions(self, payload):
        return None

    def apply(self, conn, command, payload, at):
        return payload

    def release(self, conn, command, payload):
        pass


class Engine:
    def __init__(self, store, backend, keys):
        self.store, self.backend, self.keys = store, backend, keys
        self.db, self.conn = store.db, store.db.conn
        settlement_schema.migrate(self.db)  # it pays from settlement's mint, reads its parts
        schema.migrate(self.db)
        self.operations = {}
        self.recovered = False  # recovery.recover() ran (its hold passed) in this process
        # Participants' wallets given to run() in this process, for that command only
        # ({command: Wallet}, dropped when it ends): their own processes (a CLI run with
        # --wallet), never the hub's.
        self._wallets = {}

    def register(self, operation):
        self.operations[operation.kind] = operation

    @contextlib.contextmanager
    def write(self):
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def rows(self, sql, params=()):
        cur = self.conn.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    # --- the three steps ----------------------------------------------------------------

    async def run(self, command, kind, args, wallet=None):
        """Run one command to the end. -> its result, or a participant's command without
        its `wallet`: the signing request (submit() takes its signature); PlatformError
        if refused."""
        if not isinstance(command, str) or not command or len(command) > 128:
            raise PlatformError("a command needs an id (1..128 characters)")
        for prefix, kinds in RESERVED_IDS.items():
            if command.startswith(prefix) and kind not in kinds:
                raise PlatformError("ids starting %r are the platform's own" % prefix)
        await self.resume()
        operation = self.operations[kind]
        blockhash = last_valid = None
        if type(operation).instructions is not Operation.instructions:
            try:
                blockhash, last_valid = await self.backend.latest_blockhash()
            except BackendError as exc:
                raise PlatformError("the chain is unreachable, nothing done: %s" % exc) from None
        now = time.time()
        with self.write() as conn:
            old = conn.execute(
                "SELECT status, result, error FROM platform_commands WHERE id = ?", (command,)
            ).fetchone()
            if old:
                raise Replayed(command, *old)
            landed = conn.execute(
                "SELECT signature FROM platform_landed WHERE command = ?", (command,)
            ).fetchone()
            if landed:  # recovery.py: on chain, its record lost
                raise PlatformError(
                    "command %r already landed on chain (transaction %s) but the store lost "
                    "its record: not run again (see reconcile)" % (command, landed[0])
                )
            # The row first: what plan() reserves references it (rolled back together).
            conn.execute(
                "INSERT INTO platform_commands VALUES (?, ?, ?, 'pending', NULL, NULL, NULL, ?, ?)",
                (command, kind, json.dumps(args, sort_keys=True), now, now),
            )
            payload = operation.plan(conn, args, command)
            # In every memo: two commands alike in all else are still two transactions
            # (identical bytes would have one signature, and the second would not land).
            payload["command"] = command
            conn.execute(
                "UPDATE platform_commands SET payload = ? WHERE id = ?",
                (json.dumps(payload), command),
            )
            self._hold(conn, command, operation.holds(payload))
            signer = payload.get("signer")
            if wallet is not None:
                if signer is None:
                    raise PlatformError("%s is the operator's command: no participant "
                                        "signs it" % kind)  # fmt: skip
                if str(wallet.pubkey) != signer:
                    given = wallet.pubkey
                    raise PlatformError("command %r must be signed by %s, not by the wallet "
                                        "given (%s)" % (command, signer, given))  # fmt: skip
                self._wallets[command] = wallet
            if signer is not None and wallet is None:
                ixs, _signers = operation.instructions(payload)
                raw = bytes(signing.message(ixs, self.keys.authority.pubkey, blockhash))
                conn.execute(
                    "INSERT INTO platform_requests VALUES (?, ?, ?, ?, ?)",
                    (command, signer, raw, last_valid, now),
                )
                return signing.request(command, signer, raw, now)
            tx = self._sign(operation, payload, blockhash)
            if tx is not None:
                self._journal(conn, command, tx, last_valid, now)
        return await self._finish(command)

    async def submit(self, command, signature):
        """A participant's signature (base58) of its command's request: checked over the
        request's message, the platform's own signatures added, journaled, sent.
        -> the command's result"""
        row = self.conn.execute(
            "SELECT signer, message, last_valid, created_at FROM platform_requests "
            "WHERE command = ?", (command,),
        ).fetchone()  # fmt: skip
        if row is None:
            old = self.conn.execute(
                "SELECT status, result, error FROM platform_commands WHERE id = ?", (command,)
            ).fetchone()
            if old is None:
                raise PlatformError("there is no command %r" % (command,))
            if old[0] == "pending":
                raise PlatformError("command %r is signed already: it is on its way" % command)
            raise Replayed(command, *old)
        signer, raw, last_valid, _created_at = row
        given = {signer: signing.check(command, signer, raw, signature)}
        kind, payload = self._planned(command)
        _ixs, signers = self.operations[kind].instructions(payload)
        tx = signing.assemble(Message.from_bytes(raw), self._keypairs(payload, signers), given)
        with self.write() as conn:
            # Taken once, in time: a second submit, or one after the request's time (the
            # hub's resume() fails it meanwhile, and then sees no transaction), journals
            # nothing. Checked in this transaction, so the two never both happen.
            if conn.execute(
                "DELETE FROM platform_requests WHERE command = ? AND created_at >= ?",
                (command, time.time() - signing.REQUEST_S),
            ).rowcount:
                self._journal(conn, command, tx, last_valid, time.time())
        return await self._finish(command)

    def requests(self):
        """The commands waiting for their participant's signature (signing requests)."""
        rows = self.rows("SELECT * FROM platform_requests ORDER BY created_at")
        return [signing.request(r["command"], r["signer"], r["message"], r["created_at"])
                for r in rows]  # fmt: skip

    def _hold(self, conn, command, subjects):
        for subject in subjects:
            held = conn.execute(
                "SELECT command FROM platform_holds WHERE subject = ?", (subject,)
            ).fetchone()
            if held:
                raise PlatformError("%s is taken by command %r, not finished yet (it may wait "
                                    "for a signature)" % (subject, held[0]))  # fmt: skip
            conn.execute("INSERT INTO platform_holds VALUES (?, ?)", (subject, command))

    def _planned(self, command):
        ((kind, payload),) = self.conn.execute(
            "SELECT kind, payload FROM platform_commands WHERE id = ?", (command,)
        ).fetchall()
        return kind, json.loads(payload)

    async def resume(self):
        """Finish every pending command (after a crash, or one an RPC left pending)."""
        for row in self.rows("SELECT id FROM platform_commands WHERE status = 'pending'"):
            try:
                await self._finish(row["id"])
            except PlatformError:
                pass  # still pending, or now failed (recorded): not this caller's error

    async def _finish(self, command):
        kind, payload = self._planned(command)
        operation = self.operations[kind]
        txs = self.rows(
            "SELECT signature, raw, last_valid, status FROM platform_txs WHERE command = ? "
            "ORDER BY created_at, rowid",
            (command,),
        )
        waiting = self.conn.execute(
            "SELECT signer, created_at FROM platform_requests WHERE command = ?", (command,)
        ).fetchone()
        if txs:
            await self._settle_chain(command, operation, payload, txs[-1])
        elif waiting:
            if time.time() > waiting[1] + signing.REQUEST_S:
                why = "%s did not sign it within %.0f s: nothing was sent"
                why %= (waiting[0], signing.REQUEST_S)
                self._fail(command, operation, payload, why, unsigned=True)
            raise Pending("command %r waits for %s's signature" % (command, waiting[0]))
        elif operation.instructions(payload) is not None:
            # Its journal rows were lost (planned with a transaction, none journaled now).
            if not self.recovered:
                raise Pending("command %r lost its journal: recover first "
                              "(hub/integrations/platform/recovery.py)" % command)  # fmt: skip
            tx = await self._resign(command, operation, payload, None)  # none landed: sign
            await self._settle_chain(command, operation, payload, tx)
        with self.write() as conn:
            status = conn.execute(
                "SELECT status, result, error FROM platform_commands WHERE id = ?", (command,)
            ).fetchone()
            if status[0] == "done":  # another process finished it first
                return json.loads(status[1])
            if status[0] == "failed":
                raise PlatformError("command %r failed: %s" % (command, status[2]))
            result = operation.apply(conn, command, payload, time.time())
            conn.execute("DELETE FROM platform_holds WHERE command = ?", (command,))
            self._wallets.pop(command, None)
            conn.execute(
                "UPDATE platform_commands SET status = 'done', result = ?, updated_at = ? "
                "WHERE id = ?",
                (json.dumps(result), time.time(), command),
            )
        return result

    async def _settle_chain(self, command, operation, payload, tx):
        # LiteSVM answers at once (3 checks are plenty); a cluster gets ~30 block times
        # before the command is left pending for resume().
        poll_s = getattr(self.backend, "poll_s", 0)
        unreachable = None
        for attempt in range(30 if poll_s else 3):
            if attempt and poll_s:
                await asyncio.sleep(poll_s)
            if tx["status"] == "finalized":
                return
            signature = Signature.from_string(tx["signature"])
            try:
                height = await self.backend.finalized_height()  # before the status (uploader)
                status = (await self.backend.statuses([signature]))[0]
            except BackendError as exc:  # a lost answer proves nothing: ask again
                unreachable = exc
                continue
            if status is not None and status.finalized and status.err is None:
                self._mark(tx["signature"], "finalized", None)
                return
            if status is not None and status.err is not None:
                self._mark(tx["signature"], "failed", status.err)
                self._fail(command, operation, payload, "refused on chain: %s" % status.err)
            if status is None and height > tx["last_valid"]:
                self._mark(tx["signature"], "expired", None)
                try:
                    tx = await self._resign(command, operation, payload, tx["signature"])
                except BackendError as exc:  # no new blockhash: nothing signed yet
                    unreachable = exc
                    continue
            elif status is None:
                try:
                    await self.backend.send(bytes(tx["raw"]))
                except SendError as exc:
                    self._mark(tx["signature"], "sent", str(exc))  # proves nothing
                except BackendError as exc:
                    text = "command %r: the chain is unreachable: %s" % (command, exc)
                    raise Pending(text) from None
        if unreachable is not None:
            raise Pending("command %r: the chain is unreachable: %s" % (command, unreachable))
        raise Pending("command %r is sent and not final yet" % command)

    def _fail(self, command, operation, payload, error, unsigned=False):
        with self.write() as conn:
            if (
                unsigned
                and not conn.execute(
                    "DELETE FROM platform_requests WHERE command = ?", (command,)
                ).rowcount
            ):  # a submit took it first: its transaction is journaled
                raise Pending("command %r was signed meanwhile" % command)
            failed = conn.execute(
                "UPDATE platform_commands SET status = 'failed', error = ?, updated_at = ? "
                "WHERE id = ? AND status = 'pending'",
                (error, time.time(), command),
            ).rowcount
            if failed:  # another process may have got here first: release once
                operation.release(conn, command, payload)
                conn.execute("DELETE FROM platform_holds WHERE command = ?", (command,))
        self._wallets.pop(command, None)
        raise PlatformError("command %r failed: %s" % (command, error))

    async def _resign(self, command, operation, payload, expired):
        signer = payload.get("signer")
        if signer is not None and command not in self._wallets:
            # Its participant's key is not here: the command ends, provably unmoved.
            text = "its transaction expired before it landed (nothing moved): %s signs it "
            self._fail(command, operation, payload, (text + "again, under a new id") % signer)
        blockhash, last_valid = await self.backend.latest_blockhash()
        tx = self._sign(operation, payload, blockhash)
        with self.write() as conn:
            # Another process (the hub, a CLI) may have re-signed it meanwhile: then that
            # one is the live transaction, and signing a second could pay twice.
            latest = conn.execute(
                "SELECT signature, raw, last_valid, status FROM platform_txs WHERE command = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (command,),
            ).fetchone()
            if (latest[0] if latest else None) != expired:
                return dict(zip(("signature", "raw", "last_valid", "status"), latest))
            self._journal(conn, command, tx, last_valid, time.time())
        return {"signature": str(tx.signatures[0]), "raw": bytes(tx), "last_valid": last_valid,
                "status": "sent"}  # fmt: skip

    def _sign(self, operation, payload, blockhash):
        built = operation.instructions(payload)
        if built is None:
            return None
        ixs, signers = built
        message = signing.message(ixs, self.keys.authority.pubkey, blockhash)
        return signing.assemble(message, self._keypairs(payload, signers), {})

    def _keypairs(self, payload, signers):
        """{base58: Keypair}: the platform's own (the fee payer, the operation's `signers`)
        and the participant's wallet if it was given in this process."""
        own = [self.keys.authority, *signers]
        if payload["command"] in self._wallets:
            own.append(self._wallets[payload["command"]])
        return {str(w.pubkey): w.keypair for w in own}

    def _journal(self, conn, command, tx, last_valid, now):
        conn.execute(
            "INSERT INTO platform_txs VALUES (?, ?, ?, ?, 'sent', NULL, ?, ?)",
            (str(tx.signatures[0]), command, bytes(tx), last_valid, now, now),
        )

    def _mark(self, signature, status, error):
        with self.write() as conn:
            conn.execute(
                "UPDATE platform_txs SET status = ?, error = ?, updated_at = ? WHERE signature = ?",
                (status, error, time.time(), signature),
            )

    # --- reads -----------------------------------------------------------------------

    def command(self, command):
        rows = self.rows("SELECT * FROM platform_commands WHERE id = ?", (command,))
        return rows[0] if rows else None
