"""Attacks on the margin (an attack review of hub/integrations/settlement/margin.py and
hub/market/funding.py; each test failed before its fix): forged and borrowed
signatures, a delegate's deposit, a restart mid-gate, deposits only confirmed, a flood
of unsigned deposits, out-of-range amounts, and the bid path's cost over a long history.
Real Exchange, store and LiteSVM chain, as tests/hub/market/test_margin.py."""

import base64
import math
import os
import time

from helpers.settlement import World
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.signature import Signature
from solders.transaction import Transaction
from spl.token.instructions import approve_checked, transfer_checked
from spl.token.models import ApproveCheckedParams, TransferCheckedParams
from test_exchange import GATE_S, SLOT_S, Slot, joined, layer, opened
from test_margin import ask, deposit_tx

from aggregator.wallet import MEMO_PROGRAM, TOKEN_PROGRAM, Wallet
from hub import controls as hub_controls
from hub.events import Events
from hub.integrations.settlement import schema
from hub.integrations.settlement.backends import LiteSVMBackend, Status
from hub.integrations.settlement.transactions import ata
from hub.ledger import Ledger
from hub.market.exchange import Exchange
from hub.market.maker import MarketMaker


def forged(w, key_id, credits, signature, ref, one, got):
    """A deposit of `credits` whose signatures[0] is `signature` (signed by nobody)."""
    real = Transaction.from_bytes(base64.b64decode(deposit_tx(w, one, got, key_id, credits,
                                                              ref=ref)))  # fmt: skip
    fake = Transaction.populate(real.message, [signature] + list(real.signatures[1:]))
    return base64.b64encode(bytes(fake)).decode()


def funded(w, one, got, credits):
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w.payers[1].pubkey)})
    tx = deposit_tx(w, one, got, 1, credits, ref=2)
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": tx})
    assert answer["status"] == "finalized", answer


def test_a_landed_transactions_signature_buys_no_margin(world):
    """A deposit of 1,000,000 credits carrying the signature of a transaction already on
    chain (here aggregator 2's faucet funding): the chain says AlreadyProcessed and the
    signature's status is clean, so it was credited. Signatures are verified first now."""
    w = world
    one, got = joined(w.exchange, 1)
    two, got2 = joined(w.exchange, 2)
    ask(w.exchange, two, got2, {"type": "faucet", "ref": 1, "wallet": str(w.payers[2].pubkey)})
    landed = w.chain.signatures_for_address(w.payers[2].pubkey)[0].signature
    fake = forged(w, 1, 1_000_000, landed, 2, one, got)
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": fake})
    assert answer["type"] == "error" and "signatures do not verify" in answer["why"]
    assert w.m.account(1)["deposited"] == 0


def test_a_real_signature_over_another_amount_is_refused(world):
    """A signs a real 0.01-credit deposit (signature S) and first sends its message with
    1,000 credits and S pasted in: that row kept the 1,000 when the real one landed."""
    w = world
    one, got = joined(w.exchange, 1)
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w.payers[1].pubkey)})
    real_text = deposit_tx(w, one, got, 1, 0.01, ref=2)
    real = Transaction.from_bytes(base64.b64decode(real_text))
    fake = forged(w, 1, 1000, real.signatures[0], 3, one, got)
    first = ask(w.exchange, one, got, {"type": "deposit", "ref": 4, "tx": fake})
    assert first["type"] == "error" and "signatures do not verify" in first["why"]
    assert ask(w.exchange, one, got, {"type": "deposit", "ref": 5, "tx": real_text})[
        "status"] == "finalized"  # fmt: skip
    held = w.chain.token_balance(ata(w.m.clearing, w.mint))
    assert held == 10_000 == w.m.account(1)["deposited"]  # 0.01 credit moved, 0.01 credited


def test_a_delegates_deposit_of_anothers_tokens_is_refused(world):
    """W2 approved W1 (on a cluster anyone may): W1 moving W2's tokens was credited and
    booked against W1, while the chain debited W2 (the credit ledger then disagreed)."""
    w = world
    one, got = joined(w.exchange, 1)
    two, got2 = joined(w.exchange, 2)
    w1, w2 = w.payers[1], w.payers[2]
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w1.pubkey)})
    ask(w.exchange, two, got2, {"type": "faucet", "ref": 1, "wallet": str(w2.pubkey)})
    source = ata(w2.pubkey, w.mint)
    approve = approve_checked(ApproveCheckedParams(
        program_id=TOKEN_PROGRAM, source=source, mint=w.mint, delegate=w1.pubkey,
        owner=w2.pubkey, amount=5_000_000, decimals=6))  # fmt: skip
    tx = Transaction.new_signed_with_payer([approve], w2.pubkey, [w2.keypair],
                                           w.chain.latest_blockhash()[0])  # fmt: skip
    assert w.chain.send(tx)[1] is None
    blockhash = ask(w.exchange, one, got, {"type": "blockhash", "ref": 2})["blockhash"]
    memo = Instruction(MEMO_PROGRAM, w.m.memo(1).encode(), [AccountMeta(w1.pubkey, True, False)])
    move = transfer_checked(TransferCheckedParams(
        program_id=TOKEN_PROGRAM, source=source, mint=w.mint, dest=ata(w.m.clearing, w.mint),
        owner=w1.pubkey, amount=5_000_000, decimals=6))  # fmt: skip
    deposit = Transaction.new_signed_with_payer([memo, move], w1.pubkey, [w1.keypair],
                                                Hash.from_string(blockhash))  # fmt: skip
    text = base64.b64encode(bytes(deposit)).decode()
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": text})
    assert answer["type"] == "error" and "signer's own tokens" in answer["why"]
    assert w.m.account(1)["deposited"] == 0


def test_a_hub_restarted_before_the_gate_counts_the_layers_it_took(world):
    """The book comes back from the store after a restart; what its layers hold of the
    margin came back empty, and the same margin backed a second set of layers."""
    w, slot = world, Slot()
    one, got = joined(w.exchange, 1)
    funded(w, one, got, 0.2)  # 20 cents: one layer of 1 kWh at 20 c/kWh
    opened(w.exchange, slot)
    w.exchange.received(one, {"type": "bid", "slot": slot.name, "ref": 4,
                              "layers": [layer(1001, 20.0)]})  # fmt: skip
    assert got[-1]["type"] == "bid_result" and got[-1]["accepted"] == 1
    maker = MarketMaker(w.store, "hub", SLOT_S, GATE_S)
    controls = hub_controls.Controls(w.store, Events())
    again = Exchange(maker, Ledger(w.store, SLOT_S, GATE_S, "hub"), w.store, controls, "hub",
                     {1: "one"}, 47401)  # fmt: skip
    again.use_margin(w.m)
    offers = [{"device": d, "kwh": 1.0, "reserve": 15.0, "max_kw": 5.0, "address": "x"}
              for d in (1001, 1002)]  # fmt: skip
    again.open_slot(slot.name, slot.start, slot.gate, offers, 16.0)
    one, got = joined(again, 1)
    again.received(one, {"type": "bid", "slot": slot.name, "ref": 5,
                         "layers": [layer(1002, 20.0, layer_id=2)]})  # fmt: skip
    assert got[-1]["type"] == "error" and "under-funded" in got[-1]["why"]
    result, trades = maker.close(slot.name, slot.gate)
    bought = sum(t.kwh for t in trades if t.buyer == 1)
    assert w.m.cost(result.price, bought) <= w.m.account(1)["deposited"]


class Confirmed(LiteSVMBackend):
    """A cluster's node that has every transaction at 'confirmed', none finalized."""

    async def statuses(self, signatures):
        found = await super().statuses(signatures)
        return [None if s is None else Status(s.err, False) for s in found]


def test_a_deposit_only_confirmed_is_not_credited_yet(world):
    w = world
    w.m.backend = Confirmed(w.chain)
    one, got = joined(w.exchange, 1)
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w.payers[1].pubkey)})
    tx = deposit_tx(w, one, got, 1, 5, ref=2)
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": tx})
    assert answer["status"] == "sent" and w.m.account(1)["deposited"] == 0, answer
    w.m.backend = LiteSVMBackend(w.chain)  # finalized now: the next round credits it
    ask(w.exchange, one, got, {"type": "deposit", "ref": 4, "tx": tx})
    assert w.m.account(1)["deposited"] == 5 * 10**6


def test_unsigned_deposits_leave_no_journal_rows(world):
    """Junk signatures cost their sender nothing on chain; each was a row for good."""
    w = world
    one, got = joined(w.exchange, 1)
    real = Transaction.from_bytes(base64.b64decode(deposit_tx(w, one, got, 1, 1, ref=1)))
    for i in range(50):
        junk = Transaction.populate(real.message, [Signature(os.urandom(64))])
        text = base64.b64encode(bytes(junk)).decode()
        answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 10 + i, "tx": text})
        assert answer["type"] == "error"
    assert w.store.rows("SELECT count(*) AS n FROM margin_deposits") == [{"n": 0}]


def test_an_amount_beyond_sqlite_integers_is_answered(world):
    w = world
    one, got = joined(w.exchange, 1)
    ask(w.exchange, one, got, {"type": "faucet", "ref": 1, "wallet": str(w.payers[1].pubkey)})
    blockhash = ask(w.exchange, one, got, {"type": "blockhash", "ref": 2})["blockhash"]
    big = Wallet(w.payers[1].keypair).deposit(w.m.terms(1), 2**64 - 1, blockhash)
    text = base64.b64encode(bytes(big)).decode()
    answer = ask(w.exchange, one, got, {"type": "deposit", "ref": 3, "tx": text})
    assert answer["type"] == "error" and "below 2^63" in answer["why"]


def empty():
    return {"deposited": 0, "withdrawn": 0, "paid": 0, "owed": 0, "free": 0, "paid_contracts": 0}


def accounts(store, per_cent, key_ids=None):
    """The margin accounts read from the whole history, as a reference for the running
    totals Margin.account keeps: {aggregator id: account}."""
    conn, out = store.db.conn, {}
    for key_id, amount in conn.execute(
        "SELECT aggregator, SUM(amount) FROM margin_deposits WHERE status = 'finalized' "
        "GROUP BY aggregator"
    ):
        out.setdefault(key_id, empty())["deposited"] = amount
    for key_id, amount, count in conn.execute(
        "SELECT c.buyer, SUM(i.amount), COUNT(*) FROM settlement_items i "
        "JOIN settlements s ON s.id = i.batch AND s.status = 'finalized' "
        "JOIN contracts c ON c.id = i.contract GROUP BY c.buyer"
    ):
        account = out.setdefault(key_id, empty())
        account["paid"], account["paid_contracts"] = amount, count
    # Not paid yet: in no batch, or in one not finalized. Bounded by the promise.
    for key_id, cents in conn.execute(
        "SELECT c.buyer, SUM(c.price * ABS(c.avg_watts) * c.duration_s / 3600000.0) "
        "FROM contracts c LEFT JOIN settlement_items i ON i.contract = c.id "
        "LEFT JOIN settlements s ON s.id = i.batch "
        "WHERE s.status IS NULL OR s.status != 'finalized' GROUP BY c.buyer"
    ):
        out.setdefault(key_id, empty())["owed"] = math.ceil((cents or 0) * per_cent)
    for key_id, amount in conn.execute(
        "SELECT aggregator, SUM(amount) FROM margin_withdrawals WHERE status != 'failed' "
        "GROUP BY aggregator"
    ):
        out.setdefault(key_id, empty())["withdrawn"] = amount
    for a in out.values():
        a["free"] = a["deposited"] - a["withdrawn"] - a["paid"] - a["owed"]
    if key_ids is not None:
        out = {k: v for k, v in out.items() if k in key_ids}
    return out


def test_the_bid_paths_margin_read_stays_cheap_over_a_day_of_history(tmp_path):
    """96,000 contracts (a day of 1,000 batteries): the whole history was aggregated for
    every bid message (~150 ms, in the hub's loop). Running totals now: the first read
    catches up once, the next ones read what was added."""
    w = World(tmp_path, faucet=True)
    margin = w.margin()
    schema.migrate(w.store.db)
    conn = w.store.db.conn
    w.store.add_device(1001, 1001, "127.0.0.21")
    with w.store.transaction():
        conn.execute("INSERT INTO settlements (id, trade_ids, status, at, updated_at) "
                     "VALUES ('b', '', 'finalized', 0, 0)")  # fmt: skip
        conn.executemany(
            "INSERT INTO contracts (id, device, buyer, slot, start, duration_s, avg_watts, "
            "price, state, created_at) VALUES (?, 1001, ?, 's', 0, 900, 1000, 15.0, "
            "'CompletedSuccess', 0)",
            (("c%d" % i, 1 + i % 8) for i in range(96_000)),
        )
        conn.executemany(
            "INSERT INTO settlement_items (contract, batch, kwh, amount) "
            "VALUES (?, 'b', 0.25, 37500)",
            (("c%d" % i,) for i in range(95_000)),
        )
    first = margin.account(1)  # the catch-up
    began = time.perf_counter()
    for _ in range(20):
        assert margin.account(1) == first
    per_read = (time.perf_counter() - began) / 20
    assert per_read < 0.005, "%.1f ms per bid message's margin read" % (per_read * 1000)
    assert first == accounts(w.store, 10_000)[1]  # the same figures as the full reading
    assert first["owed"] == 125 * 37_500 and first["paid_contracts"] == 11_875
    w.store.close()
