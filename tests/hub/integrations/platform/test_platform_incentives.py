"""Incentives (hub/integrations/platform/incentives.py): the three documented rules computed from a
real store, recomputed here by hand with fractions, capped, budgeted, and paid once in
NRG on LiteSVM."""

import pytest
from helpers.platform import EPOCH, EPOCH_S, RULES, World, expected, fill

from hub.integrations.platform.engine import PlatformError
from hub.integrations.settlement.transactions import ata


def world(tmp_path, **rules):
    w = World(tmp_path)
    w.platform.incentives.rules.update(RULES, **rules)
    return w


def test_rules_match_the_documented_formulas(tmp_path):
    w = world(tmp_path)
    fill(w)
    conn = w.store.db.conn
    got = {(a, rule): n for a, rule, _kwh, n in w.platform.incentives.compute(conn, EPOCH)}
    assert got == expected()
    assert expected()[("owner-101", "conservation")] == 30
    w.close()


def test_budget_scales_every_reward_down(tmp_path):
    w = world(tmp_path, budget=30)
    fill(w)
    rows = w.platform.incentives.compute(w.store.db.conn, EPOCH)
    total = sum(expected().values())  # 60
    assert {(a, r): n for a, r, _k, n in rows} == {
        k: v * 30 // total for k, v in expected().items() if v * 30 // total > 0
    }
    assert sum(n for *_x, n in rows) <= 30
    w.close()


def test_rewards_are_paid_once_in_nrg(tmp_path):
    w = world(tmp_path)
    fill(w)
    p = w.platform
    w.run(p.gov.genesis())
    w.now = EPOCH + 100
    with pytest.raises(PlatformError, match="not ended"):
        w.run(p.incentives.pay(EPOCH))
    w.now = EPOCH + EPOCH_S
    out = w.run(p.incentives.pay(EPOCH))
    assert out["rewards"] == 5 and len(out["paid"]) == 1
    again = w.run(p.incentives.pay(EPOCH + 5))  # the same epoch: nothing more
    assert again["paid"] == []
    per_account = {}
    for (account, _rule), n in expected().items():
        per_account[account] = per_account.get(account, 0) + n
    for account, n in per_account.items():
        assert w.chain.token_balance(ata(w.keys.account(account), p.gov.mint)) == n
    assert all(r["paid_by"] == "reward-%d.0" % EPOCH for r in p.incentives.rewards(EPOCH))
    treasury = w.chain.token_balance(ata(w.keys.authority.pubkey, p.gov.mint))
    assert treasury == 1_000_000 - sum(per_account.values())
    assert w.run(p.reconcile()) == []
    w.close()
