"""Margin in the market (hub/market/funding.py over hub/integrations/settlement/margin.py):
a bid needs its aggregator's free margin; a deposit is the aggregator's own signed
transfer, checked before it reaches the chain and credited once. Real Exchange, store,
LiteSVM chain (the SPL Token and Memo programs), and the aggregator's own Wallet."""

import asyncio
import base64

from helpers.settlement import CREDIT
from test_exchange import Slot, joined, layer, opened

from aggregator.wallet import Wallet

SLOT_S, GATE_S = 60, 20


def ask(ex, participant, got, msg):
    """A margin request, answered by its task. -> the answer (or the error)."""
    ex.received(participant, msg)

    async def settle():
        for _ in range(100):
            await asyncio.sleep(0)
            found = [m for m in got if m.get("ref") == msg["ref"]]
            if found:
                return found[-1]
        raise AssertionError("no answer to %r" % msg)

    return asyncio.get_event_loop().run_until_complete(settle())


def deposit_tx(w, participant, got, key_id, credits, memo=None, ref=100):
    wallet = Wallet(w.payers[key_id].keypair)
    terms = dict(w.m.terms(key_id), **({"memo": memo} if memo else {}))
    blockhash = ask(w.exchange, participant, got, {"type": "blockhash", "ref": ref})["blockhash"]
    return base64.b64encode(bytes(wallet.deposit(terms, credits * CREDIT, blockhash))).decode()


def test_a_bid_needs_margin_and_a_deposit_is_credited_once(world):
    w, slot = world, Slot()
    one, got = joined(w.exchange, 1)
    assert got[0]["margin"]["memo"] == "gridbid-margin:hub:1"  # the terms, in the welcome
    opened(w.exchange, slot)
    bid = {"type": "bid", "slot": slot.name, "ref": 1, "layers": [layer(1001, 20.0)]}
    w.exchange.received(one, bid)
    assert got[-1]["type"] == "error" and "under-funded" in got[-1]["why"]
    assert w.store.rows("SELECT what FROM market_refusals") == [{"what": "bid"}]  # audited
    # Its own wallet, funded by the test chain's faucet (once), deposits 0.15 credits.
    answer = ask(w.exchange, one, got, {"type": "faucet", "ref": 2,
                                        "wallet": str(w.payers[1].pubkey)})  # fmt: skip
    assert answer["given"] == 1_000_000 * CREDIT
    other = ask(w.exchange, one, got, {"type": "faucet", "ref": 20,
                                       "wallet": str(w.payers[2].pubkey)})  # fmt: skip
    assert other["given"] == 0  # once per aggregator: no minting without end
    tx = deposit_tx(w, one, got, 1, 0.15)
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": tx})
    assert answer["status"] == "finalized" and answer["account"]["free"] == 150_000
    again = ask(w.exchange, one, got, {"type": "deposit", "ref": 4, "tx": tx})
    assert again["status"] == "finalized" and again["account"]["deposited"] == 150_000  # once
    # 20 c/kWh x 1 kWh = 20 cents = 0.2 credits: still over; 0.5 kWh is within.
    w.exchange.received(one, dict(bid, ref=5))
    assert "under-funded" in got[-1]["why"] and "0.1500" in got[-1]["why"]
    w.exchange.received(one, dict(bid, ref=6, layers=[layer(1001, 20.0, kwh=0.5)]))
    assert got[-1]["type"] == "bid_result" and got[-1]["accepted"] == 1
    # The margin the slot's layers hold is spent until the gate: a second layer is refused.
    w.exchange.received(one, dict(bid, ref=7, layers=[layer(1002, 20.0, 0.5, layer_id=2)]))
    assert "under-funded" in got[-1]["why"]


def test_a_deposit_that_is_not_one_is_refused_before_the_chain(world):
    w = world
    one, got = joined(w.exchange, 1)
    two, got_two = joined(w.exchange, 2)
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w.payers[1].pubkey)})
    # Aggregator 1 signs a deposit naming aggregator 2: 2 cannot claim it, 1 cannot send it.
    for_two = deposit_tx(w, one, got, 1, 5, memo="gridbid-margin:hub:2", ref=2)
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": for_two})
    assert answer["type"] == "error" and "memo must be exactly 'gridbid-margin:hub:1'" in (
        answer["why"])  # fmt: skip
    for bad, why in ((b"\x00" * 40, "not a signed Solana transaction"),
                     (b"x" * 2000, "at most 1232 bytes")):  # fmt: skip
        text = base64.b64encode(bad).decode()
        answer = ask(w.exchange, two, got_two, {"type": "deposit", "ref": 4, "tx": text})
        assert why in answer["why"]
    answer = ask(w.exchange, two, got_two, {"type": "deposit", "ref": 5, "tx": "%%%"})
    assert "base64" in answer["why"]
    # Nothing reached the chain or the account: no deposit row, nothing free.
    assert w.store.rows("SELECT count(*) AS n FROM margin_deposits") == [{"n": 0}]
    assert w.m.account(1)["free"] == w.m.account(2)["free"] == 0


def test_an_aggregator_in_debt_is_refused(world):
    """A contract made outside the margin (the hub settled without one before) leaves an
    account below zero: its bids are refused until it deposits."""
    w, slot = world, Slot()
    w.add(1001, 2, slot.start - 600, 0.5, 16.0)  # owed: 8 cents, nothing deposited
    assert w.m.account(2)["free"] == -80_000
    two, got = joined(w.exchange, 2)
    opened(w.exchange, slot)
    w.exchange.received(two, {"type": "bid", "slot": slot.name, "ref": 1,
                              "layers": [layer(1001, 15.5, kwh=0.01)]})  # fmt: skip
    assert "under-funded" in got[-1]["why"] and "free margin is 0.0000" in got[-1]["why"]
