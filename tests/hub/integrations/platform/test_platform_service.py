"""The platform in a running hub (hub/integrations/platform/service.py): it shares the settlement's
LiteSVM chain and mint, mints certificates by itself, and takes in what a CLI process
did against its own rebuilt chain, so the hub's chain reconciles with the store."""

import asyncio
import types

from helpers.logs import into
from helpers.platform import BASE, World

from hub.integrations.platform import DEFAULTS, check
from hub.integrations.platform.chain_ops import Keys
from hub.integrations.platform.layer import Platform
from hub.integrations.platform.service import PlatformService
from hub.integrations.settlement import rebuild
from hub.integrations.settlement.backends import LiteSVMBackend
from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.provision import SOL, provision
from hub.integrations.settlement.transactions import ata
from hub.store import Store


def test_hub_round_mints_and_takes_in_the_cli_s_work(tmp_path):
    w = World(tmp_path)  # the hub: its store and the settlement's chain
    w.contract(101, BASE, 2.0, 2.0)
    settings = check({**DEFAULTS, "sources": {"101": "solar"}}, tmp_path, "[platform]")
    settlement = types.SimpleNamespace(
        chain=w.chain, uploader=types.SimpleNamespace(backend=w.backend, mint=w.mint), funded={}
    )
    hub = types.SimpleNamespace(store=w.store, integrations={"settlement": settlement})
    service = PlatformService(hub, settings, settlement)
    out = asyncio.run(service.round(now=BASE + 10**6))
    assert out["minted"][0]["serials"] == [1, 2]
    # A CLI process: its own store connection and its own chain rebuilt from the journal.
    store = Store(tmp_path / "hub.sqlite")
    chain = Chain()
    mint = provision(chain, tmp_path / "wallets", {}, 0, 6)
    keys = Keys(tmp_path / "wallets", make=True)
    chain.airdrop(keys.authority.pubkey, 100 * SOL)
    cli = Platform(store, LiteSVMBackend(chain), keys, mint, settings)
    assert rebuild.rebuild(chain, store.db.conn)[1] == 0  # no journaled transaction failed
    asyncio.run(cli.credit.set_rate("r", 100))
    asyncio.run(cli.credit.purchase("b", "alice", 500))
    asyncio.run(cli.rec.retire("x", "owner-101", [2], "cli", wallet=w.signer("owner-101")))
    assert asyncio.run(cli.reconcile()) == []
    store.close()
    # The hub has not seen those transactions: its chain differs until the next round.
    assert asyncio.run(service.platform.reconcile()) != []
    again = asyncio.run(service.round(now=BASE + 10**6 + 60))
    assert again["minted"] == []  # the same energy is not minted again
    assert asyncio.run(service.platform.reconcile()) == []
    assert service.replay_new() == 0  # nothing new
    status = service.platform.status()
    counts = {(c["status"], c["vintage"]): c["count"] for c in status["certificates"]}
    assert counts == {("held", 2023): 1, ("retired", 2023): 1}
    assert status["credit_rate"][0]["fiat_per_credit"] == 100
    assert status["pending_commands"] == []
    w.close()


def test_a_hub_started_on_a_lost_store_reads_the_memos_first(tmp_path):
    """The store was lost, the chain was not: the hub's first round reads the platform
    authority's memos (recovery.py), logs what it found, and the lost command's id is
    refused for good."""
    import pytest

    from hub.integrations.platform.engine import PlatformError

    w = World(tmp_path)
    w.run(w.platform.credit.set_rate("r", 100))
    w.run(w.platform.credit.purchase("p1", "alice", 500))
    fresh = Store(tmp_path / "fresh.sqlite")
    settings = check(dict(DEFAULTS), tmp_path, "[platform]")
    settlement = types.SimpleNamespace(
        chain=w.chain, uploader=types.SimpleNamespace(backend=w.backend, mint=w.mint), funded={}
    )
    logs = into([])
    hub = types.SimpleNamespace(store=fresh, integrations={"settlement": settlement})
    service = PlatformService(hub, settings, settlement)
    assert not service.platform.engine.recovered
    asyncio.run(service.round(now=BASE + 10**6))
    assert service.platform.engine.recovered
    assert any("recovered" in line and "'p1'" in line for line in logs), logs
    asyncio.run(service.platform.credit.set_rate("r", 100))
    with pytest.raises(PlatformError, match="already landed on chain"):
        asyncio.run(service.platform.credit.purchase("p1", "alice", 500))
    assert w.chain.token_balance(ata(w.keys.account("alice"), w.mint)) == 5_000_000
    diffs = asyncio.run(service.platform.reconcile())
    assert any("command 'p1'" in d for d in diffs), diffs
    fresh.close()
    w.close()
