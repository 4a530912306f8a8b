"""hub/store/__init__.py: schema migrations, the API, append-only audit tables, idempotent trade
recording, crash safety (SIGKILL of a writer) and WAL readers, on real SQLite files."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlite_utils import Database

from hub.store import SchemaError, Store, schema
from protocol import contract as pc
from protocol.errors import ContractError

ROOT = Path(__file__).resolve().parents[3]
START = 1763700300  # a multiple of 900 s
SLOT = pc.slot_name(900, 300, "hub1", START)


def make_contract(device=7, buyer=3, msg_id=1, watts=2000):
    """A Created contract as JSON: 2000 W for 15 minutes = 0.5 kWh."""
    cid = pc.contract_id(device, buyer, msg_id)
    return pc.MarketContract.create(pc.BUYER, cid, SLOT, START, 15, watts).to_json_dict()


def slot(n):
    return pc.slot_name(900, 300, "hub1", START + 900 * n)


def layers_for(clearing, n=5):
    """Bid layers (order_id, side, owner, price c/kWh, kWh) of a clearing's slot."""
    return [(i, "bid", 100 + i, 20.0 - i, 1 + i / 4) for i in range(n)]


def fills_for(clearing, n=5):
    """hub.market Fills: (order_id, owner, side, kWh)."""
    return [(i, 100 + i, "bid", 1 + i / 4) for i in range(n)]


def record_clearing(store, clearing):
    """What the market maker does for a slot: every layer, then the clearing."""
    store.record_bids(slot(clearing), layers_for(clearing))
    return store.record_trades("clr-%d" % clearing, slot(clearing), fills_for(clearing), 12.5)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "hub.db"


@pytest.fixture
def store(path):
    with Store(path) as s:
        s.add_device(7, 70, "127.0.0.27:5000", at=1000.0)
        yield s


def count(store, table):
    return store.db.execute("SELECT count(*) FROM %s" % table).fetchone()[0]


# --- opening and migrations --------------------------------------------------------------


def test_open_sets_wal_foreign_keys_and_current_version(path):
    with Store(path) as s:
        assert s.db.journal_mode == "wal"
        assert s.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.version == schema.CURRENT == 8
        versions = [r["version"] for r in s.db.query("SELECT * FROM schema_version")]
        assert versions == [1, 2, 3, 4, 5, 6, 7, 8]


def test_reopen_is_idempotent_and_keeps_data(path):
    with Store(path) as s:
        s.add_device(1, 10, "a")
    with Store(path) as s:
        assert [d["id"] for d in s.devices()] == [1]
        assert count(s, "schema_version") == schema.CURRENT


def test_database_from_a_newer_hub_is_refused(path):
    with Store(path) as s:
        s.db.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
    with pytest.raises(SchemaError, match="version 99 is newer than this hub's 8"):
        Store(path)


def test_a_foreign_database_is_refused(path):
    sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.commit()
    with pytest.raises(SchemaError, match="not a gridbid store"):
        Store(path)


def test_a_failing_migration_leaves_the_previous_version(path, monkeypatch):
    Store(path).close()

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step 3 failed")

    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS + (("x", broken),))
    with pytest.raises(RuntimeError, match="step 3 failed"):
        Store(path)
    monkeypatch.undo()
    with Store(path) as s:
        assert s.version == 8 and "half_done" not in s.db.table_names()


def test_a_version_1_database_migrates_with_its_data(path):
    """Build the file exactly as the first release did, fill it, open it with this hub."""
    old = Database(path)
    assert schema.migrate(old, target=1) == 1
    c = make_contract()
    old.conn.executescript(
        """
        INSERT INTO devices VALUES (7, 70, '127.0.0.27:5000', 1000, 1001, 50, 2.5, 51.2, 0, 0);
        INSERT INTO bids VALUES (1, '%(slot)s', 0, 'bid', 3, 15.5, 2, NULL, 1002);
        INSERT INTO trades VALUES (1, 'c1', '%(slot)s', 0, 'bid', 3, 2, 15.5, 1003);
        INSERT INTO contracts VALUES ('%(id)s', 7, 3, '%(slot)s', %(start)d, 900, 2000,
                                      15.5, 'CompletedSuccess', 1004);
        INSERT INTO contract_states VALUES (1, '%(id)s', NULL, 'Created', 'buyer', 1004);
        """
        % {"slot": SLOT, "id": c["ContractId"], "start": START}
    )
    old.close()
    assert "delivered_kwh" not in [col.name for col in Database(path)["contracts"].columns]

    with Store(path) as s:
        assert s.version == 8
        (device,) = s.devices()
        assert device["soc"] == 50 and device["address"] == "127.0.0.27:5000"
        assert device["promised_kwh"] == pytest.approx(0.5) and device["reputation"] == 1.0
        assert s.trades()[0]["clearing_id"] == "c1" and s.bids(SLOT)[0]["owner"] == 3
        assert s.contract(c["ContractId"])["delivered_kwh"] is None
        assert s.record_trades("c1", SLOT, [(0, 3, "bid", 2)], 15.5) == [1]  # as before
        assert "trades_slot" in [i.name for i in s.db["trades"].indexes]


# --- devices, offers, bids ---------------------------------------------------------------


def test_devices_register_touch_and_report(store):
    assert store.add_device(7, 71, "127.0.0.27:5001", at=2000.0) is False  # re-registered
    store.touch_device(7, at=2500.0)
    (d,) = store.devices()
    assert (d["key_id"], d["address"], d["registered_at"], d["last_seen"]) == (
        71, "127.0.0.27:5001", 1000.0, 2500.0,
    )  # fmt: skip
    assert d["reputation"] is None  # nothing promised yet
    with pytest.raises(ValueError, match="unknown device 8"):
        store.touch_device(8)
    with pytest.raises(ValueError, match="device must be a whole number"):
        store.add_device(-1, 1, "x")


def test_offers_and_bid_layers(store):
    assert store.record_offer(7, SLOT, 3.0, 14.0) == 1
    with pytest.raises(ValueError, match="unknown device"):
        store.record_offer(9, SLOT, 3.0, 14.0)
    assert store.record_bid(SLOT, 0, "bid", 3, 15.0, 1.0, ref=991) is True
    assert store.record_bids(SLOT, [(1, "bid", "agg-b", 16.0, 0.5), (2, "ask", 7, 14, 3)]) == 2
    assert store.record_bid(SLOT, 0, "bid", 3, 15.0, 1.0, ref=991) is False  # a replay
    assert [(b["order_id"], b["owner"], b["price"], b["ref"]) for b in store.bids(SLOT, "bid")] == [
        (0, 3, 15.0, 991), (1, "agg-b", 16.0, None),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="order 0 of .* is already recorded"):
        store.record_bid(SLOT, 0, "bid", 3, 15.5, 1.0)  # a layer is never replaced
    for bad in [(-1.0, 1.0), (float("nan"), 1.0), (15.0, 0.0), (15.0, -2.0), (True, 1.0)]:
        with pytest.raises(ValueError, match="price|kwh"):
            store.record_bid(SLOT, 9, "bid", 3, *bad)
    with pytest.raises(ValueError, match="side"):
        store.record_bid(SLOT, 9, "buy", 3, 15.0, 1.0)
    with pytest.raises(ValueError, match="market slot name"):
        store.record_bid("slot-1", 9, "bid", 3, 15.0, 1.0)
    # a bad layer in a batch writes none of the batch
    with pytest.raises(ValueError):
        store.record_bids(SLOT, [(10, "bid", 3, 15.0, 1.0), (11, "bid", 3, -1, 1)])
    assert count(store, "bids") == 3


# --- trades ------------------------------------------------------------------------------


def test_record_trades_is_idempotent_per_clearing(store):
    ids = record_clearing(store, 0)
    assert len(ids) == 5
    assert record_clearing(store, 0) == ids  # the restarted hub's retry
    assert store.record_trades("clr-0", slot(0), fills_for(0)[::-1], 12.5) == ids[::-1]
    assert count(store, "trades") == 5
    for other in (fills_for(0)[:4], [(0, 100, "bid", 0.5)] + fills_for(0)[1:]):
        with pytest.raises(ValueError, match="already recorded with other fills"):
            store.record_trades("clr-0", slot(0), other, 12.5)
    with pytest.raises(ValueError, match="already recorded with other fills"):
        store.record_trades("clr-0", slot(0), fills_for(0), 12.6)
    store.record_bids(slot(1), layers_for(1))
    for bad, match in [
        ([(0, 100, "bid")], "a fill is"),
        ([(0, 100, "bid", 1.0), (0, 100, "bid", 1.0)], "fills an order twice"),
        (fills_for(1)[:4] + [(4, 104, "bid", -1.0)], "kwh"),
        ([(0, 999, "bid", 1.0)], "bid of 999.*no such layer"),
        ([(7, 100, "bid", 1.0)], "no such layer"),
        ([(0, 100, "bid", 1.5)], "1.5 kWh.*no such layer"),  # more than the layer had
    ]:
        with pytest.raises(ValueError, match=match):
            store.record_trades("clr-1", slot(1), bad, 12.5)
    assert count(store, "trades") == 5  # the bad clearings wrote nothing
    assert [t["id"] for t in store.trades(slot(0), limit=2, offset=1)] == ids[3:1:-1]
    trade = store.trades()[0]
    assert (trade["buyer"], trade["seller"], trade["owner"]) == (104, "hub1", 104)


def test_a_market_slot_round_trip(store):
    """The store records what hub.market's MarketSlot makes, and rebuilds its book."""
    from hub.market.clearing import MarketSlot

    book = MarketSlot(SLOT)
    book.bid(3, 18.0, 2.0, ref=1)
    book.bid(4, 16.0, 2.0)
    book.ask(7, 12.0, 3.0)
    for layer in book.layers:
        store.record_bid(SLOT, *layer[:5])
    result = book.clear()
    store.record_trades("clr", SLOT, result.fills, result.price)
    trades = store.trades(SLOT)[::-1]
    assert [(t["order_id"], t["owner"], t["side"], t["kwh"]) for t in trades] == result.fills
    rebuilt = MarketSlot(SLOT)
    for row in store.bids(SLOT):
        rebuilt.add(row["side"], row["owner"], row["price"], row["kwh"])
    assert rebuilt.layers == book.layers and rebuilt.clear() == result


def test_stats_and_price_signals(store):
    for n, (price, kwh) in enumerate([(10.0, 1.0), (14.0, 3.0)]):
        store.record_bid(SLOT, n, "ask", 7, 1.0, kwh)
        store.record_trades("c%d" % n, SLOT, [(n, 7, "ask", kwh)], price, at=n + 1.0)
    store.record_bid(slot(1), 0, "ask", 7, 1.0, 1.0)
    store.record_trades("c2", slot(1), [(0, 7, "ask", 1.0)], 20.0, at=3.0)
    stats = store.stats()
    assert [s["slot"] for s in stats["slots"]] == [slot(1), SLOT]
    assert stats["slots"][1]["mean_price"] == pytest.approx(13.0)  # kWh-weighted
    assert (stats["trades"], stats["kwh"], stats["devices"]) == (3, 5.0, 1)
    store.record_price_signal(12.5, demand=10, supply=8, slot=SLOT, at=5.0)
    store.record_price_signal(11.0, demand=8, supply=10, at=6.0)
    assert [p["price"] for p in store.price_signals()] == [11.0, 12.5]
    with pytest.raises(ValueError, match="supply"):
        store.record_price_signal(12.0, 1, -1)


def test_telemetry_updates_the_last_status(store):
    store.record_telemetry(
        7, soc=55.0, remaining_kwh=2.2, voltage=51.0, power_kw=1.5, health=0, at=2000
    )
    store.record_telemetry(7, soc=None, voltage=50.9, at=2001)  # unknown stays unknown
    d = store.devices()[0]
    assert (d["soc"], d["voltage"], d["last_seen"]) == (None, 50.9, 2001)
    assert [t["soc"] for t in store.telemetry(7)] == [None, 55.0]
    for bad in [dict(soc=101), dict(remaining_kwh=-1), dict(power_kw=float("inf"))]:
        with pytest.raises(ValueError):
            store.record_telemetry(7, **bad)
    with pytest.raises(ValueError, match="unknown device"):
        store.record_telemetry(8, soc=1)


# --- contracts ---------------------------------------------------------------------------


def test_contract_lifecycle_history_and_reputation(store):
    c = make_contract()
    cid = c["ContractId"]
    assert store.record_contract(c, 7, 3, 15.5, at=10) is True
    assert store.record_contract(c, 7, 3, 15.5, at=11) is False  # a retry: no-op
    with pytest.raises(ValueError, match="other terms"):
        store.record_contract(c, 7, 3, 16.0)
    store.advance_contract(cid, "Received", pc.DEVICE, at=12)
    store.advance_contract(cid, pc.CONFIRMED, pc.BUYER, at=13)
    store.advance_contract(cid, "Active", pc.DEVICE, at=14)
    done = store.advance_contract(
        cid, "CompletedFailureByScada", pc.DEVICE, at=15, delivered_kwh=0.4
    )
    assert done.state_name == "CompletedFailureByScada"
    assert [(h["from_state"], h["to_state"], h["by"]) for h in store.contract_history(cid)] == [
        (None, "Created", "buyer"), ("Created", "Received", "device"),
        ("Received", "Confirmed", "buyer"), ("Confirmed", "Active", "device"),
        ("Active", "CompletedFailureByScada", "device"),
    ]  # fmt: skip
    row = store.contract(cid)
    assert row["json"] == dict(c, Status="CompletedFailureByScada") and row["delivered_kwh"] == 0.4
    assert store.devices()[0]["reputation"] == pytest.approx(0.8)
    # a buyer's termination does not count against the device
    c2 = make_contract(msg_id=2)
    store.record_contract(c2, 7, 3, 15.5)
    store.advance_contract(c2["ContractId"], "TerminatedByAtn", pc.BUYER)
    assert store.devices()[0]["reputation"] == pytest.approx(0.8)
    assert [r["id"] for r in store.contracts(state="TerminatedByAtn")] == [c2["ContractId"]]
    assert len(store.contracts(device=7)) == 2 and store.contracts(device=8) == []
    assert len(store.contracts(limit=1, offset=1)) == 1


def test_contract_bad_input_changes_nothing(store):
    c = make_contract()
    cid = c["ContractId"]
    with pytest.raises(ValueError, match="unknown device"):
        store.record_contract(c, 8, 3, 15.5)
    store.record_contract(c, 7, 3, 15.5)
    with pytest.raises(ContractError, match="buyer may not go Created -> Received"):
        store.advance_contract(cid, "Received", pc.BUYER)
    with pytest.raises(ContractError):
        store.advance_contract(cid, "CompletedSuccess", pc.DEVICE)  # not Active yet
    with pytest.raises(ValueError, match="final state"):
        store.advance_contract(cid, "Received", pc.DEVICE, delivered_kwh=1.0)
    with pytest.raises(ValueError, match="unknown contract state"):
        store.advance_contract(cid, "Finished", pc.DEVICE)
    with pytest.raises(ValueError, match="unknown contract id"):
        store.advance_contract(pc.contract_id(1, 2, 3), "Received", pc.DEVICE)
    with pytest.raises(ValueError, match="unknown contract id"):
        store.contract_history("nope")
    with pytest.raises(ValueError, match="price"):
        store.record_contract(make_contract(msg_id=5), 7, 3, -0.1)
    with pytest.raises(ContractError):
        store.record_contract(dict(c, StartUnixS=START + 1), 7, 3, 15.5)
    assert store.contract(cid)["state"] == "Created" and len(store.contract_history(cid)) == 1


# --- append-only audit tables ------------------------------------------------------------


def test_audit_tables_are_append_only(store):
    store.record_bids(slot(0), layers_for(0, n=1))
    store.record_trades("c", slot(0), fills_for(0, n=1), 12.5)
    c = make_contract()
    store.record_contract(c, 7, 3, 15.5)
    store.record_price_signal(12.0, 1, 1)
    store.record_telemetry(7, soc=50)
    store.set_control("paused.agg1", True, "test")
    store.record_refusal(1, "bid", "late")
    for table in schema.APPEND_ONLY:
        for sql in ("UPDATE %s SET id = id + 100", "DELETE FROM %s"):
            with pytest.raises(sqlite3.IntegrityError, match="%s is append-only" % table):
                store.db.execute(sql % table)
        assert count(store, table) == 1
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):  # REPLACE deletes first
        store.db.execute("INSERT OR REPLACE INTO price_signals VALUES (1, NULL, 0, 1, 1, 1)")
    # contracts and devices do change: their history lives in the append-only tables
    store.advance_contract(c["ContractId"], "Received", pc.DEVICE)


def test_controls_newest_wins_null_clears_and_history_stays(store):
    store.set_control("reserve_floor.7", 18.5, "mqtt", at=1.0)
    store.set_control("paused.value", True, "web", at=2.0)
    store.set_control("reserve_floor.7", 19.0, "mqtt", at=3.0)
    assert store.controls() == {"reserve_floor.7": 19.0, "paused.value": True}
    store.set_control("paused.value", None, "web", at=4.0)
    assert store.controls() == {"reserve_floor.7": 19.0}
    assert count(store, "controls") == 4  # who set what, and when, stays on record


# --- crash safety and concurrent readers -------------------------------------------------

CHILD = """
import sys, time
sys.path[:0] = [{root!r}, {root!r} + "/tests/hub/store"]
from test_store_hub import record_clearing
from hub.store import Store

store = Store(sys.argv[1])
mode = sys.argv[2]
inserts = 0

def stall_on_third_insert(sql):
    global inserts
    if sql.startswith("INSERT INTO trades"):
        inserts += 1
        if inserts == 3:  # two fills of this clearing are written, uncommitted
            print("stalled", flush=True)
            time.sleep(60)

clearing = 0
while mode in ("forever", "stall") or clearing < int(mode):
    if mode == "stall" and clearing == 3:
        store.db.conn.set_trace_callback(stall_on_third_insert)
    record_clearing(store, clearing)
    print(clearing, flush=True)
    clearing += 1
""".format(root=str(ROOT))


def start_writer(path, mode, stdout=subprocess.PIPE):
    argv = [sys.executable, "-c", CHILD, str(path), mode]
    return subprocess.Popen(argv, cwd=ROOT, stdout=stdout, text=True)


def kill_after(proc, line):
    for got in proc.stdout:
        if got.strip() == line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def check_clearings(store, clearings):
    """Each clearing has exactly its 5 fills; nothing else is stored."""
    rows = store.db.execute("SELECT clearing_id, order_id FROM trades").fetchall()
    assert sorted(rows) == sorted(("clr-%d" % c, f) for c in clearings for f in range(5))


def test_writer_killed_mid_clearing_loses_and_duplicates_nothing(path):
    Store(path).close()
    proc = start_writer(path, "stall")
    kill_after(proc, "stalled")
    with Store(path) as s:  # the restarted hub
        check_clearings(s, range(3))  # committed ones complete, the torn one absent
        for clearing in range(6):  # it re-records the slot's clearings
            record_clearing(s, clearing)
        check_clearings(s, range(6))


def test_writer_killed_at_a_random_point_loses_and_duplicates_nothing(path):
    Store(path).close()
    proc = start_writer(path, "forever")
    time.sleep(0.05)
    kill_after(proc, "20")
    with Store(path) as s:
        done = s.db.execute("SELECT count(DISTINCT clearing_id) FROM trades").fetchone()[0]
        assert done >= 21
        check_clearings(s, range(done))  # a prefix of whole clearings
        for clearing in range(done + 3):  # the one in flight, and beyond
            record_clearing(s, clearing)
        check_clearings(s, range(done + 3))


def test_a_reader_is_not_blocked_by_an_open_write_transaction(path):
    with Store(path) as writer, Store(path, busy_timeout_s=0) as reader:
        record_clearing(writer, 0)
        writer.db.conn.execute("BEGIN IMMEDIATE")
        writer.db.conn.execute(
            "INSERT INTO price_signals (at, price, demand, supply) VALUES (1, 1, 1, 1)"
        )
        assert len(reader.trades()) == 5 and reader.price_signals() == []  # no wait, no error
        writer.db.conn.execute("COMMIT")
        assert len(reader.price_signals()) == 1


def test_a_reader_process_keeps_reading_while_a_writer_commits(path):
    with Store(path) as reader:
        proc = start_writer(path, "300", stdout=subprocess.DEVNULL)
        seen = []
        while proc.poll() is None:
            seen.append(reader.stats()["trades"])
            assert len(reader.trades(limit=5)) >= min(5, seen[-1])
        assert proc.wait() == 0
        seen.append(reader.stats()["trades"])
    assert seen == sorted(seen) and seen[-1] == 1500
    assert len(set(seen)) > 2  # it read between the writer's commits
