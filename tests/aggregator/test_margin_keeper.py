"""aggregator/margin.py: the keeper tops its margin up even when a deposit it kept from
before is refused for good (it once ended every round there: under-funded for good)."""

import asyncio
import types

from solders.keypair import Keypair

from aggregator.margin import MarginKeeper
from aggregator.store import AggregatorStore
from aggregator.wallet import Wallet


def test_a_refused_old_deposit_does_not_stop_top_ups(tmp_path):
    store = AggregatorStore(tmp_path / "agg.sqlite")
    store.deposit("hub", "SIG-OLD", 100, b"old bytes")  # kept before it left; refused now
    asked = []

    async def tell(link, request):  # the market's answers (a stand-in for its session)
        asked.append(request["type"])
        if request["type"] == "deposit" and request["tx"] == "b2xkIGJ5dGVz":  # old bytes
            return {"type": "error", "why": "its memo must be exactly 'gridbid-margin:hub:1'"}
        if request["type"] == "margin":
            return {"type": "margin", "account": {"free": 0}}
        if request["type"] == "blockhash":
            return {"type": "blockhash", "blockhash": "11111111111111111111111111111111"}
        return {"type": request["type"], "status": "finalized", "account": {"free": 5_000_000}}

    keeper = MarginKeeper("agg", Wallet(Keypair()), 5.0, store)
    terms = {"decimals": 6, "mint": str(Keypair().pubkey()), "clearing": str(Keypair().pubkey()),
             "memo": "gridbid-margin:hub:1", "faucet": False}  # fmt: skip
    link = types.SimpleNamespace(market="hub")
    for _ in range(2):
        asyncio.run(keeper._keep(tell, link, terms))
    assert asked[:4] == ["deposit", "margin", "blockhash", "deposit"], asked
    assert store.unanswered("hub") == []  # the old one failed, the new one finalized
    status = dict(store.db.execute("SELECT signature, status FROM deposits").fetchall())
    assert status.pop("SIG-OLD") == "failed" and list(status.values()) == ["finalized"]
