"""The RPC backend (solana-py's AsyncClient) against a loopback JSON-RPC front end over
LiteSVM (tests/helpers/solana_rpc_front.py): settling, lost responses and requests, a lost
journal reconciled from getSignaturesForAddress' memos, durable nonces, and an uploader
process killed (SIGKILL) mid-protocol whose journal a new one recovers from."""

import asyncio
import collections
import os
import signal
import sys
from pathlib import Path

import pytest
from helpers.settlement import AGGREGATORS, BATCH_S, World, run_until_done, sync
from helpers.solana_rpc_front import RpcFront

from hub.integrations.settlement import rpc_backend
from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.rpc_backend import RpcBackend

ROOT = Path(__file__).resolve().parents[4]


def rpc_world(tmp_path):
    # 2 ms blocks, valid 300 blocks (0.6 s): expiry is real but every start's wait is short.
    return World(tmp_path, chain=Chain(valid_blocks=300, block_s=0.002))


def attempts_per_part(store):
    out = collections.defaultdict(list)
    for batch, part, status in store.db.execute("SELECT batch, part, status FROM settlement_txs"):
        out[batch, part].append(status)
    return out


@sync
async def test_settles_over_json_rpc_exactly(tmp_path):
    w = rpc_world(tmp_path)
    w.fill(windows=2, devices=12, seed=21)
    front = await RpcFront(w.chain).start()
    backend = RpcBackend(front.url, poll_s=0.01)
    try:
        await run_until_done(w.uploader(backend=backend))
        parts = w.store.db.execute("SELECT count(*) FROM settlement_parts").fetchone()[0]
        assert front.calls["sendTransaction"] == parts
        from hub.integrations.settlement.transactions import ata

        owner = w.owners.known[101]
        assert await backend.token_balance(ata(owner, w.mint)) == w.expected[101]
    finally:
        await backend.close()
        await front.close()
    w.assert_settled_exactly_once()


@sync
async def test_lost_responses_and_requests_over_json_rpc(tmp_path):
    w = rpc_world(tmp_path)
    w.fill(windows=1, devices=12, seed=22)
    front = await RpcFront(w.chain).start()
    for kind in ("lost_response", "lost_request", "lost_response", "lost_request"):
        front.fault("sendTransaction", kind)
    backend = RpcBackend(front.url, poll_s=0.01)
    try:
        await run_until_done(w.uploader(backend=backend, resend_s=0))
    finally:
        await backend.close()
        await front.close()
    w.assert_settled_exactly_once()
    assert not front.faults  # every fault was hit
    # Nothing was rebuilt: lost answers were looked up, lost requests re-sent as they were.
    assert all(v == ["finalized"] for v in attempts_per_part(w.store).values())


@sync
async def test_a_lost_journal_is_reconciled_from_the_nodes_memos(tmp_path, monkeypatch):
    monkeypatch.setattr(rpc_backend, "HISTORY_PAGE", 3)  # several pages per payer
    w = rpc_world(tmp_path)
    w.fill(windows=2, devices=10, seed=23)
    front = await RpcFront(w.chain).start()
    backend = RpcBackend(front.url, poll_s=0.01)
    try:
        await run_until_done(w.uploader(backend=backend))
        sent = front.calls["sendTransaction"]
        with w.store.transaction() as conn:
            for table in ("settlement_txs", "settlement_parts", "settlement_items",
                          "settlements"):  # fmt: skip
                conn.execute("DELETE FROM %s" % table)
        await run_until_done(w.uploader(store=w.reopen(), backend=backend))
        assert front.calls["sendTransaction"] == sent  # nothing paid again
        assert front.calls["getSignaturesForAddress"] > 2 * len(AGGREGATORS)  # paged
    finally:
        await backend.close()
        await front.close()
    w.assert_settled_exactly_once()


@sync
async def test_durable_nonces_over_json_rpc(tmp_path):
    from hub.integrations.settlement import wallets

    w = rpc_world(tmp_path)
    w.fill(windows=1, devices=6, seed=24)
    nonces = {str(p.pubkey): wallets.read_or_create(w.folder / ("nonce-%d.json" % k), True)
              for k, p in w.payers.items()}  # fmt: skip
    front = await RpcFront(w.chain).start()
    backend = RpcBackend(front.url, poll_s=0.01)
    try:
        await run_until_done(w.uploader(backend=backend, nonces=nonces), rounds=80)
    finally:
        await backend.close()
        await front.close()
    w.assert_settled_exactly_once()
    nonce_txs = w.store.db.execute("SELECT count(*) FROM settlement_txs WHERE nonce IS NOT NULL")
    assert nonce_txs.fetchone()[0] == len(attempts_per_part(w.store))


# --- a real crash: the uploader's process is killed at a step ---------------------------


@pytest.mark.parametrize("step, on_chain", [("journaled", 0), ("sent", 1)])
@sync
async def test_a_killed_uploader_process_recovers_from_the_journal(tmp_path, step, on_chain):
    w = rpc_world(tmp_path)
    w.fill(windows=1, devices=12, seed=25)
    front = await RpcFront(w.chain).start()
    backend = RpcBackend(front.url, poll_s=0.01)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, str(tmp_path), front.url, str(w.mint), step,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join((str(ROOT), str(ROOT / "tests")))},
        )  # fmt: skip
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == -signal.SIGKILL, (out, err)
        # Sends overlap on the RPC path: the ones in flight when it died may land too.
        assert len(w.landed_parts()) >= on_chain if on_chain else not w.landed_parts()
        journaled = w.store.db.execute("SELECT count(*) FROM settlement_txs").fetchone()[0]
        assert journaled == w.store.db.execute("SELECT count(*) FROM settlement_parts"
                                               ).fetchone()[0] > 1  # fmt: skip
        await run_until_done(w.uploader(store=w.reopen(), backend=backend))
    finally:
        await backend.close()
        await front.close()
    w.assert_settled_exactly_once()


def _child(tmp, url, mint, step):
    """An uploader process that SIGKILLs itself when it reaches `step`."""
    from solders.pubkey import Pubkey

    from hub.integrations.settlement import wallets
    from hub.integrations.settlement.uploader import Uploader
    from hub.store import Store

    def die(name):
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    folder = Path(tmp) / "wallets"
    up = Uploader(
        Store(Path(tmp) / "hub.sqlite", synchronous="NORMAL"), RpcBackend(url, poll_s=0.01),
        wallets.payers(folder, AGGREGATORS),
        wallets.Owners({}, folder / "owners.json", make=folder / "owners"),
        Pubkey.from_string(mint), name="hub", batch_s=BATCH_S, step=die,
    )  # fmt: skip
    asyncio.run(up.cycle())
    sys.exit("the uploader never reached %s" % step)


if __name__ == "__main__":
    _child(*sys.argv[1:])
