"""Faults at every step of settlement: 0 double payments, 0 lost trades.

A fault is injected at the exact step (the uploader's step() hook raises, or kills its
process), the uploader is dropped, and a NEW uploader with a new connection to the same
store file recovers from the journal against the same chain (LiteSVM, the real SPL
programs). Then every owner's balance must equal what the contracts owe to the base
unit, and no (batch, part) may have landed twice (World.assert_settled_exactly_once).
The lost-response, dropped-request and expired-blockhash cases, durable nonces, and
a lost journal (reconciliation from the chain's memos) follow; a real SIGKILL of an
uploader process on the RPC path is in test_settlement_rpc.py."""

import collections

import pytest
from helpers.logs import into
from helpers.settlement import BASE, World, run_until_done, sync

from hub.integrations.settlement import journal, wallets
from hub.integrations.settlement.backends import LiteSVMBackend, SendError


class Crash(Exception):
    pass


def crash_at(name):
    hits = []

    def step(current):
        if current == name and not hits:
            hits.append(current)
            raise Crash(name)

    return step


def attempts_per_part(store):
    rows = store.db.execute("SELECT batch, part, status FROM settlement_txs").fetchall()
    out = collections.defaultdict(list)
    for batch, part, status in rows:
        out[batch, part].append(status)
    return out


def wipe_journal(store):
    """The journal is lost (a store restored from an old backup, say)."""
    with store.transaction() as conn:
        for table in ("settlement_txs", "settlement_parts", "settlement_items", "settlements"):
            conn.execute("DELETE FROM %s" % table)


# Parts on chain when the crash hits, per step: nothing is sent before "sent"; at "sent"
# exactly the first transaction went out; from "marked" on, all of them.
STEPS = {"signed": "none", "journaled": "none", "sent": "one", "marked": "all", "checked": "all"}


@pytest.mark.parametrize("step", list(STEPS))
@sync
async def test_a_crash_at_any_step_pays_each_trade_once(tmp_path, step):
    w = World(tmp_path)
    w.fill(windows=2, devices=10, seed=2)
    first = w.uploader(step=crash_at(step))
    with pytest.raises(Crash):
        await first.cycle()
    landed = w.landed_parts()
    planned = w.store.db.execute("SELECT count(*) FROM settlement_parts").fetchone()[0]
    assert {"none": 0, "one": 1, "all": planned}[STEPS[step]] == len(landed)
    if step in ("journaled", "sent"):  # the journal holds every signed transaction
        assert len(attempts_per_part(w.store)) == planned
    second = w.uploader(store=w.reopen())
    await run_until_done(second)
    w.assert_settled_exactly_once()


class LosesResponses(LiteSVMBackend):
    """The transaction reaches the chain; the answer does not reach the uploader."""

    def __init__(self, chain, lose):
        super().__init__(chain)
        self.lose = lose

    async def send(self, raw):
        await super().send(raw)
        if self.lose:
            self.lose -= 1
            raise SendError("connection reset by peer")


class DropsRequests(LiteSVMBackend):
    """The first sends never reach the chain (and nothing says so)."""

    def __init__(self, chain, drop):
        super().__init__(chain)
        self.drop = drop

    async def send(self, raw):
        if self.drop:
            self.drop -= 1
            return
        await super().send(raw)


@sync
async def test_a_lost_response_is_looked_up_not_sent_again(tmp_path):
    w = World(tmp_path)
    w.fill(windows=2, devices=10, seed=4)
    up = w.uploader(backend=LosesResponses(w.chain, lose=100))
    await run_until_done(up)
    w.assert_settled_exactly_once()
    assert all(v == ["finalized"] for v in attempts_per_part(w.store).values())


@sync
async def test_a_dropped_send_is_sent_again_as_the_same_bytes(tmp_path):
    w = World(tmp_path)
    w.fill(windows=1, devices=10, seed=5)
    up = w.uploader(backend=DropsRequests(w.chain, drop=3), resend_s=0)
    await up.cycle()
    assert w.store.db.execute(
        "SELECT count(*) FROM settlement_txs WHERE status = 'sent'"
    ).fetchone() == (3,)
    await run_until_done(up)
    w.assert_settled_exactly_once()
    # One signed transaction per part, ever: the re-send was the journaled bytes.
    assert all(v == ["finalized"] for v in attempts_per_part(w.store).values())


class DelaysRequests(LiteSVMBackend):
    """Each transaction's first send is held back (a slow gossip path) until release()."""

    def __init__(self, chain):
        super().__init__(chain)
        self.held, self.seen = [], set()

    async def send(self, raw):
        if raw not in self.seen:
            self.seen.add(raw)
            self.held.append(raw)
            return
        await super().send(raw)

    def release(self):
        for raw in self.held:
            self.chain.send(raw)
        self.held = []


@sync
async def test_not_found_yet_is_not_proof_it_will_not_land(tmp_path):
    """A transaction not seen yet may still land: it is re-sent as the same bytes, never
    replaced while its blockhash is valid, so the late copy lands once or not at all."""
    w = World(tmp_path)
    w.fill(windows=1, devices=10, seed=14)
    backend = DelaysRequests(w.chain)
    up = w.uploader(backend=backend, resend_s=0)
    await up.cycle()
    assert not w.landed_parts() and backend.held
    await up.cycle()  # "not found" now: the same bytes again
    backend.release()  # the first copies arrive late
    await run_until_done(up)
    w.assert_settled_exactly_once()


@sync
async def test_an_expired_blockhash_is_rebuilt_only_when_not_found(tmp_path):
    w = World(tmp_path, valid_blocks=20)
    w.fill(windows=1, devices=10, seed=6)
    # Crash before sending, then the blockhash expires: the new uploader signs again.
    with pytest.raises(Crash):
        await w.uploader(step=crash_at("journaled")).cycle()
    w.chain.new_block(21)
    second = w.uploader(store=w.reopen())
    await run_until_done(second)
    w.assert_settled_exactly_once()
    assert all(v == ["expired", "finalized"] for v in attempts_per_part(w.store).values())


@sync
async def test_expired_after_landing_with_a_lost_response_is_not_paid_again(tmp_path):
    w = World(tmp_path, valid_blocks=20)
    w.fill(windows=1, devices=10, seed=7)
    up = w.uploader(backend=LosesResponses(w.chain, lose=100))
    with pytest.raises(Crash):  # landed, answer lost, then the process died
        up.step = crash_at("checked")
        await up.cycle()
    w.chain.new_block(100)  # long expired by the time anyone looks
    await run_until_done(w.uploader(store=w.reopen()))
    w.assert_settled_exactly_once()
    assert all(v == ["finalized"] for v in attempts_per_part(w.store).values())


@sync
async def test_dropped_then_expired_in_one_process_is_rebuilt_once(tmp_path):
    w = World(tmp_path, valid_blocks=20)
    w.fill(windows=1, devices=8, seed=8)
    up = w.uploader(backend=DropsRequests(w.chain, drop=10**6), resend_s=0)
    await up.cycle()
    await up.cycle()  # re-sent (and dropped again)
    assert not w.landed_parts()
    up.backend.drop = 0
    w.chain.new_block(21)
    await run_until_done(up)
    w.assert_settled_exactly_once()
    assert all(v == ["expired", "finalized"] for v in attempts_per_part(w.store).values())


def nonces_for(w):
    return {str(p.pubkey): wallets.read_or_create(w.folder / ("nonce-%d.json" % k), True)
            for k, p in w.payers.items()}  # fmt: skip


@sync
async def test_a_durable_nonce_transaction_outlives_any_outage(tmp_path):
    w = World(tmp_path, valid_blocks=20)
    w.fill(windows=1, devices=6, seed=9)
    nonces = nonces_for(w)
    with pytest.raises(Crash):
        await w.uploader(nonces=nonces, step=crash_at("journaled")).cycle()
    (journaled,) = [r[0] for r in w.store.db.execute("SELECT signature FROM settlement_txs")
                    ][:1] or [None]  # fmt: skip
    first = w.store.db.execute("SELECT signature, nonce FROM settlement_txs").fetchall()
    assert first and all(n for _s, n in first)  # signed on nonces, no block height
    w.chain.new_block(5000)  # an outage far past any blockhash's life
    second = w.uploader(store=w.reopen(), nonces=nonces)
    await run_until_done(second, rounds=60)
    w.assert_settled_exactly_once()
    landed = {r[0] for r in w.store.db.execute("SELECT signature FROM settlement_parts")}
    assert {s for s, _n in first} <= landed  # the same bytes landed, not rebuilt ones
    assert journaled in landed


@sync
async def test_a_lost_journal_with_a_nonce_transaction_in_flight(tmp_path):
    """Start-up advances idle nonces: a transaction signed on the old nonce, whose
    journal is lost, can never land afterwards."""
    w = World(tmp_path)
    w.fill(windows=1, devices=6, seed=10)
    nonces = nonces_for(w)
    with pytest.raises(Crash):
        await w.uploader(nonces=nonces, step=crash_at("journaled")).cycle()
    strays = [bytes(r[0]) for r in w.store.db.execute("SELECT raw FROM settlement_txs")]
    wipe_journal(w.store)
    second = w.uploader(store=w.reopen(), nonces=nonces)
    await second.start()
    for raw in strays:
        _sig, err, landed = w.chain.send(raw)
        assert err == "BlockhashNotFound" and not landed
    await run_until_done(second, rounds=60)
    w.assert_settled_exactly_once()


@sync
async def test_a_lost_journal_is_rebuilt_from_the_memos_without_paying_again(tmp_path):
    w = World(tmp_path)
    w.fill(windows=2, devices=10, seed=11)
    await run_until_done(w.uploader())
    paid = w.balances()
    before = sum(w.landed_parts().values())
    wipe_journal(w.store)
    up = w.uploader(store=w.reopen())
    await run_until_done(up)
    assert w.balances() == paid and sum(w.landed_parts().values()) == before
    w.assert_settled_exactly_once()
    assert {v[0] for v in attempts_per_part(w.store).values()} == {"finalized"}
    assert w.store.db.execute("SELECT count(*) FROM settlement_txs WHERE raw IS NOT NULL"
                              ).fetchone() == (0,)  # fmt: skip


@sync
async def test_a_lost_journal_mid_batch_pays_only_the_missing_parts(tmp_path):
    w = World(tmp_path)
    w.fill(windows=1, devices=20, seed=12)
    with pytest.raises(Crash):  # the first part went out, then the process died...
        await w.uploader(step=crash_at("sent")).cycle()
    assert len(w.landed_parts()) == 1
    # Signed and in flight somewhere (an RPC node's retry queue), but in no journal:
    strays = [bytes(r[0]) for r in w.store.db.execute(
        "SELECT raw FROM settlement_txs WHERE status = 'signed'")]  # fmt: skip
    assert strays
    wipe_journal(w.store)  # ...and its journal was lost with it
    up = w.uploader(store=w.reopen())
    await up.start()  # waits them out: none of them can land any more
    for raw in strays:
        _sig, err, landed = w.chain.send(raw)
        assert not landed and err in ("BlockhashNotFound", "AlreadyProcessed")  # the 1st
    await run_until_done(up)
    w.assert_settled_exactly_once()


@sync
async def test_a_batch_on_chain_that_the_store_disagrees_with_is_never_paid_again(tmp_path):
    w = World(tmp_path)
    w.fill(windows=2, devices=6, seed=13)
    await run_until_done(w.uploader())
    paid = w.balances()
    wipe_journal(w.store)
    # The restored store says something else about one contract of the first window.
    with w.store.transaction() as conn:
        conn.execute("UPDATE contracts SET price = price + 1 WHERE start = ? AND id = "
                     "(SELECT min(id) FROM contracts WHERE start = ?)", (BASE, BASE))  # fmt: skip
    w.events.clear()
    await run_until_done(w.uploader(store=w.reopen()))
    assert w.balances() == paid
    statuses = {r["id"]: r["status"] for r in journal.batches(w.store)}
    assert statuses == {"hub.%d.0" % BASE: "conflict", "hub.%d.0" % (BASE + 300): "finalized"}
    (event,) = [e for e in w.events if e["status"] == "conflict"]
    assert "not paid again" in event["error"]


@sync
async def test_a_transaction_that_fails_on_chain_moved_nothing_and_is_signed_again(tmp_path):
    """An aggregator short of credits: its parts fail on chain (atomic: nothing paid),
    the batch says why, and once it is funded again they are paid, once."""
    from solders.transaction import Transaction

    from hub.integrations.settlement.transactions import ata, transfer_ix

    w = World(tmp_path)
    w.fill(windows=1, devices=9, seed=15)
    poor, other = w.payers[1], w.payers[2]
    everything = w.chain.token_balance(ata(poor.pubkey, w.mint))

    def move(src, dst, amount):
        blockhash, _last = w.chain.latest_blockhash()
        ix = transfer_ix(src.pubkey, dst.pubkey, w.mint, amount, 6)
        tx = Transaction.new_signed_with_payer([ix], src.pubkey, [src.keypair], blockhash)
        assert w.chain.send(tx)[1] is None

    move(poor, other, everything)
    lines = []
    up = w.uploader(retry_failed_s=3600)
    into(lines)
    await up.cycle()
    (row,) = journal.batches(w.store)
    assert row["status"] == "failed" and "failed on chain" in row["error"]
    failed = {b: v for b, v in attempts_per_part(w.store).items() if v == ["failed"]}
    assert failed and any("failed on chain" in line for line in lines)
    paid_before = w.balances()
    await up.cycle()  # not before retry_failed_s: no new transaction
    assert attempts_per_part(w.store).keys() and all(
        v == ["failed"] for k, v in attempts_per_part(w.store).items() if k in failed
    )
    move(other, poor, everything)
    up.retry_failed_s = 0
    await up.cycle()  # the same blockhash would sign the very same (failed) bytes: wait
    assert all(attempts_per_part(w.store)[k] == ["failed"] for k in failed)
    w.chain.new_block()
    await run_until_done(up)
    w.assert_settled_exactly_once()
    assert all(attempts_per_part(w.store)[k] == ["failed", "finalized"] for k in failed)
    assert journal.batches(w.store)[0]["error"] is None
    assert sum(paid_before.values()) < sum(w.balances().values())
