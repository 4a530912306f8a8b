"""Incentives (hub/platform/incentives.py): the three documented rules computed from a
real store, recomputed here by hand with fractions, capped, budgeted, and paid once in
NRG on LiteSVM."""

from fractions import Fraction

import pytest
from helpers.platform import BASE, World

from hub.platform import PlatformError
from hub.settlement.transactions import ata

EPOCH_S = 3600
EPOCH = BASE // EPOCH_S * EPOCH_S  # BASE is inside it, 15 minutes after its start
RULES = {
    "epoch_s": EPOCH_S,
    "conservation": {"rate": 30.0, "cap": 50},
    "demand_response": {"rate": 10.0, "cap": 15},
    "liquidity": {"rate": 4.0, "cap": 100},
    "budget": 1000,
    "baseline_epochs": 2,
}


def world(tmp_path, **rules):
    w = World(tmp_path)
    w.platform.incentives.rules.update(RULES, **rules)
    return w


def fill(w):
    s = w.store
    # conservation: 101 charged at 2 kW the epoch before, 1 kW in this one (a reading a
    # minute: 59 intervals of 60 s covered in each, 98 %)
    s.add_device(101, 101, "127.0.0.1:1")
    for start, kw in ((EPOCH - EPOCH_S, -2.0), (EPOCH, -1.0)):
        for j in range(60):
            s.record_telemetry(101, power_kw=kw, at=start + 60 * j)
    # 104 has readings for half of this epoch only: a gap is no saving
    s.add_device(104, 104, "127.0.0.1:1")
    for j in range(60):
        s.record_telemetry(104, power_kw=-2.0, at=EPOCH - EPOCH_S + 60 * j)
    for j in range(30):
        s.record_telemetry(104, power_kw=0.0, at=EPOCH + 60 * j)
    # demand response: a high-signal slot (20 c > p_balance 15) and a low one (10 c)
    high = w.contract(102, BASE, 1.0, 0.8)
    w.contract(103, BASE, 2.0, 3.0)  # more than promised: the promise counts (2 kWh)
    low = w.contract(102, BASE + 60, 1.0, 1.0)
    s.record_price_signal(20.0, 10, 5, slot=s.contract(high)["slot"], at=BASE - 30)
    s.record_price_signal(10.0, 5, 10, slot=s.contract(low)["slot"], at=BASE + 30)
    # liquidity in a slot cleared at 16 c: what rested in the book within 20 %
    slot = s.contract(w.contract(101, BASE + 600, 0.1, None))["slot"]
    s.record_bid(slot, 0, "bid", 1, 16.0, 2.0)  # aggregator 1: 1.5 rests
    s.record_bid(slot, 1, "ask", 101, 30.0, 1.0)  # far above: earns nothing
    s.record_bid(slot, 2, "ask", 102, 14.0, 1.0)  # 0.5 rests, within the band
    s.record_trades("clr-1", slot, [(0, 1, "bid", 0.5), (2, 102, "ask", 0.5)], 16.0)


def expected():
    covered = Fraction(59 * 60, 3600)  # hours observed
    saved = 2 * covered - 1 * covered
    return {
        ("owner-101", "conservation"): int(30 * saved),  # 29
        ("owner-102", "demand_response"): int(10 * Fraction(8, 10)),  # 8
        ("owner-103", "demand_response"): 15,  # 10 x 2 = 20, capped at 15
        ("aggregator-1", "liquidity"): int(4 * Fraction(3, 2)),  # 6
        ("owner-102", "liquidity"): int(4 * Fraction(1, 2)),  # 2
    }


def test_rules_match_the_documented_formulas(tmp_path):
    w = world(tmp_path)
    fill(w)
    conn = w.store.db.conn
    got = {(a, rule): n for a, rule, _kwh, n in w.platform.incentives.compute(conn, EPOCH)}
    assert got == expected()
    assert expected()[("owner-101", "conservation")] == 29
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
        assert w.chain.token_balance(ata(w.keys.pubkey(account), p.gov.mint)) == n
    assert all(r["paid_by"] == "reward-%d.0" % EPOCH for r in p.incentives.rewards(EPOCH))
    treasury = w.chain.token_balance(ata(w.keys.authority.pubkey, p.gov.mint))
    assert treasury == 1_000_000 - sum(per_account.values())
    assert w.run(p.reconcile()) == []
    w.close()
