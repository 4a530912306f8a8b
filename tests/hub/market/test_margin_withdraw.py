"""Margin paid back (hub/integrations/settlement/withdrawals.py through the market API's
`withdraw`): free margin only, to the wallet the aggregator deposits from, exactly once,
journaled and replayed. Real Exchange, store and LiteSVM chain (SPL Token, Memo)."""

import asyncio
import types

from helpers.settlement import CREDIT
from test_exchange import Slot, joined, layer, opened
from test_margin import ask, deposit_tx

from hub.integrations.settlement import rebuild, wallets
from hub.integrations.settlement.chain import Chain
from hub.integrations.settlement.transactions import ata


def funded(w, credits=10):
    """Aggregator 1 joined, its own wallet funded by the faucet, `credits` deposited."""
    one, got = joined(w.exchange, 1)
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w.payers[1].pubkey)})
    tx = deposit_tx(w, one, got, 1, credits, ref=2)
    assert ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": tx})["status"] == (
        "finalized"
    )
    return one, got


def tokens(w, owner):
    return w.chain.token_balance(ata(owner, w.mint)) or 0


def test_free_margin_comes_back_to_the_depositing_wallet_once(world):
    w = world
    one, got = funded(w)
    wallet, before = w.payers[1].pubkey, tokens(world, w.payers[1].pubkey)
    ask_back = {"type": "withdraw", "ref": 4, "id": "w-1", "amount": 4 * CREDIT}
    answer = ask(w.exchange, one, got, ask_back)
    assert answer["type"] == "withdraw" and answer["status"] == "finalized", answer
    assert answer["wallet"] == str(wallet)
    assert answer["account"]["withdrawn"] == 4 * CREDIT
    assert answer["account"]["free"] == 6 * CREDIT
    assert tokens(w, wallet) == before + 4 * CREDIT
    again = ask(w.exchange, one, got, dict(ask_back, ref=5))  # a retry: the same one
    assert again["status"] == "finalized" and again["account"]["withdrawn"] == 4 * CREDIT
    assert tokens(w, wallet) == before + 4 * CREDIT  # paid once
    memos = [x.memo or "" for x in w.chain.signatures_for_address(ata(wallet, w.mint))]
    assert any("gridbid-withdraw:hub:1:w-1" in m for m in memos)
    # More than is free: refused with the figure, audited, nothing sent.
    answer = ask(w.exchange, one, got, {"type": "withdraw", "ref": 6, "id": "w-2",
                                        "amount": 7 * CREDIT})  # fmt: skip
    assert answer["type"] == "error" and "free margin is 6.0000" in answer["why"]
    assert {"what": "withdraw"} in w.store.rows("SELECT what FROM market_refusals")
    assert tokens(w, wallet) == before + 4 * CREDIT


def test_what_the_open_layers_may_cost_is_not_paid_back(world):
    w, slot = world, Slot()
    one, got = funded(w, credits=1)  # 100 cents of margin
    opened(w.exchange, slot)
    bid = {"type": "bid", "slot": slot.name, "ref": 10, "layers": [layer(1001, 80.0)]}
    w.exchange.received(one, bid)  # 80 cents held by the slot's layer
    assert got[-1]["type"] == "bid_result" and got[-1]["accepted"] == 1, got[-1]
    answer = ask(w.exchange, one, got, {"type": "withdraw", "ref": 11, "id": "w-1",
                                        "amount": CREDIT // 2})  # fmt: skip
    assert answer["type"] == "error" and "free margin is 0.2000" in answer["why"]
    answer = ask(w.exchange, one, got, {"type": "withdraw", "ref": 12, "id": "w-2",
                                        "amount": CREDIT // 5})  # fmt: skip
    assert answer["status"] == "finalized"
    # And what is paid back is spent for bids: nothing is left for another layer.
    w.exchange.received(one, dict(bid, ref=13, layers=[layer(1002, 20.0, 0.1, layer_id=2)]))
    assert "under-funded" in got[-1]["why"]


def test_bad_requests_are_refused_before_the_chain(world):
    w = world
    one, got = joined(w.exchange, 1)
    for ref, request, why in (
        (1, {"id": "w-1", "amount": CREDIT}, "no deposit of yours is final"),
        (2, {"id": "w 1", "amount": 1}, "id must be"),
        (3, {"id": "w-1", "amount": -5}, "whole number"),
        (4, {"id": "w-1", "amount": True}, "whole number"),
        (5, {"id": "w-1", "amount": 2**63}, "whole number"),
        (6, {"amount": 1}, "id must be"),
    ):
        answer = ask(w.exchange, one, got, {"type": "withdraw", "ref": ref, **request})
        assert answer["type"] == "error" and why in answer["why"], (request, answer)
    assert w.store.rows("SELECT count(*) AS n FROM margin_withdrawals") == [{"n": 0}]


def test_a_withdrawal_that_never_lands_fails_and_frees_the_margin(world):
    w = world
    one, got = funded(w)
    send = w.chain.send
    w.chain.send = lambda tx: (None, "dropped", False)  # the cluster loses it
    answer = ask(w.exchange, one, got, {"type": "withdraw", "ref": 4, "id": "w-1",
                                        "amount": 3 * CREDIT})  # fmt: skip
    w.chain.send = send
    assert answer["status"] == "sent" and answer["account"]["free"] == 7 * CREDIT
    run = w.exchange.funding.margin.check
    assert asyncio.get_event_loop().run_until_complete(run()) == 1  # still valid: waits
    w.chain.new_block(w.chain.valid_blocks + 1)  # its blockhash can no longer land
    assert asyncio.get_event_loop().run_until_complete(run()) == 0
    assert w.m.account(1)["withdrawn"] == 0 and w.m.free(1) == 10 * CREDIT
    again = ask(w.exchange, one, got, {"type": "withdraw", "ref": 5, "id": "w-1",
                                       "amount": 3 * CREDIT})  # fmt: skip
    assert again["type"] == "error" and "failed" in again["why"]  # never signed twice
    answer = ask(w.exchange, one, got, {"type": "withdraw", "ref": 6, "id": "w-2",
                                        "amount": 3 * CREDIT})  # fmt: skip
    assert answer["status"] == "finalized"


def test_a_rebuilt_chain_holds_what_was_paid_back(world):
    w = world
    one, got = funded(w)
    ask(w.exchange, one, got, {"type": "withdraw", "ref": 4, "id": "w-1", "amount": 4 * CREDIT})
    wallet = w.payers[1].pubkey
    expected = tokens(w, wallet), tokens(w, w.exchange.funding.margin.clearing)
    clearing = wallets.read(wallets.clearing_path(w.folder))  # as the hub provisions it
    chain, _mint, replayed, failed = rebuild.start(w.store.db.conn, w.folder, {0: clearing}, 0, 6,
                                                   chain=Chain())  # fmt: skip
    assert failed == 0 and replayed >= 2
    assert (
        chain.token_balance(ata(wallet, w.mint)) or 0,
        chain.token_balance(ata(w.exchange.funding.margin.clearing, w.mint)) or 0,
    ) == expected


def test_the_aggregator_s_keeper_takes_its_margin_back_when_it_leaves(world):
    """aggregator/margin.py against the real market: kept at 10 credits, then at 0 (the
    aggregator leaving): everything free comes back to its wallet."""
    from aggregator.margin import MarginKeeper
    from aggregator.wallet import Wallet

    w = world
    one, got = joined(w.exchange, 1)
    refs = iter(range(100, 200))

    async def tell(link, request):  # the keeper's session: the Exchange answers by ref
        msg = dict(request, ref=next(refs))
        w.exchange.received(one, msg)
        for _ in range(100):
            await asyncio.sleep(0)
            found = [m for m in got if m.get("ref") == msg["ref"]]
            if found:
                return dict(found[-1], why=found[-1].get("why"))
        raise AssertionError("no answer to %r" % msg)

    link, terms = types.SimpleNamespace(market="hub"), got[0]["margin"]
    wallet = Wallet(w.payers[1].keypair)
    run = asyncio.get_event_loop().run_until_complete
    run(MarginKeeper("agg", wallet, 10.0)._keep(tell, link, terms))
    assert w.m.account(1)["free"] == 10 * CREDIT
    before = tokens(w, wallet.pubkey)
    run(MarginKeeper("agg", wallet, 0.0)._keep(tell, link, terms))
    assert w.m.account(1)["free"] == 0 and w.m.account(1)["withdrawn"] == 10 * CREDIT
    assert tokens(w, wallet.pubkey) == before + 10 * CREDIT
