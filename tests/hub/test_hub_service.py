"""`gridbid hub run` (hub/service.py) end to end, with real parts only: firmware
batteries on the MicroPython VM (simulator.fleet), the hub as a subprocess or in-process,
real SQLite stores, loopback multicast and TCP.

One Fleet of three batteries serves the whole module; it lives on an event loop in
a background thread, so the batteries' output keeps being read while a test waits
on a hub subprocess. Every test starts from batteries that are all up and running
(`batteries`), whatever the test before it did to them.

Slots are 5 s with a 3 s gate, discovery_s 0.25 and bind_timeout_s 0.8: a restarted
hub (~0.5 s to its first Query when the machine is idle) then still makes a slot whose
offers its predecessor collected (it needs answer_s + 0.2 s before the gate: 1.5 s of
slack with answer_s 0.3), and one whose gate closed while its predecessor was buying (it
needs bind_timeout_s before the slot starts: 2.2 s of slack); when a busy machine makes
a restart slower than that, the test tries the next slot. Waits poll with deadlines; the
slots' grid sets the pace (about 45-55 s for the module on an idle 2-core machine).
"""

import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib

import book_record  # firmware/ (tests/conftest.py puts it on sys.path)
import pytest
import store as flash  # firmware/store.py: the battery's record on flash
from helpers import waiting
from helpers.hub_site import (
    GATE_S,
    SLOT_S,
    Background,
    deploy,
    hub_settings,
    start_all,
    toml,
    write_keys,
)  # fmt: skip
from helpers.logs import into
from helpers.processes import Gridbid
from helpers.waiting import until_async

from hub.config import hub_toml
from hub.market.maker import MarketMaker, pair
from hub.service import Hub
from hub.store import Store
from protocol import contract
from simulator import vm
from simulator.fleet import Fleet

pytestmark = pytest.mark.timeout(120)

ROOT = vm.ROOT
LIVE = ("Created", "Received", "Confirmed", "Active")
CONTRACT_LINE = re.compile(r"^contract (\S+) with aggregator (\d+): (\S+)$")


# --- plumbing -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    run = Background()
    fleet = Fleet(
        tmp_path_factory.mktemp("fleet"), aggregators=(1, 2), slot_s=SLOT_S, gate_s=GATE_S,
        slots_ahead=1, poll_ms=100, tick_ms=100,
        success_share=0.9,  # 5 s contracts: the 100 ms beats of meter, tick and inverter
    )  # fmt: skip           # are a few % of them, more on a loaded CI machine
    fleet.run = run
    try:
        for soc in (90.0, 75.0, 60.0):
            run(fleet.add(sim_settings={"soc_pct": soc}))
        run(start_all(fleet.devices))
        yield fleet
    finally:
        try:
            for device in fleet.devices:
                resume(device)
            run(fleet.close())
        finally:
            run.stop()


@pytest.fixture
def batteries(fleet):
    """The module's fleet with every battery running (a test may kill or stop some)."""

    async def revive():
        for device in fleet.devices:
            resume(device)
            if device.process.returncode is not None:
                await device.start()

    fleet.run(revive())
    yield fleet
    for device in fleet.devices:
        resume(device)


def resume(device):
    if device.process is not None and device.process.returncode is None:
        os.kill(device.process.pid, signal.SIGCONT)


def until(check, timeout, what, *hubs):
    """helpers.waiting.until, with the output of these hub processes at the deadline."""
    return waiting.until(check, timeout, what, lambda: "".join(
        "\n--- hub %d:\n%s" % (i, h.output) for i, h in enumerate(hubs, 1)))  # fmt: skip


def HubProcess(config, *args):  # noqa: N802 (a process, as a class would make it)
    """`python -m gridbid.cli hub run --config X [args]`, its output read as it comes."""
    return Gridbid("hub", "run", "--config", str(config), *args, cwd=ROOT)


@pytest.fixture
def hubs():
    """Start hub processes with hubs(config, *args); whatever still runs is killed after."""
    started = []

    def start(config, *args):
        started.append(HubProcess(config, *args))
        return started[-1]

    yield start
    for hub in started:
        hub.stop()


def rows(db, sql, *params):
    """Read the hub's SQLite file read-only, as another process may while the hub runs."""
    if not db.exists():
        return []
    conn = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # not created (migrated) yet
        return []
    finally:
        conn.close()


def start_of(slot):
    return contract.parse_slot_name(slot)[3]


def battery_contracts(fleet, slots):
    """{(contract id, device, aggregator, slot)} the batteries printed for these slots."""
    held = set()
    for device in fleet.devices:
        for line in list(device.lines):
            m = CONTRACT_LINE.match(line)
            if m and m.group(3) in slots:
                held.add((m.group(1), device.device_id, int(m.group(2)), m.group(3)))
    return held


def printed_soon(fleet, slots, ids, timeout=3.0):
    """battery_contracts(), once every contract id in ids is among them (a battery prints
    its contract a moment after the hub sent the BidConfirm), or at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        got = battery_contracts(fleet, slots)
        if set(ids) <= {c[0] for c in got} or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def flash_contracts(device):
    """{contract id: (state, slot)} in the battery's contract record on flash (read only)."""
    path = device.data_dir / "contracts.rec"
    if not path.exists():
        return {}
    _marks, _own, _retired, entries = book_record.decode(flash.decode(path.read_bytes()))
    return {e.contract.contract_id: (e.contract.state_name, e.contract.market_slot_name)
            for e in entries}  # fmt: skip


def hub_contracts(store, slots):
    return {(r["id"], r["device"], r["buyer"], r["slot"])
            for r in store.contracts(limit=10000) if r["slot"] in slots}  # fmt: skip


def check_trades_once(store, slot):
    """The slot's trades are recorded once, and are what a fresh clearing of its stored
    book gives. -> the bilateral trades (buyer, battery) of that clearing."""
    stored = store.trades(slot=slot, limit=10000)
    assert stored, "no trades recorded for %s" % slot
    orders = [r["order_id"] for r in stored]
    assert len(orders) == len(set(orders)), "a fill is recorded twice: %s" % sorted(orders)
    layers = store.bids(slot)
    asks = [r["owner"] for r in layers if r["side"] == "ask"]
    assert len(asks) == len(set(asks)), "a battery's offer is in the book twice: %s" % asks
    bids = [(r["owner"], r["ref"]) for r in layers if r["side"] == "bid"]
    assert len(bids) == len(set(bids)), "a buyer's bid is in the book twice: %s" % bids
    book = MarketMaker(store, "hub", SLOT_S, GATE_S).book(slot)
    result = book.clear()
    fresh = sorted((o, side, str(owner), round(kwh, 6)) for o, owner, side, kwh in result.fills)
    got = sorted((r["order_id"], r["side"], str(r["owner"]), round(r["kwh"], 6)) for r in stored)
    assert got == fresh, "stored trades differ from a fresh clearing of the stored book"
    assert {r["price"] for r in stored} == {result.price}
    return {(t.buyer, t.battery) for t in pair(slot, book, result)}


def check_one_contract_per_pair(hub_side, battery_side, slot):
    """At most one contract per (battery, buyer) of the slot, on each side."""
    for side, held in (("hub", hub_side), ("batteries", battery_side)):
        pairs = [(device, buyer) for _id, device, buyer, s in held if s == slot]
        assert len(pairs) == len(set(pairs)), "%s: a (battery, buyer) holds two of %s: %s" % (
            side, slot, sorted(held))  # fmt: skip


# --- the example config ---------------------------------------------------------------


def test_example_config_parses_and_documents_every_setting(tmp_path):
    example = ROOT / "hub" / "hub.example.toml"
    shutil.copy(example, tmp_path / "hub.toml")
    data = tomllib.loads(example.read_text())
    ids = [a["key_id"] for a in data["aggregator"]]
    write_keys(tmp_path / data["hub"]["keys_file"], ids)
    cfg = hub_toml.load(tmp_path / "hub.toml")
    assert (cfg["slot_s"], cfg["gate_s"]) == (900, 300)
    assert [a["strategy"] for a in cfg["aggregators"]] == ["value", "adaptive", "utility"]
    assert cfg["store"] == str(tmp_path / "gridbid-hub.sqlite")  # relative to the file
    assert set(data["hub"]) == set(hub_toml.HUB_DEFAULTS)  # every hub setting is set
    text = example.read_text()
    for name in hub_toml.AGGREGATOR_DEFAULTS:  # set in one, or shown commented out
        assert any(name in a for a in data["aggregator"]) or re.search(
            r"^# %s = " % name, text, re.M
        ), name
    lines = text.splitlines()
    for name in list(hub_toml.HUB_DEFAULTS) + list(hub_toml.AGGREGATOR_DEFAULTS):
        # its first appearance is in a run of settings that a comment introduces
        at = next(i for i, x in enumerate(lines) if re.match(r"^(# )?%s = " % name, x))
        while re.match(r"^\w+ = ", lines[at - 1]):
            at -= 1
        assert lines[at - 1].startswith("# "), "%s is not explained" % name


# --- config errors ----------------------------------------------------------------------


def _valid(tmp_path):
    write_keys(tmp_path / "hub-keys.json", [1, 2])
    return {"hub": {"store": "hub.sqlite", "slot_s": 10, "gate_s": 3},
            "aggregator": [{"key_id": 1}, {"key_id": 2, "strategy": "adaptive"}]}  # fmt: skip


def _broken(case, tmp_path):
    """Write the case's hub.toml (and keys) into tmp_path. -> (config path, expected text)."""
    data, config = _valid(tmp_path), tmp_path / "hub.toml"
    keys = tmp_path / "hub-keys.json"
    if case == "missing file":
        return tmp_path / "nowhere.toml", "cannot read"
    if case == "invalid TOML":
        config.write_text(toml(data) + "[hub\nslot_s = \n")
        return config, "is not valid TOML"
    if case == "unknown setting":
        data["hub"]["slots"] = 4
        expected = "unknown settings ['slots']"
    elif case == "unknown aggregator setting":
        data["aggregator"][1]["valeu"] = 20.0
        expected = "aggregator 2 has unknown settings ['valeu']"
    elif case == "no aggregator":
        del data["aggregator"]
        expected = "no aggregator can trade"
    elif case == "keys file missing":
        keys.unlink()
        expected = "no keys file"
    elif case == "keys file world-readable":
        os.chmod(keys, 0o644)
        expected = "readable by others: chmod 600"
    elif case == "no identity for an aggregator":
        data["aggregator"].append({"key_id": 3})
        expected = "aggregator agg3: no aggregator identity"
    elif case == "old shared keys file":
        keys.write_text(json.dumps({"keys": {"1": "11" * 32, "1001": "22" * 32},
                                    "group": "33" * 32}))  # fmt: skip
        expected = "holds the old shared keys"
    elif case == "gate_s >= slot_s":
        data["hub"]["gate_s"] = 10
        expected = "gate_s must be below hub.slot_s"
    elif case == "gate shorter than buying":
        data["hub"]["gate_s"] = 1
        expected = "gate_s must be above hub.bind_timeout_s"
    config.write_text(toml(data))
    return config, expected


CASES = [
    "missing file", "invalid TOML", "unknown setting", "unknown aggregator setting",
    "no aggregator", "keys file missing", "keys file world-readable",
    "no identity for an aggregator", "old shared keys file", "gate_s >= slot_s",
    "gate shorter than buying",
]  # fmt: skip


def test_the_valid_base_of_the_error_cases_loads(tmp_path):
    (tmp_path / "hub.toml").write_text(toml(_valid(tmp_path)))
    cfg = hub_toml.load(tmp_path / "hub.toml")
    assert [a["key_id"] for a in cfg["aggregators"]] == [1, 2]


@pytest.mark.parametrize("case", CASES)
def test_config_error_is_one_line_and_exit_code_2(case, tmp_path):
    config, expected = _broken(case, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "gridbid.cli", "hub", "run", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    out = (result.stdout + result.stderr).strip()
    assert result.returncode == 2, out
    assert len(out.splitlines()) == 1, out
    assert out.startswith("error: ") and expected in out, out
    assert not (tmp_path / "hub.sqlite").exists()  # it stopped before opening anything


# --- trading against firmware batteries ---------------------------------------------------


def test_hub_run_trades_and_contracts_match_the_batteries(batteries, hubs, tmp_path):
    fleet = batteries
    config, db = deploy(fleet, tmp_path)
    hub = hubs(config, "--slots", "2")
    assert hub.finish(40) == 0, hub.output
    out = hub.output
    assert "Traceback" not in out
    said = re.findall(r"\bslot (\S+): (\d+) offers .* c/kWh; (\d+) contracts$", out, re.M)
    assert len(said) == 2 and all(int(n) == 3 for _s, n, _c in said), out
    slots = [s for s, _n, _c in said]

    with Store(db) as store:
        traded = {slot: check_trades_once(store, slot) for slot in slots}
        for slot in slots:
            assert {d for _b, d in traded[slot]} == {d.device_id for d in fleet.devices}
        ours = hub_contracts(store, slots)
        assert {r["state"] for r in store.contracts(limit=1000)} == {"Confirmed"}
    # one contract per bilateral trade, as said in the summaries, and the batteries hold it
    assert sorted((b, d, s) for _i, d, b, s in ours) == sorted(
        (b, d, s) for s in slots for b, d in traded[s]
    )
    assert sum(int(c) for _s, _n, c in said) == len(ours)
    theirs = printed_soon(fleet, slots, [c[0] for c in ours])
    assert theirs == ours
    for slot in slots:
        check_one_contract_per_pair(ours, theirs, slot)

    # The last contracts end a slot after the hub stopped: a hub started again gets the
    # reports (the batteries keep them until their buyer reconnects).
    again = hubs(config)
    last_end = max(start_of(s) for s in slots) + SLOT_S

    def reported():
        got = rows(db, "SELECT state FROM contracts WHERE slot IN (?, ?)", *slots)
        return len(got) == len(ours) and all(s == "CompletedSuccess" for (s,) in got)

    until(reported, last_end - time.time() + 8, "every contract's CompletedSuccess report",
          again)  # fmt: skip
    assert again.interrupt() == 0, again.output
    assert "hub stopped" in again.output and "Traceback" not in again.output
    with Store(db) as store:
        for contract_id, _device, _buyer, _slot in ours:
            path = [h["to_state"] for h in store.contract_history(contract_id)]
            assert path == ["Created", "Received", "Confirmed", "Active", "CompletedSuccess"]
            row = store.contract(contract_id)
            promised = row["avg_watts"] * row["duration_s"] / 3.6e6
            assert row["delivered_kwh"] >= 0.9 * promised, row
    for device in fleet.devices:
        mine = {i for i, d, _b, _s in ours if d == device.device_id}
        done = [line for line in device.lines if "CompletedSuccess" in line]
        assert all(any(i in line for line in done) for i in mine)


def ready_at(hub):
    """When the hub said how many batteries answered: then it decides what to trade."""
    at = until(lambda: [t for t, x in zip(hub.times, hub.lines) if "batteries answered" in x],
               15, "the hub's discovery", hub)  # fmt: skip
    return at[0]


def said_slot(hub, slot):
    return re.search(r"\bslot %s: " % re.escape(slot), hub.output)


def traded(hub, slot):
    """Whether the hub traded the slot: it says so by the slot's start (+ 1 s)."""
    until(lambda: said_slot(hub, slot) or time.time() > start_of(slot) + 1, SLOT_S + 3,
          "the hub trading %s, or its start" % slot, hub)  # fmt: skip
    return bool(said_slot(hub, slot))


def test_hub_restarted_mid_slot_and_after_the_gate(batteries, hubs, tmp_path):
    """Killed (SIGKILL) and started again: (1) after a slot's bids are stored, before its
    gate; (2) after the next slot's gate, while it buys. A restart that comes up too late
    for its slot (the hub then rightly leaves it) makes the test try the next slot."""
    fleet = batteries
    answer_s = 0.3  # no loss here: the batteries answer a Query within milliseconds
    config, db = deploy(fleet, tmp_path, answer_s=answer_s)
    bind_s = hub_settings(fleet)["hub"]["bind_timeout_s"]
    hub, tried, restarts = hubs(config), set(), []

    def untried(sql, margin):
        for (name,) in rows(db, sql):
            if name not in tried and time.time() < start_of(name) - margin:
                return name

    # 1. Killed after the slot's bids are in the store, before its gate closes.
    for _attempt in range(3):
        slot = until(
            lambda: untried("SELECT DISTINCT slot FROM bids WHERE side = 'bid'", GATE_S + 1.0),
            2 * SLOT_S + 5,
            "bids of an open slot",
            hub,
        )
        tried.add(slot)
        assert hub.kill() == -signal.SIGKILL
        assert not rows(db, "SELECT 1 FROM trades WHERE slot = ?", slot)
        layers = len(rows(db, "SELECT 1 FROM bids WHERE slot = ?", slot))
        hub, killed = hubs(config), time.time()
        restarts.append(round(ready_at(hub) - killed, 2))
        late = killed + restarts[-1] > start_of(slot) - GATE_S - answer_s - 0.25
        if traded(hub, slot):
            break
        assert late, "the restarted hub had time for %s but did not trade it" % slot
    else:
        pytest.fail("restarts took %s s: too slow for the slot (a busy machine?)" % restarts)
    assert len(rows(db, "SELECT 1 FROM bids WHERE slot = ?", slot)) >= layers

    # 2. Killed after a later slot's gate closed, while it buys that slot's trades.
    for _attempt in range(3):
        after_gate = until(lambda: untried("SELECT DISTINCT slot FROM trades", 0.5),
                           2 * SLOT_S + 5, "trades of a slot not started", hub)  # fmt: skip
        tried.add(after_gate)
        assert hub.kill() == -signal.SIGKILL
        assert time.time() < start_of(after_gate), "killed too late: the slot has started"
        # killed buying, before any contract of the slot was made (a battery's auction
        # runs 300 ms after the first Bid), unless this machine is very slow
        bought = rows(db, "SELECT 1 FROM contracts WHERE slot = ?", after_gate)
        hub, killed = hubs(config), time.time()
        if bought:
            continue
        restarts.append(round(ready_at(hub) - killed, 2))
        late = killed + restarts[-1] > start_of(after_gate) - bind_s - 0.05
        if traded(hub, after_gate):  # it went back to it, and bought its trades
            break
        assert late, "the restarted hub had time for %s but did not buy it" % after_gate
    else:
        pytest.fail("restarts took %s s: too slow for the slot (a busy machine?)" % restarts)
    assert hub.interrupt() == 0, hub.output

    slots = (slot, after_gate)
    with Store(db) as store:
        ours = hub_contracts(store, slots)
        theirs = printed_soon(fleet, slots, [c[0] for c in ours])
        for name in slots:
            pairs = check_trades_once(store, name)
            check_one_contract_per_pair(ours, theirs, name)
            hub_ids = {c for c in ours if c[3] == name}
            assert {c for c in theirs if c[3] == name} == hub_ids, name
            # nothing lost: every bilateral trade of the slot holds its contract
            assert {(b, d) for _i, d, b, _s in hub_ids} == pairs, (name, hub.output)


# --- in-process hubs ---------------------------------------------------------------------


def in_process_config(fleet, folder, **more):
    deploy(fleet, folder)
    return hub_toml.check(hub_settings(fleet, **more), base=folder)


def test_batteries_lost_mid_auction_leave_no_orphan_contract(batteries, tmp_path):
    """One slot, three ways to lose a battery while it is being bought:
    - `dead` is killed once the slot's offers are in the book (before the gate);
    - `frozen` stops (SIGSTOP) as soon as a buyer's Bid reached its auction, and
      answers again only after the buyers gave up on it;
    - `cut` is killed right after it sent its BidAccept, before it can read the
      BidConfirm: the test holds the hub's SQLite write lock (as a second writer may)
      from the gate until then, so the hub handles the accept only after the kill.
    The hub runs on its own event loop here, so that blocking it does not stop the
    fleet's loop from reading the batteries' output."""
    fleet = batteries
    dead, frozen, cut = fleet.devices
    cfg = in_process_config(fleet, tmp_path)
    db = tmp_path / "hub.sqlite"
    loop, logs, events = Background(), into([]), []

    async def make():
        hub = Hub(cfg, seed=3)
        hub.ledger.grace_s = 1.0  # overdue reports: no need to wait a whole slot here
        hub.events.subscribe(events.append)
        return hub

    hub = loop(make())
    running = asyncio.run_coroutine_threadsafe(hub.run(3), loop.loop)
    lock = sqlite3.connect(str(db), timeout=5, isolation_level=None)
    try:

        def open_slot():
            for (slot,) in rows(db, "SELECT DISTINCT slot FROM bids WHERE side = 'bid'"):
                if time.time() < start_of(slot) - GATE_S - 0.3:
                    return slot

        slot = until(open_slot, 2 * SLOT_S + 5, "the first slot's bids")
        fleet.run(dead.kill())
        marks = {d.device_id: len(d.lines) for d in (frozen, cut)}
        until(lambda: rows(db, "SELECT 1 FROM trades WHERE slot = ?", slot),
              start_of(slot) - time.time(), "the gate's trades")  # fmt: skip
        lock.execute("BEGIN IMMEDIATE")  # the hub's next write waits (busy timeout 5 s)

        def said(device, start):
            return any(x.startswith(start) for x in device.lines[marks[device.device_id] :])

        stopped = killed = False
        deadline = time.monotonic() + 3
        while not (stopped and killed):
            if not stopped and said(frozen, "bid "):
                os.kill(frozen.process.pid, signal.SIGSTOP)
                stopped = True
            if not killed and said(cut, "accepted "):
                fleet.run(cut.kill())
                killed = True
            assert time.monotonic() < deadline, "no bid at %d or no accept from %d" % (
                frozen.device_id, cut.device_id)  # fmt: skip
            time.sleep(0.002)
        lock.execute("ROLLBACK")
        until(lambda: any(x.startswith("slot %s:" % slot) for x in logs), SLOT_S,
              "the slot bought")  # fmt: skip
        resume(frozen)  # it answers again, after the buyers gave up
        summaries = running.result(4 * SLOT_S)
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
        running.cancel()
        try:
            running.exception(10)  # the run ended (or was cancelled) before we close
        except BaseException:
            pass
        loop(hub.close())
        loop.stop()

    assert "Traceback" not in "\n".join(logs)
    first = next(s for s in summaries if s["slot"] == slot)
    assert {d for _b, d, _k in first["trades"]} == {dead.device_id, frozen.device_id,
                                                   cut.device_id}, first  # fmt: skip
    bought = {(b, d): first["contracts"][b, d] for b, d, _kwh in first["trades"]}
    for (_buyer, device), (contract_id, state) in bought.items():
        if contract_id is not None:  # only the cut battery accepted (before it was cut)
            assert device == cut.device_id and state in ("Confirmed", "TerminatedByAtn"), first
        else:
            assert state == "no contract", first  # the buyer got no accept: reported none
    assert any(c is not None for (_b, d), (c, _s) in bought.items() if d == cut.device_id)

    with Store(db) as store:
        mine = store.contracts(limit=1000)
        history = {r["id"]: [h["to_state"] for h in store.contract_history(r["id"])]
                   for r in mine}  # fmt: skip
    live = [r["id"] for r in mine if r["state"] in LIVE]
    printed = printed_soon(fleet, {r["slot"] for r in mine}, live)
    held = {d.device_id: flash_contracts(d) for d in fleet.devices}
    holds = {c[0] for c in printed} | {i for h in held.values() for i in h}
    # The lost batteries hold nothing of that slot ...
    for device in (dead, frozen, cut):
        ids = {c[0] for c in printed if c[1] == device.device_id and c[3] == slot}
        ids |= {i for i, (_state, s) in held[device.device_id].items() if s == slot}
        assert not ids, (device.device_id, ids)
    # ... and the hub holds no live contract a battery does not: what it confirmed to
    # the cut battery lapsed (withdrawn, or overdue by the ledger's grace).
    lost = [r for r in mine if r["slot"] == slot]
    assert lost and {r["device"] for r in lost} == {cut.device_id}, lost
    for row in lost:
        assert row["state"] in ("TerminatedByAtn", "CompletedUnknownOutcome"), history[row["id"]]
        assert history[row["id"]][:2] == ["Created", "Received"]
    for row in mine:
        if row["state"] in LIVE:
            assert row["id"] in holds, "orphan on the hub: %r" % row
    check_events(events, history, summaries)


def check_events(events, history, summaries):
    """The hub's events (hub/events.py) tell the store's story, in order: every
    contract state as recorded, every slot's clearing as summarised."""
    seqs = [int(e["id"].split(".")[1]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for contract_id, states in history.items():
        told = [e["state"] for e in events
                if e["kind"] == "contract" and e["contract"] == contract_id]  # fmt: skip
        assert told == states, (contract_id, told, states)
    for summary in summaries:
        (clearing,) = [
            e for e in events if e["kind"] == "clearing" and e["slot"] == summary["slot"]
        ]
        assert clearing["price"] == summary["price"]
        assert sorted((t["device"], t["kwh"]) for t in clearing["trades"]) == sorted(
            (d, k) for _b, d, k in summary["trades"])  # fmt: skip


def test_discovery_survives_ten_percent_udp_loss(batteries, tmp_path):
    fleet = batteries
    cfg = in_process_config(fleet, tmp_path)
    everyone = {d.device_id for d in fleet.devices}
    summary = re.compile(r"^slot (\S+): (\d+) offers .*; (\d+) contracts$")

    async def scenario():
        logs = into([])
        # Seeded loss: with 57, the first datagram (the hub's first Query) and the third
        # are lost, whatever the timing; then 10 % at random.
        hub = Hub(cfg, seed=57, loss=0.1)
        task = asyncio.create_task(hub.run())
        try:

            def every_battery_offered_and_sold():
                for line in logs:
                    m = summary.match(line)
                    if m and int(m.group(2)) == len(everyone) and int(m.group(3)) > 0:
                        return m.group(1)

            slot = await until_async(every_battery_offered_and_sold, 4 * SLOT_S + 5,
                                     "a slot with every battery's offer, bought")  # fmt: skip
            return hub, slot, logs
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await hub.close()

    hub, slot, logs = fleet.run(scenario())
    assert set(hub.registry.devices) == everyone
    assert hub.discovery.dropped >= 2  # the loss was real, the first Query among it
    with Store(cfg["store"]) as store:
        assert {r["id"] for r in store.devices()} == everyone
        offered = {r["owner"] for r in store.bids(slot, side="ask")}
        assert offered == everyone
        check_trades_once(store, slot)
        bought = store.contracts_of_slot(slot)
        assert bought and {r["state"] for r in bought} <= {"Confirmed", "Active",
                                                          "CompletedSuccess"}  # fmt: skip
    held = printed_soon(fleet, {slot}, [r["id"] for r in bought])
    assert {r["id"] for r in bought} == {c[0] for c in held}
