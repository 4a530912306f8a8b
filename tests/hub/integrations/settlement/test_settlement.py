"""Settlement (hub/integrations/settlement/): the payment rule, canonical records and memos,
wallets,
settings, and settling on LiteSVM (the real SPL Token, ATA and Memo programs): balances
after settlement equal what the contracts owe, to the base unit. Faults are in
test_settlement_faults.py, the RPC backend in test_settlement_rpc.py."""

import asyncio
import hashlib
import json
import os
from fractions import Fraction

import pytest
from helpers.logs import into
from helpers.settlement import (
    BASE,
    BATCH_S,
    FUND,
    SLOT_S,
    FakeExchange,
    World,
    run_until_done,
    sync,
)
from solders.keypair import Keypair

from hub.config import hub_toml
from hub.events import Events
from hub.integrations.settlement import DEFAULTS, check, journal, records, start, wallets
from hub.integrations.settlement import schema as settlement_schema
from hub.integrations.settlement.service import Settlement
from hub.integrations.settlement.transactions import PACKET_BYTES, part_tx
from hub.store import Store

# --- the rule ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state, delivered, paid",
    [
        ("CompletedSuccess", None, 2.0),  # unmetered success: the promise
        ("CompletedSuccess", 1.5, 1.5),  # metered: what the meter counted
        ("CompletedSuccess", 2.5, 2.0),  # never more than the promise
        ("CompletedFailureByScada", 0.7, 0.7),
        ("CompletedFailureByScada", None, 0.0),
        ("CompletedFailureByAtn", 1.2, 1.2),
        ("TerminatedByScada", 0.3, 0.3),
        ("TerminatedByAtn", None, 0.0),
        ("CompletedUnknownOutcome", None, 0.0),
        ("CompletedUnknownOutcome", 0.9, 0.9),
    ],
)
def test_paid_kwh_follows_the_rule(state, delivered, paid):
    assert records.paid_kwh(state, 2.0, delivered) == paid


def test_live_contracts_are_not_settled():
    for state in ("Created", "Received", "Confirmed", "Active"):
        with pytest.raises(ValueError, match="not settled yet"):
            records.paid_kwh(state, 1.0, None)


def test_paid_energy_is_what_reputation_counts_as_delivered(tmp_path):
    """One rule for pay and reputation: for the states reputation counts (the device's
    doing), the store's device_reputation view (V2) credits each battery with exactly the
    kWh settlement pays it (deliveries within the promise)."""
    w = World(tmp_path)
    cases = [
        (101, "CompletedSuccess", None), (101, "CompletedFailureByScada", 0.2),
        (101, "CompletedUnknownOutcome", None), (102, "TerminatedByScada", 0.35),
        (102, "CompletedSuccess", 0.45), (102, "CompletedFailureByScada", None),
        (103, "CompletedUnknownOutcome", 0.1), (103, "CompletedSuccess", None),
    ]  # fmt: skip
    for i, (device, state, delivered) in enumerate(cases):
        w.add(device, 1 + i % 3, BASE + i * SLOT_S, 0.5, 16.0, state, delivered)
    paid = {}
    for row in w.store.contracts(limit=1000):
        kwh = records.paid_kwh(row["state"], records.promised_kwh(row), row["delivered_kwh"])
        paid[row["device"]] = paid.get(row["device"], 0.0) + kwh
    reputation = {d["id"]: d["delivered_kwh"] for d in w.store.devices()}
    assert paid == pytest.approx(reputation, abs=1e-9)
    assert paid[101] == pytest.approx(0.7) and paid[103] == pytest.approx(0.6)


def test_amounts_are_exact_decimals_rounded_half_up():
    assert records.amount(17.25, 0.4321, 10_000) == 74_537  # 74,537.25
    assert records.amount(12.5, 0.0001, 10_000) == 13  # 12.5 -> 13 (half up)
    # 0.145 c x 100 is 14.4999... in binary floats, which would round down to 14.
    assert round(0.145 * 1.0 * 100) == 14
    assert records.amount(0.145, 1.0, 100) == 15
    assert records.units_per_cent(6, 100) == 10_000
    with pytest.raises(ValueError):
        records.units_per_cent(1, 100)


# --- records, batches, memos -------------------------------------------------------


def make_records(n, payers=("P1", "P2"), owners=12):
    return [
        {"contract": "c%04d" % i, "buyer": i % len(payers), "device": 100 + i % owners,
         "kwh": 0.5, "price": 16.0, "amount": 80_000 + i,
         "payer": payers[i % len(payers)], "owner": "O%02d" % (i % owners)}
        for i in range(n)
    ]  # fmt: skip


def test_canonical_records_do_not_depend_on_order():
    recs = make_records(30)
    lines, digest = records.canonical(recs)
    assert records.canonical(list(reversed(recs))) == (lines, digest)
    assert digest == hashlib.sha256(lines).hexdigest()
    first = lines.split(b"\n")[0]
    assert first == json.dumps(recs[0], sort_keys=True, separators=(",", ":")).encode()
    changed = [dict(r) for r in recs]
    changed[7]["amount"] += 1
    assert records.canonical(changed)[1] != digest


def test_parts_sum_per_owner_and_fit_a_packet():
    recs = make_records(60, owners=20)
    parts = records.parts(recs)
    assert [p.number for p in parts] == list(range(1, len(parts) + 1))
    assert all(len(p.payments) <= records.PER_TX for p in parts)
    assert all(len({p.payer}) == 1 for p in parts)
    paid = {}
    for p in parts:
        for owner, value in p.payments:
            paid[p.payer, owner] = paid.get((p.payer, owner), 0) + value
    owed = {}
    for r in recs:
        owed[r["payer"], r["owner"]] = owed.get((r["payer"], r["owner"]), 0) + r["amount"]
    assert paid == owed
    # A full part with a long hub name still fits the 1,232 bytes of a packet.
    from hub.integrations.settlement.wallets import Wallet

    wallet, mint = Wallet(Keypair()), Keypair().pubkey()
    owners = [(Keypair().pubkey(), 10**9) for _ in range(records.PER_TX)]
    batch = records.make_batch("a-rather-long-hub-name.example", 1_700_000_000, 12, recs)
    text = records.memo(batch, batch.parts[0])
    from solders.hash import Hash

    tx = part_tx(wallet, mint, 6, owners, text, Hash.new_unique())
    assert len(bytes(tx)) <= PACKET_BYTES


def test_memo_round_trip_and_rpc_rendering():
    batch = records.make_batch("hub1", 1_700_000_100, 0, make_records(20, owners=20))
    text = records.memo(batch, batch.parts[1])
    assert text == "gridbid:hub1.1700000100.0:%s:2/%d" % (batch.digest, len(batch.parts))
    parsed = ("hub1.1700000100.0", batch.digest, 2, len(batch.parts))
    assert records.parse_memo(text) == parsed
    assert records.parse_memo("[%d] %s" % (len(text), text)) == parsed  # getSignaturesForAddress
    assert records.parse_memo("[5] hello") is None
    assert records.parse_memo(None) is None


# --- wallets -----------------------------------------------------------------------


def test_wallet_files_must_be_private_and_never_show_their_secret(tmp_path):
    path = tmp_path / "aggregator-1.json"
    wallet = wallets.create(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert wallets.read(path).pubkey == wallet.pubkey
    secret = str(wallet.keypair)  # solders prints the whole keypair, secret included
    assert secret not in repr(wallet) and secret not in str(wallet)
    assert str(wallet.pubkey) in repr(wallet)
    os.chmod(path, 0o644)
    with pytest.raises(wallets.WalletError, match="readable by others: chmod 600"):
        wallets.read(path)
    with pytest.raises(FileExistsError):  # an existing wallet is never replaced
        wallets.create(path)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2, 3]")
    os.chmod(bad, 0o600)
    with pytest.raises(wallets.WalletError, match="not a solana-keygen keypair"):
        wallets.read(bad)
    with pytest.raises(wallets.WalletError, match="no wallet file"):
        wallets.payers(tmp_path, [7])


# --- settings ----------------------------------------------------------------------


def test_settings_are_checked_and_paths_resolved(tmp_path):
    s = check(dict(DEFAULTS), tmp_path, "hub.toml: [settlement]")
    assert s["wallets"] == str(tmp_path / "wallets") and s["backend"] == "litesvm"
    key = str(Keypair().pubkey())
    rpc = check({**DEFAULTS, "backend": "http://127.0.0.1:8899", "mint": key,
                 "owners": {"7": key}, "owners_file": "o.json"}, tmp_path, "w")  # fmt: skip
    assert rpc["owners"] == {"7": key} and rpc["owners_file"] == str(tmp_path / "o.json")
    bad = [
        ({"backend": "ftp://x"}, "backend must be"),
        ({"backend": "https://api.devnet.solana.com"}, "needs the mint"),
        ({"mint": key}, "makes its own mint"),
        ({"owners": {"x": key}}, "not a device id"),
        ({"owners": {"7": "nope"}}, "not a base58 public key"),
        ({"decimals": 1}, "decimals/cents_per_credit"),
        ({"batch_s": 0}, "batch_s must be"),
        ({"poll_s": 0}, "poll_s must be a finite number 0.01..3600"),
        ({"durable_nonce": "yes"}, "durable_nonce"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            check({**DEFAULTS, **change}, tmp_path, "w")
    with pytest.raises(hub_toml.ConfigError, match=r"\[settlement\] has unknown settings"):
        hub_toml.check({"aggregator": [{"key_id": 1}], "settlement": {"walets": "x"}},
                         keys=False)  # fmt: skip
    cfg = hub_toml.check({"aggregator": [{"key_id": 1}], "settlement": {"batch_s": 60}},
                           base=tmp_path, keys=False)  # fmt: skip
    assert cfg["integrations"]["settlement"]["batch_s"] == 60


# --- settling on LiteSVM -----------------------------------------------------------


@sync
async def test_balances_after_settlement_equal_the_trades_exactly(tmp_path):
    w = World(tmp_path)
    w.fill(windows=3, devices=12, seed=1)
    live = w.add(101, 1, BASE + 3 * BATCH_S, 0.5, 15.0, state="Active")  # its window waits
    up = w.uploader()
    await run_until_done(up)
    w.assert_settled_exactly_once()
    assert w.store.db.execute(
        "SELECT count(*) FROM settlement_items WHERE contract = ?", (live,)
    ).fetchone() == (0,)
    # The journal holds what the chain holds: each batch's canonical records hash to the
    # memo's hash, and give the paid amounts again.
    for row in journal.batches(w.store):
        full = journal.batch(w.store, row["id"])
        assert hashlib.sha256(full["records"].encode()).hexdigest() == full["hash"]
        lines = [json.loads(x) for x in full["records"].splitlines()]
        assert sum(r["amount"] for r in lines) == full["amount"]
        assert sorted(r["contract"] for r in lines) == sorted(full["trade_ids"])
    assert {e["status"] for e in w.events} >= {"planned", "sent", "finalized"}
    done = [e for e in w.events if e["status"] == "finalized"]
    assert sum(len(e["trades"]) for e in done) == len(w.contracts)
    assert all(e["signature"] for e in done if e["parts"])
    # Once the live contract ends, its window is batched and paid too.
    w.store.advance_contract(live, "CompletedSuccess", "device", delivered_kwh=0.25)
    w.contracts.append(live)
    w.expected[101] += records.amount(15.0, 0.25, 10_000)
    await run_until_done(up)
    w.assert_settled_exactly_once()


@sync
async def test_a_window_waits_until_it_has_ended(tmp_path):
    w = World(tmp_path)
    w.add(101, 1, BASE, 0.5, 16.0, delivered=0.5)
    up = w.uploader(clock=lambda: BASE + BATCH_S - 1)  # the window's last second
    assert (await up.cycle())["planned"] == 0
    up.clock = lambda: BASE + BATCH_S
    assert (await up.cycle())["planned"] == 1
    assert w.balances()[101] == 80_000


@sync
async def test_a_battery_with_no_owner_holds_its_window_until_it_has_one(tmp_path):
    w = World(tmp_path, owners_make=False)
    w.add(101, 1, BASE, 0.5, 16.0, delivered=0.5)
    w.add(102, 2, BASE, 0.5, 16.0, delivered=0.5)
    w.owners.known[101] = Keypair().pubkey()
    up = w.uploader()
    result = await up.cycle()
    assert result["planned"] == 0
    blocked = [e for e in w.events if e["status"] == "blocked"]
    assert len(blocked) == 1 and "battery 102 has no owner key" in blocked[0]["error"]
    await up.cycle()
    assert len([e for e in w.events if e["status"] == "blocked"]) == 1  # said once
    w.owners.known[102] = Keypair().pubkey()
    await run_until_done(up)
    w.assert_settled_exactly_once()


@sync
async def test_nothing_delivered_closes_the_batch_without_a_transaction(tmp_path):
    w = World(tmp_path)
    w.add(101, 1, BASE, 0.5, 16.0, state="TerminatedByAtn")
    w.add(102, 1, BASE, 0.5, 16.0, state="CompletedUnknownOutcome")
    await run_until_done(w.uploader())
    (row,) = journal.batches(w.store)
    assert row["status"] == "finalized" and row["parts"] == 0 and row["amount"] == 0
    assert not w.landed_parts()


@sync
async def test_large_windows_are_split_and_every_part_lands_once(tmp_path):
    w = World(tmp_path)
    for i in range(60):  # 60 batteries in one slot: 2 batches of 40 and 20, 3 payers
        w.add(200 + i, 1 + i % 3, BASE, 0.1 + i / 100, 18.5, delivered=None)
    await run_until_done(w.uploader(max_batch=40))
    w.assert_settled_exactly_once()
    ids = [r["id"] for r in journal.batches(w.store)]
    assert sorted(ids) == ["hub.%d.0" % BASE, "hub.%d.1" % BASE]


# --- in the hub --------------------------------------------------------------------


class FakeHub:
    """What an integration sees of hub.service.Hub: cfg, store, events, log."""

    def __init__(self, store, names=(1, 2, 3)):
        self.cfg = {"name": "hub", "aggregators": [{"key_id": k, "name": "agg%d" % k}
                                                   for k in names]}  # fmt: skip
        self.store = store
        self.exchange = FakeExchange()
        self.lines = []
        self.events = Events()
        into(self.lines)
        self.log = self.lines.append

    def aggregators(self):
        return {a["key_id"]: a["name"] for a in self.cfg["aggregators"]}


@sync
async def test_the_integration_settles_in_the_background_and_after_a_restart(tmp_path):
    w = World(tmp_path)
    hub = FakeHub(w.store)
    got = []
    hub.events.subscribe(lambda e: got.append(e) if e["kind"] == "settlement" else None)
    settings = check({**DEFAULTS, "batch_s": BATCH_S, "poll_s": 0.05}, tmp_path, "w")
    await w.fund_margin(w.margin())  # the aggregators' deposits (before, as in the market)
    first = Settlement(hub, settings, chain=w.chain)
    await first.open()
    assert hub.exchange.margin is first.margin  # the market checks bids against it
    w.add(101, 1, BASE, 0.5, 16.0, delivered=0.5)
    w.add(102, 2, BASE + SLOT_S, 1.0, 20.0)
    for _ in range(100):  # the background task settles on its own, every poll_s
        if first.status()["batches"] == {"finalized": 1}:
            break
        await asyncio.sleep(0.05)
    status = first.status()
    assert status["contracts"] == 2 and status["batches"] == {"finalized": 1}
    final = [e for e in got if e["status"] == "finalized"]
    assert len(final) == 1 and sorted(final[0]["trades"]) == sorted(w.contracts), (got, hub.lines)
    assert final[0]["batch"] == "hub.%d.0" % BASE and final[0]["signature"]
    balances = await first.balances()
    assert balances["owners"] == {101: 0.08, 102: 0.2}
    agg1 = balances["aggregators"]["agg1"]  # its margin account, in credits
    assert (agg1["deposited"], agg1["owed"]) == (1000, 0)
    assert agg1["paid"] == pytest.approx(0.08) and agg1["free"] == pytest.approx(1000 - 0.08)
    assert balances["clearing"] == pytest.approx(3000 - 0.28)
    await first.close()
    # While the hub is down a window completes; the next start finds it in the store.
    w.add(103, 3, BASE + BATCH_S, 0.5, 16.0, delivered=0.25)
    second = Settlement(hub, settings, chain=w.chain)
    await second.open()
    status = await second.flush(timeout_s=10)
    await second.close()
    assert status["contracts"] == 3 and status["batches"] == {"finalized": 2}
    w.assert_settled_exactly_once()
    assert not any("round failed" in line for line in hub.lines)


@sync
async def test_keys_are_refused_unless_private_and_never_logged_stored_or_published(tmp_path):
    w = World(tmp_path)
    hub = FakeHub(w.store)
    got = []
    hub.events.subscribe(lambda e: got.append(e))
    settings = check({**DEFAULTS, "batch_s": BATCH_S, "poll_s": 0.05}, tmp_path, "w")
    clearing = wallets.clearing_path(w.folder)
    wallets.create(clearing)
    os.chmod(clearing, 0o644)
    with pytest.raises(wallets.WalletError, match="clearing.json is readable by others"):
        await start(hub, settings)
    os.chmod(clearing, 0o600)
    settlement = await start(hub, settings)  # the hub's entry point (a chain of its own)
    assert isinstance(settlement, Settlement)
    await settlement.round()  # its start-up hold: a blockhash taken now stays valid
    for key_id, wallet in w.payers.items():  # the aggregators' wallets: from its faucet
        assert await settlement.margin.faucet(key_id, wallet.pubkey) == FUND * 10**6
        assert await settlement.margin.faucet(key_id, wallet.pubkey) == 0  # once
    w.chain = settlement.chain
    await w.fund_margin(settlement.margin)
    await settlement.close()
    for i in range(6):
        w.add(101 + i, 1 + i % 3, BASE, 0.5, 16.0, delivered=0.4)
    # Restarted: its chain rebuilt (the faucet's wallets funded again, the deposits
    # replayed), the margin is there to pay from.
    settlement = await start(hub, settings)
    assert settlement.margin.account(1)["deposited"] == 1000 * 10**6
    status = await settlement.flush(timeout_s=10)
    await settlement.close()
    assert status["contracts"] == 6 and status["batches"] == {"finalized": 1}
    keyfiles = sorted(w.folder.rglob("*.json"))
    secrets = [wallets.read(f).keypair for f in keyfiles if f.name != "owners.json"]
    assert len(secrets) >= 3 + 2 + 6  # aggregators, mint and its authority, owners
    shown = "\n".join(hub.lines) + json.dumps(got, default=str)
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("hub.sqlite*"))
    for keypair in secrets:
        assert str(keypair) not in shown and bytes(keypair)[:32].hex() not in shown
        assert bytes(keypair)[:32] not in stored  # the secret half, raw
    assert any("settlement: LiteSVM" in line for line in hub.lines)


@sync
async def test_an_unreachable_chain_is_logged_once_and_retried(tmp_path):
    w = World(tmp_path)
    hub = FakeHub(w.store)
    key = str(Keypair().pubkey())
    wallets.create(wallets.clearing_path(w.folder))  # on a cluster the operator makes it
    settings = check({**DEFAULTS, "backend": "http://127.0.0.1:9", "mint": key,
                      "wallets": str(w.folder), "poll_s": 0.05, "timeout_s": 0.5},
                     tmp_path, "w")  # fmt: skip
    s = Settlement(hub, settings)
    await s.open()
    await asyncio.sleep(0.4)
    await s.close()
    failures = [line for line in hub.lines if "chain unreachable" in line]
    assert len(failures) == 1, hub.lines


def test_amount_in_credits_matches_the_independent_fraction():
    # 0.3 kWh at 13.37 c/kWh = 4.011 c = 40,110 base units.
    assert records.amount(13.37, 0.3, 10_000) == int(Fraction("13.37") * Fraction("0.3") * 10_000)


def test_the_settlement_schema_adopts_a_store_made_before_it_was_its_own(tmp_path):
    """Hub schema v1 made a bare settlements table (v5 added the rest): the settlement's
    first step completes it and keeps its rows; on a fresh store it makes all four."""
    fresh = Store(tmp_path / "fresh.sqlite")
    assert not fresh.db["settlements"].exists()  # the market's tables only
    assert settlement_schema.migrate(fresh.db) == settlement_schema.CURRENT
    tables = {"settlements", "settlement_items", "settlement_parts", "settlement_txs"}
    assert tables <= set(fresh.db.table_names())
    old = Store(tmp_path / "old.sqlite")
    with old.transaction() as conn:  # as hub schema v1 left it, with a batch in it
        conn.execute("CREATE TABLE settlements (id TEXT PRIMARY KEY, trade_ids TEXT NOT NULL, "
                     "tx_signature TEXT, status TEXT NOT NULL, at REAL NOT NULL)")  # fmt: skip
        conn.execute("INSERT INTO settlements VALUES ('b1', '[]', NULL, 'planned', 1.0)")
    assert settlement_schema.migrate(old.db) == settlement_schema.CURRENT
    assert settlement_schema.migrate(old.db) == settlement_schema.CURRENT  # applied once
    assert [c.name for c in old.db["settlements"].columns] == [
        c.name for c in fresh.db["settlements"].columns]  # fmt: skip
    assert old.rows("SELECT id, status FROM settlements") == [{"id": "b1", "status": "planned"}]
    assert tables <= set(old.db.table_names())


@sync
async def test_a_hosted_aggregator_without_its_wallet_stops_the_start_in_one_line(tmp_path):
    """On a cluster the operator makes its hosted aggregators' wallets: a missing one is
    one line at start-up (StartError), not a traceback."""
    from helpers.hub_site import write_keys

    from hub.service import Hub, StartError

    write_keys(tmp_path / "hub-keys.json", [1])
    folder = tmp_path / "wallets"
    folder.mkdir(mode=0o700)
    wallets.create(wallets.clearing_path(folder))
    cfg = hub_toml.check({
        "hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json", "slot_s": 10, "gate_s": 4},
        "aggregator": [{"key_id": 1, "name": "a"}],
        "settlement": {"backend": "http://127.0.0.1:9", "mint": str(Keypair().pubkey()),
                       "wallets": "wallets", "timeout_s": 0.5},
    }, base=tmp_path)  # fmt: skip
    hub = Hub(cfg)
    try:
        await hub.start_integrations()
        with pytest.raises(StartError, match=r"\[settlement\] cannot start: no wallet file .*"
                                             r"aggregator-1.json"):  # fmt: skip
            await hub.start_market()
    finally:
        await hub.close()
