"""Attacks on margin paid back (hub/integrations/settlement/withdrawals.py), from a review
of the change; each worked before its fix: a stolen session redirecting the margin with a
1-unit deposit from its own wallet, withdrawals failing on chain without end (a token
account handed to another owner), the clearing account's SOL drained through token-account
rent, and a restarted hub paying back margin its gated book still held. Three more held
from the start and stay as guards (a bid during the withdrawal's await, a lost answer
and a retry, the ledger and a rebuild). Real Exchange, store and LiteSVM chain (SPL
Token, Memo)."""

import asyncio
import base64

from helpers.settlement import CREDIT
from solders.keypair import Keypair
from solders.transaction import Transaction
from spl.token.instructions import burn_checked, close_account, set_authority
from spl.token.models import (
    AuthorityType,
    BurnCheckedParams,
    CloseAccountParams,
    SetAuthorityParams,
)
from test_exchange import Slot, joined, layer, opened
from test_margin import ask
from test_margin_withdraw import funded, tokens

from aggregator.wallet import Wallet
from hub import controls as hub_controls
from hub.events import Events
from hub.integrations.settlement.transactions import TOKEN_PROGRAM, ata
from hub.integrations.settlement.withdrawals import MAX_PER_DAY
from hub.ledger import Ledger
from hub.market.exchange import Exchange
from hub.market.maker import MarketMaker


def own_tx(w, keypair, ixs):
    """The attacker's own transaction, signed by its wallet, on the chain."""
    w.chain.new_block()
    blockhash, _ = w.chain.latest_blockhash()
    tx = Transaction.new_signed_with_payer(ixs, keypair.pubkey(), [keypair], blockhash)
    _sig, err, _landed = w.chain.send(tx)
    assert err is None, err


def sol(w, pubkey):
    return w.chain.svm.get_balance(pubkey) or 0


def withdraw(w, one, got, rid, amount, ref):
    return ask(w.exchange, one, got, {"type": "withdraw", "ref": ref, "id": rid,
                                      "amount": amount})  # fmt: skip


def test_a_stolen_session_cannot_redirect_the_margin_with_a_deposit_of_its_own(world):
    """Margin comes from, and goes back to, the wallet of the aggregator's first deposit."""
    w = world
    one, got = funded(w, credits=10)  # the victim: 10 credits from its wallet A
    two, got2 = joined(w.exchange, 2)  # (only to get the thief's wallet B tokens)
    ask(w.exchange, two, got2, {"type": "faucet", "ref": 1, "wallet": str(w.payers[2].pubkey)})
    thief = Wallet(w.payers[2].keypair)
    blockhash = ask(w.exchange, one, got, {"type": "blockhash", "ref": 50})["blockhash"]
    tx = thief.deposit(w.m.terms(1), 1, blockhash)  # 1 base unit, memo of aggregator 1
    answer = ask(
        w.exchange,
        one,
        got,
        {"type": "deposit", "ref": 51, "tx": base64.b64encode(bytes(tx)).decode()},
    )
    assert answer["type"] == "error" and "from wallet %s" % w.payers[1].pubkey in answer["why"]
    before = tokens(w, thief.pubkey)
    answer = withdraw(w, one, got, "steal", 10 * CREDIT, 52)
    assert answer["wallet"] == str(w.payers[1].pubkey)  # the victim's own
    assert tokens(w, thief.pubkey) == before


def test_a_token_account_handed_to_another_owner_costs_the_clearing_account_nothing(world):
    """A withdrawal that would land with an error is refused before it is signed, and no
    aggregator gets more than MAX_PER_DAY attempts a day whatever they cost."""
    w = world
    one, got = funded(w, credits=10)
    kp = w.payers[1].keypair
    own_tx(w, kp, [set_authority(SetAuthorityParams(
        program_id=TOKEN_PROGRAM, account=ata(kp.pubkey(), w.mint),
        authority=AuthorityType.ACCOUNT_OWNER, current_authority=kp.pubkey(),
        new_authority=Keypair().pubkey()))])  # fmt: skip
    clearing = w.m.clearing
    lamports = sol(w, clearing)
    for i in range(20):
        answer = withdraw(w, one, got, "x%d" % i, 10 * CREDIT, 100 + i)
        assert answer["type"] == "error" and "not yours" in answer["why"], answer
    assert w.m.free(1) == 10 * CREDIT
    assert w.store.db.conn.execute("SELECT count(*) FROM margin_withdrawals").fetchone() == (0,)
    assert sol(w, clearing) == lamports  # no fee paid


def test_no_more_than_max_per_day_withdrawals_failed_ones_included(world):
    w = world
    one, got = funded(w, credits=100)
    send = w.chain.send
    w.chain.send = lambda tx: (None, "dropped", False)
    for i in range(MAX_PER_DAY):
        answer = withdraw(w, one, got, "d%d" % i, CREDIT, 300 + i)
        assert answer["status"] == "sent"
        w.chain.new_block(w.chain.valid_blocks + 1)
        asyncio.get_event_loop().run_until_complete(w.m.check())  # failed: expired
    w.chain.send = send
    answer = withdraw(w, one, got, "d-last", CREDIT, 400)
    assert answer["type"] == "error" and "ask again tomorrow" in answer["why"]
    assert w.m.free(1) == 100 * CREDIT


def test_a_closed_token_account_is_never_made_again_at_the_clearing_account_s_cost(world):
    """The clearing account pays no rent for the payee's token account: once it is closed
    (its rent kept by its owner), nothing is paid back into it, and small amounts are
    refused anyway (at least a credit, unless it is all the free margin)."""
    w = world
    one, got = funded(w, credits=10)
    kp = w.payers[1].keypair
    me, account, clearing = kp.pubkey(), ata(kp.pubkey(), w.mint), w.m.clearing

    def empty_and_close():
        held = tokens(w, me)
        ixs = [burn_checked(BurnCheckedParams(program_id=TOKEN_PROGRAM, mint=w.mint,
                                              account=account, owner=me, amount=held,
                                              decimals=6))] if held else []  # fmt: skip
        ixs.append(close_account(CloseAccountParams(program_id=TOKEN_PROGRAM, account=account,
                                                    dest=me, owner=me)))  # fmt: skip
        own_tx(w, kp, ixs)

    answer = withdraw(w, one, got, "r0", 1, 200)
    assert answer["type"] == "error" and "at least 1 credit" in answer["why"]
    empty_and_close()
    clearing0 = sol(w, clearing)
    answer = withdraw(w, one, got, "r1", CREDIT, 201)
    assert answer["type"] == "error" and "missing" in answer["why"]
    assert sol(w, clearing) == clearing0 and w.m.free(1) == 10 * CREDIT


def test_a_restarting_hub_pays_back_nothing_until_its_gated_book_is_cleared_again(world):
    """Between a restart and resume() (hub/service.py) the Exchange knows no book: the
    stored one still holds margin, so nothing is paid back until it is cleared."""
    w, slot = world, Slot()
    one, got = funded(w, credits=1)
    opened(w.exchange, slot)
    w.exchange.received(one, {"type": "bid", "slot": slot.name, "ref": 10,
                              "layers": [layer(1001, 80.0)]})  # fmt: skip
    assert got[-1]["accepted"] == 1
    # The hub restarts: a new Exchange over the same store, the market port up before
    # discovery and resume() (hub/service.py run()).
    maker = MarketMaker(w.store, "hub", 60, 20)
    ledger = Ledger(w.store, 60, 20, "hub")
    ex = Exchange(maker, ledger, w.store, hub_controls.Controls(w.store, Events()), "hub",
                  {1: "one", 2: "two"}, 47401)  # fmt: skip
    ex.use_margin(w.m)
    ex.paying_back = False  # as hub/service.py run() sets it before the market port
    w.exchange = ex
    one, got = joined(ex, 1)
    answer = withdraw(w, one, got, "w-all", CREDIT, 20)
    assert answer["type"] == "error" and "the market is starting" in answer["why"]
    result, trades = maker.close(slot.name, slot.gate)  # resume(): the book clears
    ex.close_slot(slot.name, slot.start, result, trades, set())
    ex.paying_back = True
    held = ex.funding.committed(1)  # the fills of the book cleared again, at their price
    assert trades and held > 0
    answer = withdraw(w, one, got, "w-all", CREDIT, 21)
    assert answer["type"] == "error" and "cannot pay back 1.0000" in answer["why"]
    rest = withdraw(w, one, got, "w-rest", CREDIT - held, 22)  # all that is free
    assert rest["status"] == "finalized" and rest["account"]["free"] == held


def test_a_bid_taken_while_the_withdrawal_awaits_the_blockhash_is_counted(world):
    """Held: the free margin is read again after the await, in _journal."""
    w, slot = world, Slot()
    one, got = funded(w, credits=1)
    opened(w.exchange, slot)
    backend = w.m.withdrawals.backend
    real = backend.latest_blockhash

    async def slow():
        w.exchange.received(one, {"type": "bid", "slot": slot.name, "ref": 10,
                                  "layers": [layer(1001, 80.0)]})  # fmt: skip
        return await real()

    backend.latest_blockhash = slow
    answer = withdraw(w, one, got, "w-1", CREDIT // 2, 11)
    assert answer["type"] == "error" and "free margin is 0.2000" in answer["why"]
    assert [m for m in got if m["type"] == "bid_result"][0]["accepted"] == 1


def test_send_raises_then_the_check_loop_and_a_retry_pay_once(world):
    """Held: a lost answer from send, then check() and the same id again."""
    from hub.integrations.settlement.backends import BackendError

    w = world
    one, got = funded(w, credits=10)
    backend = w.m.withdrawals.backend
    real_send, real_status = backend.send, backend.statuses
    sent = []

    async def send(raw):  # it lands, but the answer is lost
        sent.append(raw)
        await real_send(raw)
        raise BackendError("timeout")

    async def statuses(sigs):
        raise BackendError("timeout")

    backend.send, backend.statuses = send, statuses
    answer = withdraw(w, one, got, "w-1", 3 * CREDIT, 20)
    assert answer["status"] == "sent"
    backend.send, backend.statuses = real_send, real_status
    before = tokens(w, w.payers[1].pubkey)
    asyncio.get_event_loop().run_until_complete(w.m.check())
    again = withdraw(w, one, got, "w-1", 3 * CREDIT, 21)
    assert again["status"] == "finalized" and len(sent) == 1
    assert tokens(w, w.payers[1].pubkey) == before and w.m.account(1)["withdrawn"] == 3 * CREDIT


def test_the_credit_ledger_and_a_rebuild_agree_after_failed_and_paid_withdrawals(world):
    """Failed withdrawals move nothing, paid ones move the ledger (the platform's credit,
    hub/integrations/platform/credit.py) and replay in a rebuilt chain."""
    from hub.integrations.platform.chain_ops import Keys
    from hub.integrations.platform.layer import Platform
    from hub.integrations.settlement import rebuild, wallets
    from hub.integrations.settlement.backends import LiteSVMBackend
    from hub.integrations.settlement.chain import Chain
    from hub.integrations.settlement.margin import faucet_funded

    w = world
    one, got = funded(w, credits=10)
    send = w.chain.send
    w.chain.send = lambda tx: (None, "dropped", False)
    withdraw(w, one, got, "lost", 2 * CREDIT, 5)
    w.chain.send = send
    w.chain.new_block(w.chain.valid_blocks + 1)
    asyncio.get_event_loop().run_until_complete(w.m.check())
    assert withdraw(w, one, got, "ok", 3 * CREDIT, 6)["status"] == "finalized"
    keys = Keys(w.folder, make=True)
    w.chain.airdrop(keys.authority.pubkey, 10**10)
    platform = Platform(w.store, LiteSVMBackend(w.chain), keys, w.mint, {})
    run = asyncio.get_event_loop().run_until_complete
    run(platform.credit.open_funded(faucet_funded(w.store.db.conn)))
    assert run(platform.reconcile()) == []
    clearing = wallets.read(wallets.clearing_path(w.folder))
    chain, _m, _r, failed = rebuild.start(w.store.db.conn, w.folder, {0: clearing}, 0, 6,
                                          chain=Chain())  # fmt: skip
    assert failed == 0
    assert chain.token_balance(ata(w.m.clearing, w.mint)) == tokens(w, w.m.clearing)
