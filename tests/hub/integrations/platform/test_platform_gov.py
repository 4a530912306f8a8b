"""Governance (hub/integrations/platform/gov.py) on LiteSVM: NRG's fixed supply, stakes with a
lock-up, votes by stake, and a passed proposal reaching the hub's controls at its time."""

import sqlite3

import pytest
from helpers.platform import World
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from solders.transaction import Transaction

from hub.integrations.platform.chain_ops import mint_info, mint_to_ixs
from hub.integrations.platform.engine import PlatformError, Replayed
from hub.integrations.settlement.transactions import ata


@pytest.fixture
def w(tmp_path):
    world = World(tmp_path)
    world.run(world.platform.gov.genesis())
    yield world
    world.close()


def nrg(w, name):
    g = w.platform.gov
    return w.chain.token_balance(ata(w.key(name), g.mint)) or 0


def test_supply_is_fixed_on_chain(w):
    g = w.platform.gov
    supply, decimals, authority = mint_info(w.chain.account_data(g.mint))
    assert (supply, decimals, authority) == (1_000_000, 0, None)
    # Nobody can mint more, not even the former authority: the SPL program refuses.
    a = w.keys.authority
    ixs = mint_to_ixs(a.pubkey, g.mint, a.pubkey, a.pubkey, 1, 0)
    tx = Transaction.new_signed_with_payer(ixs, a.pubkey, [a.keypair],
                                           w.chain.latest_blockhash()[0])  # fmt: skip
    assert w.chain.send(tx)[1] is not None
    with pytest.raises(Replayed):
        w.run(g.genesis())
    assert w.run(w.platform.reconcile()) == []


def test_stake_lock_up_and_refused_votes(w):
    g = w.platform.gov
    w.run(g.grant("g1", "alice", 500))
    w.run(g.grant("g2", "bob", 300))
    w.run(g.grant("g3", "carol", 50))
    with pytest.raises(PlatformError, match="cannot stake 501"):
        w.run(g.stake("s0", "alice", 501, 100, wallet=w.signer("alice")))
    w.run(g.stake("s1", "alice", 400, 3600, wallet=w.signer("alice")))
    w.run(g.stake("s2", "bob", 300, 3600, wallet=w.signer("bob")))
    # unlocked before the vote ends: no weight
    w.run(g.stake("s3", "carol", 50, 10, wallet=w.signer("carol")))
    assert (nrg(w, "alice"), nrg(w, "nrg-stake")) == (100, 750)
    with pytest.raises(PlatformError, match="locked until"):
        w.run(g.unstake("u0", "alice", "s1", wallet=w.signer("alice")))
    with pytest.raises(PlatformError, match="dave has no stake"):
        w.run(g.propose("p0", "dave", "p_con", 5.0, 600, 900, wallet=w.signer("dave")))
    with pytest.raises(PlatformError, match="may change"):
        w.run(g.propose("p0", "alice", "owner", 1, 600, 900, wallet=w.signer("alice")))
    with pytest.raises(PlatformError, match="slot_s must be a int in 60..3600"):
        w.run(g.propose("p0", "alice", "slot_s", 10, 600, 900, wallet=w.signer("alice")))
    w.run(g.propose("p1", "alice", "p_con", 5.0, 600, 900, wallet=w.signer("alice")))
    with pytest.raises(PlatformError, match="dave has no stake locked"):
        w.run(g.vote("v0", "dave", "p1", True, wallet=w.signer("dave")))  # no stake at all
    with pytest.raises(PlatformError, match="carol has no stake locked"):
        w.run(g.vote("v0", "carol", "p1", True, wallet=w.signer("carol")))  # unlocks before
    w.run(g.vote("v1", "alice", "p1", True, wallet=w.signer("alice")))
    with pytest.raises(PlatformError, match="already voted"):
        w.run(g.vote("v2", "alice", "p1", False, wallet=w.signer("alice")))
    with pytest.raises(Replayed):
        w.run(g.vote("v1", "alice", "p1", True, wallet=w.signer("alice")))
    w.run(g.vote("v3", "bob", "p1", False, wallet=w.signer("bob")))
    w.now += 600
    with pytest.raises(PlatformError, match="closed"):
        w.run(g.vote("v4", "bob", "p1", False, wallet=w.signer("bob")))
    assert g.tick() == []  # decided, not effective yet
    (row,) = g.proposals()
    assert (row["status"], row["yes"], row["no"]) == ("passed", 400, 300)
    assert "market.p_con" not in w.store.controls()
    w.now += 300
    assert g.tick() == [{"proposal": "p1", "param": "p_con", "value": 5.0}]
    assert w.store.controls()["market.p_con"] == 5.0
    assert g.tick() == []  # executed once
    history = w.store.db.conn.execute("SELECT by FROM controls WHERE name = 'market.p_con'")
    assert [r[0] for r in history] == ["governance:p1"]
    memos = [x.memo or "" for x in w.chain.signatures_for_address(w.keys.account("alice"))]
    assert any("gridbid-gov:vote:v1:p1:yes:400" in m for m in memos)
    w.now += 3600
    w.run(g.unstake("u1", "alice", "s1", wallet=w.signer("alice")))
    with pytest.raises(PlatformError, match="already withdrawn"):
        w.run(g.unstake("u2", "alice", "s1", wallet=w.signer("alice")))
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        w.store.db.conn.execute("UPDATE gov_votes SET weight = 1")
    w.store.db.conn.rollback()
    assert nrg(w, "alice") == 500
    assert w.run(w.platform.reconcile()) == []


def test_a_proposal_below_quorum_or_outvoted_is_rejected(w):
    g = w.platform.gov
    w.run(g.grant("g1", "alice", 5))
    w.run(g.stake("s1", "alice", 5, 3600, wallet=w.signer("alice")))
    w.run(g.propose("p1", "alice", "k", 2.0, 60, 60, wallet=w.signer("alice")))
    w.run(g.vote("v1", "alice", "p1", True, wallet=w.signer("alice")))  # 5 < quorum 10
    w.now += 60
    assert g.tick() == []
    assert g.proposals()[0]["status"] == "rejected"
    assert "market.k" not in w.store.controls()


ACCOUNTS = ("alice", "bob", "carol")
WHO = st.sampled_from(ACCOUNTS)
KINDS = {  # chosen by kind first: sampled_from is uniform, one_of favours its first
    "grant": st.tuples(WHO, st.integers(1, 400_000)),
    "stake": st.tuples(WHO, st.integers(1, 60_000), st.integers(0, 2000)),
    "unstake": st.tuples(WHO, st.integers(0, 30)),
    "propose": st.tuples(WHO, st.floats(0, 100)),
    "vote": st.tuples(WHO, st.integers(0, 30), st.booleans()),
    "time": st.tuples(st.integers(1, 1500)),
}
gov_op = st.sampled_from(sorted(KINDS)).flatmap(lambda k: KINDS[k].map(lambda a: (k, *a)))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(gov_op, min_size=5, max_size=30))
def test_random_governance_reconciles(tmp_path_factory, ops):
    w = World(tmp_path_factory.mktemp("g"))
    g = w.platform.gov
    try:
        w.run(g.genesis())
        for account in ACCOUNTS:
            w.run(g.grant("seed-" + account, account, 100_000))
            w.run(g.stake("seed-stake-" + account, account, 1_000, 10**6, wallet=w.signer(account)))
        w.run(g.propose("seed-proposal", "alice", "k", 2.5, 3000, 3000, wallet=w.signer("alice")))
        proposals, stakes = ["seed-proposal"], ["seed-stake-alice"]
        for k, (kind, *a) in enumerate(ops):
            cmd = "c%d" % k
            try:
                if kind == "grant":
                    w.run(g.grant(cmd, a[0], a[1]))
                elif kind == "stake":
                    w.run(g.stake(cmd, a[0], a[1], a[2], wallet=w.signer(a[0])))
                    stakes.append(cmd)
                elif kind == "unstake":
                    stake = stakes[a[1] % len(stakes)] if stakes else "-"
                    w.run(g.unstake(cmd, a[0], stake, wallet=w.signer(a[0])))
                elif kind == "propose":
                    w.run(g.propose(cmd, a[0], "p_con", a[1], 500, 700, wallet=w.signer(a[0])))
                    proposals.append(cmd)
                elif kind == "vote":
                    pick = proposals[a[1] % len(proposals)] if proposals else "-"
                    w.run(g.vote(cmd, a[0], pick, a[2], wallet=w.signer(a[0])))
                else:
                    w.now += a[0]
                    g.tick()
                event("applied: " + kind)
            except PlatformError:
                pass
            assert w.run(w.platform.reconcile()) == []
        staked = w.store.db.conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM gov_stakes WHERE released_by IS NULL"
        ).fetchone()[0]
        assert nrg(w, "nrg-stake") == staked
        total = sum(nrg(w, a) for a in ACCOUNTS + ("nrg-stake", "platform-authority"))
        assert total == 1_000_000  # nothing created or lost
    finally:
        w.close()
