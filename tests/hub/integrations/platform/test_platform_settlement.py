"""The stable credit IS settlement's payment token: the platform's ledger plus the
uploader's finalized payments reconcile exactly with the chain after real settlement
(hub/integrations/settlement/uploader.py on LiteSVM), and an owner can redeem what it was paid."""

import asyncio

from helpers.settlement import AGGREGATORS, CREDIT, FUND, World, run_until_done

from hub.integrations.platform.chain_ops import Keys
from hub.integrations.platform.layer import Platform
from hub.integrations.settlement import wallets
from hub.integrations.settlement.backends import LiteSVMBackend
from hub.integrations.settlement.provision import SOL
from hub.integrations.settlement.transactions import ata


def test_ledger_and_settlement_payments_reconcile_with_the_chain(tmp_path):
    w = World(tmp_path)
    w.fill(windows=1, devices=4)
    keys = Keys(w.folder, make=True)  # settlement's folder: aggregator-<k>, owners/owner-<d>
    for k in AGGREGATORS:  # the address book names the aggregators' payers by public key
        keys.add("aggregator-%d" % k, wallets.read(wallets.aggregator_path(w.folder, k)).pubkey)
    w.chain.airdrop(keys.authority.pubkey, 100 * SOL)
    p = Platform(w.store, LiteSVMBackend(w.chain), keys, w.mint, {})
    run = asyncio.run
    run(p.credit.set_rate("r", 100))
    for k in AGGREGATORS:  # provision.py funded them before the ledger existed
        run(p.credit.opening("open-%d" % k, "aggregator-%d" % k, FUND * CREDIT))
    run(p.credit.purchase("buy-1", "aggregator-1", 5_000))  # 50 credits more
    assert run(p.reconcile()) == []
    run(run_until_done(w.uploader()))
    paid = sum(w.expected.values())
    assert paid > 0
    assert run(p.reconcile()) == []  # the uploader's transfers are in the store's sums
    owner = "owner-101"
    units = p.credit.balances()[str(keys.account(owner))]
    assert units == w.expected[101] > 0
    # The made-up owner's own wallet (LiteSVM's simulated owner) signs its redemption.
    own = wallets.read(w.folder / "owners" / "owner-101.json")
    out = run(p.credit.redeem("out-101", owner, units, wallet=own))
    assert out["fiat"] == units * 100 // CREDIT
    assert w.chain.token_balance(ata(keys.account(owner), w.mint)) == 0
    assert run(p.reconcile()) == []
    supply = sum(p.credit.balances().values())
    assert supply == len(AGGREGATORS) * FUND * CREDIT + 50 * CREDIT - units
    w.store.close()
