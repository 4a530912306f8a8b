"""The platform (hub/integrations/platform/) over the RPC backend
(hub/integrations/settlement/rpc_backend.py,
solana-py's AsyncClient) against the loopback JSON-RPC front end over LiteSVM
(tests/helpers/solana_rpc_front.py): credit, certificates and governance applied exactly once
through lost responses and lost requests, and reconciling exactly with the chain."""

import asyncio

import pytest
from helpers.platform import BASE, World
from helpers.solana_rpc_front import RpcFront

from hub.integrations.platform.engine import PlatformError, Replayed
from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.rpc_backend import RpcBackend
from hub.integrations.settlement.transactions import ata


def rpc_world(tmp_path):
    # 2 ms blocks, valid 300 blocks (0.6 s): expiry is real, every wait is short.
    return World(tmp_path, chain=Chain(valid_blocks=300, block_s=0.002))


def balance(w, name, mint):
    return w.chain.token_balance(ata(w.key(name), mint)) or 0


def sends(w, command):
    rows = w.store.db.conn.execute(
        "SELECT status FROM platform_txs WHERE command = ? ORDER BY rowid", (command,)
    )
    return [r[0] for r in rows]


def test_every_command_over_json_rpc_with_lost_answers_and_requests(tmp_path):
    w = rpc_world(tmp_path)
    for i in range(3):
        w.contract(101, BASE + 60 * i, 1.0, 1.0)

    async def main():
        front = await RpcFront(w.chain).start()
        backend = RpcBackend(front.url, poll_s=0.01)
        p = w.platform_over(backend)
        c, r, g = p.credit, p.rec, p.gov
        try:
            await c.set_rate("r", 100)
            front.fault("sendTransaction", "lost_response")  # landed, the answer lost
            await c.purchase("p1", "carol", 100)
            front.fault("sendTransaction", "lost_request")  # never reached the node
            await c.purchase("p2", "alice", 300)
            front.fault("sendTransaction", "lost_response")
            await c.redeem("d1", "alice", 500_000, wallet=w.signer("alice"))
            front.fault("getSignatureStatuses", "lost_response")  # the status answer lost
            await r.mint("m1")
            front.fault("sendTransaction", "lost_request")
            await r.list("l1", "owner-101", [1, 2], 400_000, wallet=w.signer("owner-101"))
            front.fault("sendTransaction", "lost_response")
            await r.buy("b1", "carol", [1], wallet=w.signer("carol"))
            front.fault("sendTransaction", "lost_request")
            await r.retire("x1", "carol", [1], "scope 2", wallet=w.signer("carol"))
            await g.genesis()
            await g.grant("g1", "alice", 500)
            front.fault("sendTransaction", "lost_response")
            await g.stake("s1", "alice", 400, 3600, wallet=w.signer("alice"))
            await g.propose("q1", "alice", "p_con", 5.0, 600, 900, wallet=w.signer("alice"))
            front.fault("sendTransaction", "lost_request")
            await g.vote("v1", "alice", "q1", True, wallet=w.signer("alice"))
            assert not front.faults  # every fault was hit
            alice = w.signer("alice")
            for replay in (lambda: c.purchase("p1", "carol", 100),  # refused over RPC too
                           lambda: r.buy("b1", "carol", [1], wallet=w.signer("carol")),
                           lambda: g.vote("v1", "alice", "q1", True, wallet=alice)):  # fmt: skip
                with pytest.raises(Replayed, match="already applied"):
                    await replay()
            assert await p.reconcile() == []
            return front.calls
        finally:
            await backend.close()
            await front.close()

    try:
        calls = asyncio.run(main())
        # Each command's one transaction, applied once: nothing was signed twice.
        for cmd in ("p1", "p2", "d1", "l1", "b1", "x1", "s1", "v1"):
            assert sends(w, cmd) == ["finalized"], cmd
        assert calls["sendTransaction"] >= 10
        assert balance(w, "carol", w.mint) == 1_000_000 - 400_000
        assert balance(w, "alice", w.mint) == 3_000_000 - 500_000
        assert balance(w, "owner-101", w.mint) == 400_000
        assert balance(w, "carol", w.platform.rec.mint_of(2023)) == 0  # retired (burned)
        assert balance(w, "alice", w.platform.gov.mint) == 100
        votes = w.store.db.conn.execute("SELECT weight FROM gov_votes").fetchall()
        assert votes == [(400,)]
        moves = w.store.db.conn.execute("SELECT count(*) FROM credit_moves").fetchone()[0]
        assert moves == 3 + 2  # p1, p2, d1 and the buy's two legs
        assert w.run(w.platform.reconcile()) == []  # and again over LiteSVM directly
    finally:
        w.close()


# --- a lost store or journal: the chain's memos (hub/integrations/platform/recovery.py)


async def _front(w):
    front = await RpcFront(w.chain).start()
    return front, RpcBackend(front.url, poll_s=0.01)


def test_a_fresh_store_refuses_commands_that_landed(tmp_path):
    """Everything ran, then the store was lost: a fresh store over the same chain reads
    the authority's memos at its start, and the same command ids are refused (nothing
    paid, minted, burned or voted twice); reconcile names what it could not rebuild."""
    from hub.store import Store

    w = rpc_world(tmp_path)
    w.contract(101, BASE, 1.0, 1.0)
    reason = "scope 2: 2023; audit"  # ':' and '; ' inside a memo

    async def main():
        front, backend = await _front(w)
        p = w.platform_over(backend)
        try:
            await p.credit.set_rate("r", 100)
            await p.credit.purchase("p1", "alice", 300)
            await p.rec.mint("m1")
            await p.rec.retire("x:1", "owner-101", [1], reason, wallet=w.signer("owner-101"))
            await p.gov.genesis()
            await p.gov.grant("g1", "alice", 50)
            await p.gov.stake("s1", "alice", 40, 3600, wallet=w.signer("alice"))
            fresh = Store(tmp_path / "fresh.sqlite", synchronous="NORMAL")
            q = w.platform_over(backend, fresh)
            sent = front.calls["sendTransaction"]
            found = await q.recover()
            assert {"p1", "x:1", "s1", "g1", "nrg-genesis"} <= set(found["unknown"])
            assert "m1.2023.0" in found["unknown"] and not found["adopted"]
            await q.credit.set_rate("r", 100)  # no chain part: a rate is the store's own
            owner, alice = w.signer("owner-101"), w.signer("alice")
            for again in (lambda: q.credit.purchase("p1", "alice", 300),
                          lambda: q.rec.retire("x:1", "owner-101", [1], reason, wallet=owner),
                          lambda: q.gov.stake("s1", "alice", 40, 3600, wallet=alice)):  # fmt: skip
                with pytest.raises(PlatformError, match="already landed on chain"):
                    await again()
            assert front.calls["sendTransaction"] == sent  # nothing sent again
            await q.credit.purchase("p2", "bob", 100)  # a new id runs
            diffs = await q.reconcile()
            fresh.close()
            return diffs
        finally:
            await backend.close()
            await front.close()

    try:
        diffs = asyncio.run(main())
        assert balance(w, "alice", w.mint) == 3_000_000  # once
        assert balance(w, "bob", w.mint) == 1_000_000
        assert balance(w, "alice", w.platform.gov.mint) == 10
        text = "\n".join(diffs)
        assert "credit supply: store 1000000, chain 4000000" in text  # p1: not rebuilt
        assert "command 'p1': its effects are not rebuilt" in text
        assert "command 'x:1'" in text and reason in text
    finally:
        w.close()


@pytest.mark.parametrize("landed", [True, False])
def test_a_pending_command_whose_journal_was_lost(tmp_path, landed):
    """Planned and signed, then the process died (its transaction sent or not) and the
    journal rows were lost. A restart does not apply it blind; recovery journals the
    landed transaction again (applied from the stored payload) or, once the hold shows
    none can land, signs it again: credited exactly once either way."""
    w = rpc_world(tmp_path)

    async def main():
        front, backend = await _front(w)
        p = w.platform_over(backend)
        real = backend.send

        async def dies(raw):
            if landed:
                await real(raw)
            raise KeyboardInterrupt

        try:
            await p.credit.set_rate("r", 100)
            backend.send = dies
            with pytest.raises(KeyboardInterrupt):
                await p.credit.purchase("p1", "alice", 300)
            backend.send = real
            with p.engine.write() as conn:
                conn.execute("DELETE FROM platform_txs WHERE command = 'p1'")
            q = w.platform_over(backend)  # the restart
            await q.credit.purchase("p2", "bob", 100)  # resume() leaves p1 pending
            assert q.engine.command("p1")["status"] == "pending"
            assert balance(w, "alice", w.mint) == (3_000_000 if landed else 0)
            found = await q.recover()
            assert found["adopted"] == (["p1"] if landed else [])
            assert q.engine.command("p1")["status"] == "done"
            with pytest.raises(Replayed, match="already applied"):
                await q.credit.purchase("p1", "alice", 300)
            return await q.reconcile()
        finally:
            await backend.close()
            await front.close()

    try:
        assert asyncio.run(main()) == []
        assert balance(w, "alice", w.mint) == 3_000_000
        assert len(sends(w, "p1")) == 1  # adopted, or the one new transaction
    finally:
        w.close()


def test_memo_parsing_of_a_node_s_rendering():
    from hub.integrations.platform.recovery import candidates, memos

    text = "gridbid-rec:retire:a:b:2023:1,2:why: this; that"
    rendered = "[%d] %s; [5] hello" % (len(text.encode()), text)
    assert memos(rendered) == [text, "hello"]
    assert candidates(text) == ["a", "a:b", "a:b:2023"]  # every split: all refused
    assert candidates("gridbid-credit:purchase:p:1:alice:300") == ["p:1"]
    assert candidates("gridbid-reward:r-7:1700000000") == ["r-7"]
    assert candidates("hub.42:abc:1:2") == [] and candidates("gridbid-gov:stake:") == []
