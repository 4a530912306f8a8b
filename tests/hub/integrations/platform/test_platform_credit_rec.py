"""Platform layer (hub/integrations/platform/): stable credit and renewable energy certificates on
LiteSVM running the real SPL Token, ATA and Memo programs, with a real SQLite store.
Supply and balances must reconcile exactly with the store after any sequence."""

import sqlite3
from fractions import Fraction

import pytest
from helpers.platform import BASE, World
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from solders.transaction import Transaction

from hub.integrations.platform import schema
from hub.integrations.platform.chain_ops import transfer_ixs
from hub.integrations.platform.engine import PlatformError, Replayed
from hub.integrations.settlement.transactions import ata
from hub.store import Store


@pytest.fixture
def w(tmp_path):
    world = World(tmp_path)
    yield world
    world.close()


def balance(w, name, mint):
    return w.chain.token_balance(ata(w.key(name), mint)) or 0


# --- schema ----------------------------------------------------------------------------


def test_own_version_table_and_append_only_audit(w, tmp_path):
    conn = w.store.db.conn
    assert schema.version(conn) == len(schema.MIGRATIONS)
    hub_version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    w.run(w.platform.credit.set_rate("r1", 100))
    w.run(w.platform.credit.purchase("p1", "alice", 500))
    for sql in ("UPDATE credit_moves SET units = 1", "DELETE FROM credit_moves",
                "UPDATE credit_rates SET fiat_per_credit = 1"):  # fmt: skip
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.rollback()  # the refused statements left Python's implicit transaction open
    # Opening again migrates nothing, and the hub's own version is untouched.
    store = Store(tmp_path / "hub.sqlite")
    assert schema.migrate(store.db) == len(schema.MIGRATIONS)
    version = store.db.conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    assert version == hub_version
    store.close()


# --- stable credit ---------------------------------------------------------------------


def test_purchase_and_redemption_at_the_operator_rate(w):
    c = w.platform.credit
    with pytest.raises(PlatformError, match="no credit rate"):
        w.run(c.purchase("p0", "alice", 100))
    w.run(c.set_rate("r1", 3500, "THB"))  # 35.00 THB per credit
    got = w.run(c.purchase("p1", "alice", 10_000))  # 100 THB -> 2.857142 credits
    assert got["units"] == 2_857_142 == 10_000 * 10**6 // 3500
    assert balance(w, "alice", w.mint) == 2_857_142
    out = w.run(c.redeem("d1", "alice", 1_000_000, wallet=w.signer("alice")))  # one credit back
    assert out["fiat"] == 3500
    assert balance(w, "alice", w.mint) == 1_857_142
    with pytest.raises(PlatformError, match="cannot redeem"):
        w.run(c.redeem("d2", "alice", 1_857_143, wallet=w.signer("alice")))
    assert w.run(w.platform.reconcile()) == []


def test_replayed_command_is_refused_with_its_first_result(w):
    c = w.platform.credit
    w.run(c.set_rate("r1", 100))
    first = w.run(c.purchase("p1", "alice", 700))
    for retry in (c.purchase("p1", "alice", 700), c.purchase("p1", "bob", 5)):
        with pytest.raises(Replayed, match="already applied") as err:
            w.run(retry)
        assert err.value.status == "done" and '"units": %d' % first["units"] in err.value.result
    assert balance(w, "alice", w.mint) == first["units"]  # minted once
    assert w.run(w.platform.reconcile()) == []


def test_reconcile_sees_credits_moved_behind_the_ledger(w):
    c = w.platform.credit
    w.run(c.set_rate("r1", 100))
    w.run(c.purchase("p1", "alice", 700))
    alice, bob = w.signer("alice"), w.signer("bob")
    ixs = transfer_ixs(alice.pubkey, alice.pubkey, bob.pubkey, w.mint, 5, 6)
    w.chain.airdrop(alice.pubkey, 10**9)
    tx = Transaction.new_signed_with_payer(ixs, alice.pubkey, [alice.keypair],
                                           w.chain.latest_blockhash()[0])  # fmt: skip
    assert w.chain.send(tx)[1] is None
    diffs = w.run(w.platform.reconcile())
    assert len(diffs) == 1 and "store 7000000, chain 6999995" in diffs[0]


# --- certificates ----------------------------------------------------------------------


def test_only_metered_renewable_energy_mints_and_never_twice(w):
    r = w.platform.rec
    w.contract(101, BASE, 1.0, 0.6)  # solar
    w.contract(102, BASE, 2.0, 1.5)  # wind
    w.contract(103, BASE, 5.0, 5.0)  # grid: never
    w.contract(104, BASE, 5.0, None)  # solar but not metered: never
    w.contract(101, BASE + 60, 1.0, 0.5, state="TerminatedByScada")  # metered, counts
    (first,) = w.run(r.mint("m1"))
    assert first["serials"] == [1, 2]  # 101: 1.1 kWh -> 1; 102: 1.5 -> 1
    assert w.run(r.mint("m2")) == []  # nothing new: the same energy is never counted again
    w.contract(101, BASE + 120, 1.0, 0.9)  # 0.1 carried + 0.9 -> one more
    (second,) = w.run(r.mint("m3"))
    assert second["serials"] == [3]
    devices = [c["device"] for c in r.certificates()]
    assert devices == [101, 102, 101]
    with pytest.raises(sqlite3.IntegrityError):  # a contract's energy is counted once, ever
        w.store.db.conn.execute(
            "INSERT INTO rec_energy SELECT contract, device, vintage, kwh, command "
            "FROM rec_energy LIMIT 1"
        )
    w.store.db.conn.rollback()
    assert w.run(w.platform.reconcile()) == []


def test_list_buy_retire_and_what_is_refused(w):
    p, r = w.platform, w.platform.rec
    for i in range(3):
        w.contract(101, BASE + 60 * i, 1.0, 1.0)
    w.run(r.mint("m1"))
    w.run(p.credit.set_rate("r", 100))
    w.run(p.credit.purchase("c", "carol", 100))  # 1 credit = 1,000,000 units
    with pytest.raises(PlatformError, match="not held by carol"):
        w.run(r.list("l0", "carol", [1], 10, wallet=w.signer("carol")))
    w.run(r.list("l1", "owner-101", [1, 2], 400_000, wallet=w.signer("owner-101")))
    with pytest.raises(PlatformError, match="listed: unlist it first"):
        w.run(r.retire("x0", "owner-101", [1], "no", wallet=w.signer("owner-101")))
    with pytest.raises(PlatformError, match="cost 800000"):
        w.run(r.buy("b0", "dave", [1, 2], wallet=w.signer("dave")))
    w.run(r.buy("b1", "carol", [1], wallet=w.signer("carol")))
    assert balance(w, "owner-101", w.mint) == 400_000
    assert balance(w, "carol", w.mint) == 600_000
    vintage_mint = r.mint_of(2023)
    assert balance(w, "carol", vintage_mint) == 1
    retired = w.run(r.retire("x1", "carol", [1], "scope 2 2023", wallet=w.signer("carol")))
    assert retired["memo"] == "gridbid-rec:retire:x1:2023:1:scope 2 2023"
    memos = [x.memo for x in w.chain.signatures_for_address(w.keys.account("carol"))]
    assert any("gridbid-rec:retire:x1:2023:1:scope 2 2023" in (m or "") for m in memos)
    carol = w.signer("carol")
    for attempt, message in (
        (r.retire("x2", "carol", [1], "again", wallet=carol), "certificate 1 is retired"),
        (r.list("l2", "carol", [1], 1, wallet=w.signer("carol")), "certificate 1 is retired"),
        (r.buy("b2", "dave", [1], wallet=w.signer("dave")), "certificate 1 is retired"),
        (r.retire("x1", "carol", [1], "scope 2 2023", wallet=w.signer("carol")), "already applied"),
    ):
        with pytest.raises(PlatformError, match=message):
            w.run(attempt)
    with pytest.raises(sqlite3.IntegrityError, match="retired certificate never changes"):
        w.store.db.conn.execute("UPDATE rec_state SET status = 'held' WHERE serial = 1")
    w.store.db.conn.rollback()
    w.run(r.unlist("u1", "owner-101", [2], wallet=w.signer("owner-101")))
    assert w.run(p.reconcile()) == []
    assert balance(w, "carol", vintage_mint) == 0  # burned
    assert w.chain.token_balance(ata(w.keys.authority.pubkey, vintage_mint)) == 0


# --- random sequences -------------------------------------------------------------------

ACCOUNTS = ("owner-101", "owner-102", "alice", "bob")
ACCOUNT, SERIAL = st.sampled_from(ACCOUNTS), st.integers(1, 8)
# Chosen by kind first (sampled_from is uniform; one_of favours its first branches).
KINDS = {
    "rate": st.tuples(st.integers(1, 5000)),
    "buy_credit": st.tuples(ACCOUNT, st.integers(1, 50_000)),
    "redeem": st.tuples(ACCOUNT, st.integers(1, 1_500_000)),
    "energy": st.tuples(st.sampled_from([101, 102, 103]), st.one_of(st.none(), st.floats(0, 3))),
    "mint": st.tuples(),
    "list": st.tuples(ACCOUNT, SERIAL, st.integers(1, 200_000)),
    "unlist": st.tuples(ACCOUNT, SERIAL),
    "buy_rec": st.tuples(ACCOUNT, SERIAL),
    "retire": st.tuples(ACCOUNT, SERIAL),
    "replay": st.tuples(),
}
op = st.sampled_from(sorted(KINDS)).flatmap(
    lambda kind: KINDS[kind].map(lambda args: (kind, *args))
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(op, min_size=5, max_size=40))
def test_random_sequences_reconcile_exactly(tmp_path_factory, ops):
    w = World(tmp_path_factory.mktemp("p"), kwh_per_certificate=0.5)
    p, r, c = w.platform, w.platform.rec, w.platform.credit
    w.run(c.set_rate("rate-0", 100))
    # A start with something to trade: certificates for two owners, credits for all.
    energy = {101: Fraction(2), 102: Fraction(1)}
    w.contract(101, BASE - 120, 3.0, 2.0)
    w.contract(102, BASE - 60, 3.0, 1.0)
    w.run(r.mint("seed-mint"))
    for account in ACCOUNTS:
        w.run(c.purchase("seed-" + account, account, 100))  # 1,000,000 units each
    w.run(r.list("seed-list-1", "owner-101", [1, 2], 300_000, wallet=w.signer("owner-101")))
    w.run(r.list("seed-list-2", "owner-102", [5], 900_000, wallet=w.signer("owner-102")))
    done = []
    try:
        for k, (kind, *a) in enumerate(ops):
            cmd = "c%d" % k
            try:
                if kind == "rate":
                    w.run(c.set_rate(cmd, a[0]))
                elif kind == "buy_credit":
                    w.run(c.purchase(cmd, a[0], a[1]))
                elif kind == "redeem":
                    w.run(c.redeem(cmd, a[0], a[1], wallet=w.signer(a[0])))
                elif kind == "energy":
                    w.contract(a[0], BASE + 60 * k, 3.0, a[1])
                    if a[0] in energy and a[1] is not None:
                        energy[a[0]] += Fraction(repr(a[1]))
                    continue
                elif kind == "mint":
                    w.run(r.mint(cmd))
                elif kind == "list":
                    w.run(r.list(cmd, a[0], [a[1]], a[2], wallet=w.signer(a[0])))
                elif kind == "unlist":
                    w.run(r.unlist(cmd, a[0], [a[1]], wallet=w.signer(a[0])))
                elif kind == "buy_rec":
                    w.run(r.buy(cmd, a[0], [a[1]], wallet=w.signer(a[0])))
                elif kind == "retire":
                    w.run(r.retire(cmd, a[0], [a[1]], "t", wallet=w.signer(a[0])))
                elif kind == "replay":
                    if done:  # the last applied command, again (other arguments even)
                        with pytest.raises(Replayed):
                            w.run(c.purchase(done[-1], "alice", 1))
                    continue
                event("applied: " + kind)  # --hypothesis-show-statistics: what ran
                if kind != "mint":  # a mint's id names its sub-commands only
                    done.append(cmd)
            except Replayed:
                raise
            except PlatformError:
                pass  # refused: nothing may have changed, which reconcile checks
            assert w.run(p.reconcile()) == []
        w.run(r.mint("final"))
        assert w.run(p.reconcile()) == []
        # Independently of the store's sums: floor(metered renewable kWh / 0.5) each.
        minted = {}
        for cert in r.certificates():
            minted[cert["device"]] = minted.get(cert["device"], 0) + 1
        for device, kwh in energy.items():
            assert minted.get(device, 0) == int(kwh / Fraction(1, 2))
        assert 103 not in minted  # grid
        credit_total = w.store.db.conn.execute("SELECT sum(units) FROM credit_moves")
        supply = sum(balance(w, a, w.mint) for a in ACCOUNTS)
        assert supply == (credit_total.fetchone()[0] or 0)
    finally:
        w.close()


def test_the_platform_s_own_keys_are_not_accounts(w):
    w.run(w.platform.credit.set_rate("r", 100))
    for name in ("mint-authority", "platform-authority", "nrg-stake", "rec-2023"):
        with pytest.raises(PlatformError, match="platform's own keys"):
            w.run(w.platform.credit.purchase("p-" + name, name, 100))
    with pytest.raises(PlatformError, match="not an account name"):
        w.run(w.platform.credit.purchase("p-x", "../etc/passwd", 100))
    assert w.platform.engine.command("p-x") is None  # refused: nothing recorded
