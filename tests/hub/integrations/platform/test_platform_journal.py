"""The platform's journal (hub/integrations/platform/engine.py) under faults, on LiteSVM with a real
store: a crash between journal and send, a lost answer, a transaction the chain refuses,
an expired blockhash, two processes finishing one command. Each ends with the store and
the chain reconciling exactly, and nothing done twice."""

import pytest
from helpers.platform import BASE, World
from solders.transaction import Transaction

from hub.integrations.platform.chain_ops import transfer_ixs
from hub.integrations.platform.engine import PlatformError, Replayed
from hub.integrations.settlement.transactions import ata
from hub.store import Store


@pytest.fixture
def w(tmp_path):
    world = World(tmp_path)
    yield world
    world.close()


def balance(w, name, mint):
    return w.chain.token_balance(ata(w.key(name), mint)) or 0


def test_a_crash_after_journaling_is_resumed_without_a_double_mint(w):
    p = w.platform
    w.run(p.credit.set_rate("r", 100))
    real_send = w.backend.send

    async def crash(raw):
        raise KeyboardInterrupt  # the process dies: journaled, never sent

    w.backend.send = crash
    with pytest.raises(KeyboardInterrupt):
        w.run(p.credit.purchase("p1", "alice", 300))
    assert p.engine.command("p1")["status"] == "pending"
    assert balance(w, "alice", w.mint) == 0

    async def lost(raw):  # sent, and the answer lost
        await real_send(raw)
        raise KeyboardInterrupt

    w.backend.send = lost
    with pytest.raises(KeyboardInterrupt):
        w.run(p.engine.resume())
    w.backend.send = real_send
    w.run(p.engine.resume())
    assert p.engine.command("p1")["status"] == "done"
    assert balance(w, "alice", w.mint) == 3_000_000  # once
    assert w.run(p.reconcile()) == []


def test_a_transaction_refused_on_chain_fails_the_command_and_releases_it(w):
    """The store believed alice held the credits and the certificate; the chain did not
    (moved behind the ledger): the chain refuses, the command fails with the chain's
    error, nothing is recorded, and the certificate is still alice's to retire later."""
    p, r = w.platform, w.platform.rec
    w.contract(101, BASE, 1.0, 1.0)
    w.run(r.mint("m1"))
    w.run(p.credit.set_rate("r", 100))
    w.run(p.credit.purchase("p1", "owner-101", 100))
    owner, bob = w.signer("owner-101"), w.signer("bob")
    w.chain.airdrop(owner.pubkey, 10**9)
    behind = transfer_ixs(owner.pubkey, owner.pubkey, bob.pubkey, w.mint, 1_000_000, 6)
    behind += transfer_ixs(owner.pubkey, owner.pubkey, bob.pubkey, r.mint_of(2023), 1, 0)
    tx = Transaction.new_signed_with_payer(
        behind, owner.pubkey, [owner.keypair], w.chain.latest_blockhash()[0]
    )
    assert w.chain.send(tx)[1] is None
    for attempt in (p.credit.redeem("d1", "owner-101", 10, wallet=owner),
                    r.retire("x1", "owner-101", [1], "", wallet=owner)):  # fmt: skip
        with pytest.raises(PlatformError, match="refused on chain"):
            w.run(attempt)
    assert p.engine.command("x1")["status"] == "failed"
    assert r.certificates()[0]["status"] == "held"  # not retired: the burn never happened
    with pytest.raises(Replayed, match="already failed"):
        w.run(r.retire("x1", "owner-101", [1], "", wallet=w.signer("owner-101")))
    moves = w.store.db.conn.execute("SELECT count(*) FROM credit_moves WHERE kind = 'redemption'")
    assert moves.fetchone()[0] == 0


def test_a_failed_mint_gives_its_energy_back(w):
    from hub.integrations.platform.rec import MintRec

    r = w.platform.rec
    w.contract(101, BASE, 2.0, 2.0)
    real = MintRec.instructions

    def broken(self, p):  # the mint plus a transfer the token program must refuse
        ixs, signers = real(self, p)
        bob = w.signer("bob")
        return ixs + transfer_ixs(w.keys.authority.pubkey, bob.pubkey, bob.pubkey, w.mint, 1, 6), [
            bob
        ]

    MintRec.instructions = broken
    try:
        with pytest.raises(PlatformError, match="refused on chain"):
            w.run(r.mint("m1"))
    finally:
        MintRec.instructions = real
    count = w.store.db.conn.execute("SELECT count(*) FROM rec_energy").fetchone()[0]
    assert count == 0 and r.certificates() == []  # released: nothing minted, nothing counted
    (done,) = w.run(r.mint("m2"))
    assert done["serials"] == [1, 2]
    assert w.run(w.platform.reconcile()) == []


def test_an_expired_journaled_transaction_is_signed_again_once(w):
    """Journaled, never sent, and the hub was down past its last valid height: resume()
    sees it can never land (not found, height past) and signs it again, once."""
    p = w.platform
    w.run(p.credit.set_rate("r", 100))

    async def crash(raw):
        raise KeyboardInterrupt

    real, w.backend.send = w.backend.send, crash
    with pytest.raises(KeyboardInterrupt):
        w.run(p.credit.purchase("p1", "alice", 300))
    w.backend.send = real
    w.chain.new_block(200)  # past last valid (150 blocks)
    w.run(p.engine.resume())
    txs = p.engine.rows("SELECT status FROM platform_txs WHERE command = 'p1' ORDER BY rowid")
    assert [t["status"] for t in txs] == ["expired", "finalized"]
    assert balance(w, "alice", w.mint) == 3_000_000
    assert w.run(p.reconcile()) == []


def test_two_processes_finish_a_pending_command_once(w, tmp_path):
    """The hub and a CLI (two connections to one store) both resume the same pending
    command: it is applied and minted once."""
    from hub.integrations.platform.layer import Platform

    p = w.platform
    w.run(p.credit.set_rate("r", 100))

    async def crash(raw):
        raise KeyboardInterrupt

    real, w.backend.send = w.backend.send, crash
    with pytest.raises(KeyboardInterrupt):
        w.run(p.credit.purchase("p1", "alice", 300))
    w.backend.send = real
    other_store = Store(tmp_path / "hub.sqlite")
    other = Platform(other_store, w.backend, w.keys, w.mint, {})
    w.run(other.engine.resume())
    w.run(p.engine.resume())
    assert w.run(p.credit.purchase("p2", "alice", 100))["units"] == 1_000_000
    assert balance(w, "alice", w.mint) == 4_000_000
    n = w.store.db.conn.execute("SELECT count(*) FROM credit_moves WHERE command = 'p1'")
    assert n.fetchone()[0] == 1
    assert w.run(other.reconcile()) == [] and w.run(p.reconcile()) == []
    other_store.close()
