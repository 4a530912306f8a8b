"""The uploader: final contracts -> batches -> journaled, signed transactions -> on chain.

One round (cycle()):

1. plan     every window that has ended with all of its contracts final becomes
            batches (hub/integrations/settlement/records.py), recorded with their parts in one
            transaction; a contract is in one batch, ever (journal.py).
2. check    for every unpaid part's latest transaction: read the finalized block
            height (and nonces) FIRST, then the signature statuses.
              found, no error, finalized   -> the part is paid
              found with an error          -> failed on chain: atomic, nothing moved
              not found, height > last valid block height (or its nonce moved on)
                                           -> it can never land: expired
              not found, still valid       -> re-send the very same bytes
3. push     a part with no live transaction (none yet, or the last failed or expired)
            gets a new one: signed, JOURNALED (bytes, signature, last valid height),
            and only then sent. Re-sends go out here too.
4. check    again, so an in-process chain settles in one round.

Why this gives no double payment and no lost trade: a part has at most one transaction
that may still land, because a new one is signed only when the previous one is provably
dead: failed on chain (a failed transaction moves nothing), or not found once the
finalized height has passed its last valid height (every block that could hold it is
final; height read before the status, so one landing in between is seen). Every signed
transaction is in the journal before anything can broadcast it, so a crash at any step
leaves bytes to re-send or a signature to look up; a lost response is just "not known
yet". And a part stays open until a transaction of it is finalized.

Before its first round the uploader makes harmless what was signed before it started
but may be missing from the journal, and reads the chain's memos (recovery.py).

step(name) is called at each step of the journal protocol ("signed", "journaled",
"sent", "marked", "checked"); tests make it raise, or kill the process, to prove the
recovery.
"""

import asyncio
import json
import logging
import time

from solders.pubkey import Pubkey
from solders.signature import Signature

from hub.integrations.settlement import CLEARING, journal, records, recovery, schema
from hub.integrations.settlement.backends import SendError
from hub.integrations.settlement.transactions import ata, nonce_value, part_tx

log = logging.getLogger(__name__)

PERIOD_S = 2.0


class Uploader:
    def __init__(
        self, store, backend, payers, owners, mint, *, name, decimals=6,
        cents_per_credit=100, batch_s=900, max_batch=1000, nonces=None,
        reconcile_s=30 * 86400, resend_s=PERIOD_S, retry_failed_s=60.0,
        emit=None, step=None, clock=time.time,
    ):  # fmt: skip
        if not records.parse_memo("gridbid:%s.0.0:%s:1/1" % (name, "0" * 64)):
            raise ValueError("hub name %r cannot be in a memo (letters, digits, _ . -)" % name)
        self.store, self.backend, self.owners, self.mint = store, backend, owners, mint
        schema.migrate(store.db)  # the settlement's own tables (schema.py)
        self.payers = payers  # {buyer key_id: Wallet}, or {CLEARING: the clearing house's}
        self.by_pubkey = {str(w.pubkey): w for w in payers.values()}
        self.name, self.decimals = name, decimals
        self.per_cent = records.units_per_cent(decimals, cents_per_credit)
        self.batch_s, self.max_batch = batch_s, max_batch
        self.nonces = nonces  # {payer pubkey text: nonce account Wallet} or None
        self.reconcile_s, self.resend_s, self.retry_failed_s = reconcile_s, resend_s, retry_failed_s
        self.emit, self.clock = emit or (lambda **_: None), clock
        self.step = step or (lambda _name: None)
        self.ready = False
        self.landed = {}  # reconciliation: batch id -> {"digests": {(hash, parts)}, "sigs"}
        self.floor = None  # no unsettled contract starts before this
        self.blocked = {}  # window -> why it cannot be paid (logged once)
        self._sent_at = {}  # signature text -> monotonic time of its last send

    # --- start-up ------------------------------------------------------------------

    async def start(self):
        """Start-up: wait out what may be in flight, then reconcile (recovery.py)."""
        await recovery.start(self)
        self.ready = True

    async def reconcile(self):
        return await recovery.reconcile(self)

    # --- one round -----------------------------------------------------------------

    async def cycle(self):
        """plan, check, push, check. -> {"planned": n, "sent": n, "open": parts left}"""
        if not self.ready:
            await self.start()
        planned = self.plan()
        await self.check()
        sent = await self.push()
        await self.check()
        return {"planned": planned, "sent": sent, "open": journal.open_count(self.store)}

    def plan(self):
        """Record a batch for every ready window. -> how many batches were recorded."""
        now = self.clock()
        closed = records.window_of(int(now), self.batch_s)  # windows before it have ended
        if self.floor is None:
            self.floor = journal.min_unsettled_start(self.store)
            if self.floor is None:
                self.floor = closed
        windows = {}
        for row in journal.unsettled(self.store, self.floor, closed):
            windows.setdefault(records.window_of(row["start"], self.batch_s), []).append(row)
        made, waiting = 0, [closed]
        for window, rows in sorted(windows.items()):
            if any(r["state"] not in records.FINAL_STATES for r in rows) or not self._route(
                window, rows
            ):
                waiting.append(window)
                continue
            made += self._record(window, rows, now)
        self.floor = min(waiting)
        return made

    def _route(self, window, rows):
        missing = sorted({"aggregator %d has no wallet" % r["buyer"] for r in rows
                          if self.payer(r["buyer"]) is None}
                         | {"battery %d has no owner key" % r["device"] for r in rows
                            if self.owners.get(r["device"]) is None})  # fmt: skip
        if missing:
            if self.blocked.get(window) != missing:
                self.blocked[window] = missing
                batch_id = records.batch_id(self.name, window, 0)
                log.warning("settlement: window %s waits: %s" % (batch_id, "; ".join(missing)))
                self.emit(batch=batch_id, status="blocked", signature=None, trades=[],
                          error="; ".join(missing))  # fmt: skip
            return False
        self.blocked.pop(window, None)
        return True

    def _record(self, window, rows, now):
        done = journal.window_chunks(self.store, window)
        first = max(done) + 1 if done else 0
        if done:  # a window is batched whole; this is a contract that came after it
            log.info("settlement: window %d gets late contracts %s"
                     % (window, [r["id"] for r in rows]))  # fmt: skip
        made = 0
        for k, chunk in enumerate(records.chunks(rows, self.max_batch), first):
            recs = [
                records.record(r, self.payer(r["buyer"]).pubkey, self.owners.get(r["device"]),
                               self.per_cent)
                for r in chunk
            ]  # fmt: skip
            batch = records.make_batch(self.name, window, k, recs)
            status, landed, error = self._match(batch)
            if not batch.parts and status == "planned":
                status = "finalized"  # nothing delivered, nothing to pay
            journal.record_batch(self.store, batch, status, landed, error, at=now)
            self.publish([journal.batch(self.store, batch.id)])
            if landed:
                self.publish(journal.refresh(self.store, [batch.id]))
            made += 1
        return made

    def payer(self, buyer):
        """The Wallet that pays for `buyer`'s contracts: its own, or the clearing house's
        (payers[CLEARING], margin.py), which pays for every buyer. None: nobody does."""
        return self.payers.get(buyer) or self.payers.get(CLEARING)

    def _match(self, batch):
        """(status, {part: signature} already on chain, error) from the chain's memos."""
        entry = self.landed.get(batch.id)
        if entry is None:
            return "planned", {}, None
        if entry["digests"] != {(batch.digest, len(batch.parts))}:
            error = (
                "the chain holds %s with hash/parts %s, the store's records give %s/%d: "
                "not paid again; an operator must compare them"
                % (batch.id, sorted(entry["digests"]), batch.digest, len(batch.parts))
            )
            log.warning("settlement: CONFLICT " + error)
            return "conflict", {}, error
        return "planned", dict(entry["sigs"]), None

    async def check(self):
        """Step 2 of the module doc."""
        parts = journal.open_parts(self.store)
        live = [p for p in parts if p["a_status"] in journal.ATTEMPT_OPEN]
        if live:
            height = await self.backend.finalized_height()  # before the statuses: see above
            nonces = await self._nonce_values(live)
            statuses = await self.backend.statuses(
                [Signature.from_string(p["a_signature"]) for p in live]
            )
            updates, self._resend = [], []
            for p, status in zip(live, statuses):
                update = self._judge(p, status, height, nonces)
                if update is None:
                    self._resend.append(p)
                elif update[1] != p["a_status"]:
                    updates.append(update)
            self.step("checked")
            for signature, status, error in updates:
                if status == "failed":
                    log.warning("settlement: transaction %s… failed on chain (nothing moved; "
                             "signed again in %.0f s): %s"
                             % (signature[:12], self.retry_failed_s, error))  # fmt: skip
            if updates:
                journal.update_attempts(self.store, updates)
                self.publish(journal.refresh(self.store, {p["batch"] for p in live}))
        else:
            self._resend = []

    def _judge(self, p, status, height, nonces):
        """-> (signature, new status, error) or None: not found and still valid."""
        signature = p["a_signature"]
        if status is not None:
            if status.err is not None:
                return signature, "failed", status.err
            return signature, "finalized" if status.finalized else "confirmed", None
        if p["a_nonce"]:
            account, value = p["a_nonce"].split()
            dead = nonces.get(account) != value
        else:
            dead = height > p["a_last_valid"]
        return (signature, "expired", None) if dead else None

    async def _nonce_values(self, parts):
        out = {}
        for account in {p["a_nonce"].split()[0] for p in parts if p["a_nonce"]}:
            value = nonce_value(await self.backend.account_data(Pubkey.from_string(account)))
            out[account] = None if value is None else str(value)
        return out

    async def push(self):
        """Step 3: new transactions where none may land, then every send. -> sent."""
        now, mono = self.clock(), time.monotonic()
        todo, busy = [], set()
        for p in journal.open_parts(self.store):
            status = p["a_status"]
            if status in journal.ATTEMPT_OPEN:
                busy.add(p["payer"])
            elif (
                status is None
                or status == "expired"
                or (status == "failed" and now - p["a_updated_at"] >= self.retry_failed_s)
            ):
                todo.append(p)
        attempts = await self._sign(todo, busy) if todo else []
        self.step("signed")
        if attempts:
            journal.add_attempts(self.store, [a[:6] for a in attempts])
        self.step("journaled")
        out = [(a[0], a[3]) for a in attempts]
        out += [(p["a_signature"], p["a_raw"]) for p in self._resend
                if p["a_raw"] is not None
                and mono - self._sent_at.get(p["a_signature"], -1e9) >= self.resend_s]  # fmt: skip
        # Everything is journaled: sends may overlap (a remote RPC node's round trip is
        # 50-300 ms); a crash stops the ones not yet started, as a dead process would.
        gate, crashed = asyncio.Semaphore(getattr(self.backend, "concurrency", 1)), []

        async def send(signature, raw):
            async with gate:
                if crashed:
                    return
                try:
                    try:
                        await self.backend.send(raw)
                    except SendError as exc:
                        log.warning("settlement: %s… not accepted now: %s" % (signature[:12], exc))
                    self._sent_at[signature] = mono
                    self.step("sent")
                except BaseException:  # a crash here: start no more sends, as a dead process
                    crashed.append(signature)
                    raise

        tasks = [asyncio.ensure_future(send(sig, raw)) for sig, raw in out]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        if attempts:
            journal.update_attempts(self.store, [(a[0], "sent", None) for a in attempts])
            self.publish(journal.refresh(self.store, {a[1] for a in attempts}))
        self.step("marked")
        self._resend = []
        return len(out)

    async def _sign(self, todo, busy):
        """(signature, batch, part, raw, last valid, nonce) for each part to (re)build."""
        attempts = []
        blockhash, last_valid = (
            (None, None) if self.nonces else await self.backend.latest_blockhash()
        )
        for p in todo:
            wallet = self.by_pubkey.get(p["payer"])
            if wallet is None:
                log.warning("settlement: no wallet for payer %s of %s" % (p["payer"], p["batch"]))
                continue
            nonce_account, nonce = None, None
            if self.nonces:
                if p["payer"] in busy:
                    continue  # one transaction per nonce at a time
                nonce_account = self.nonces[p["payer"]].pubkey
                value = nonce_value(await self.backend.account_data(nonce_account))
                if value is None:
                    continue
                blockhash, nonce = value, "%s %s" % (nonce_account, value)
                busy.add(p["payer"])
            payments = [(_pubkey(o), a) for o, a in json.loads(p["payments"])]
            memo = "%s%s:%s:%d/%d" % (records.MEMO_PREFIX, p["batch"], p["hash"], p["part"],
                                      p["parts"])  # fmt: skip
            tx = part_tx(wallet, self.mint, self.decimals, payments, memo, blockhash,
                         nonce_account)  # fmt: skip
            if journal.has_attempt(self.store, str(tx.signatures[0])):
                continue  # a failed one again, on the same blockhash: wait for a new one
            attempts.append((str(tx.signatures[0]), p["batch"], p["part"], bytes(tx),
                             None if nonce else last_valid, nonce))  # fmt: skip
        return attempts

    def publish(self, rows):
        for row in rows:
            if row is None:
                continue
            sigs = [s for s in row["signatures"] if s]
            self.emit(batch=row["id"], status=row["status"], signature=sigs[0] if sigs else None,
                      signatures=sigs, trades=row["trade_ids"], amount=row["amount"],
                      parts=row["parts"], error=row["error"])  # fmt: skip

    # --- balances (the demo, the status page) ---------------------------------------

    async def balance(self, owner):
        """The token balance of `owner` (a Pubkey) in base units (0: no account yet)."""
        return await self.backend.token_balance(ata(owner, self.mint)) or 0


_PUBKEYS = {}  # owners' keys as text -> Pubkey: parsing them was a visible cost per part


def _pubkey(text):
    key = _PUBKEYS.get(text)
    if key is None:
        key = _PUBKEYS[text] = Pubkey.from_string(text)
    return key
