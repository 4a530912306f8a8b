"""Independent aggregators, as companies run them: each its own OS process (`gridbid
aggregator run`) with its own identity, strategy and files, trading over the market
API with a hub process (`gridbid hub run`) that hosts none, and buying from firmware
batteries on the VM with pair keys the hub never holds. The hub's operator admits
them (`gridbid hub admit`) and revokes one mid-run (`gridbid hub revoke`)."""

import json
import os
import re
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from helpers.hub_site import GATE_S, SLOT_S, Background, start_all, toml
from helpers.processes import Gridbid
from helpers.waiting import until
from solders.keypair import Keypair

from aggregator import wallet
from protocol import pairing
from simulator.fleet import Fleet, free_port

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parents[2]
# Each may buy 0.01 kWh a slot, half of what the batteries offer: both win.
STRATEGIES = {11: ("value", {"value": 22.0, "spread": 4.0, "bidders": 2, "capacity": 0.01}),
              12: ("adaptive", {"value": 22.0, "spread": 4.0, "capacity": 0.01})}  # fmt: skip


CONFIRMED_BY = ("SELECT DISTINCT c.device FROM contracts c JOIN contract_states s "
                "ON s.contract = c.id WHERE s.to_state = 'Confirmed'")  # fmt: skip


def rows(db, sql, *args):
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, args).fetchall()


def aggregator_toml(folder, key_id, strategy, settings):
    wallet.create(folder / "wallet.json")  # its own: margin where a market settles
    text = ["[aggregator]", 'identity = "identity.json"', 'strategy = "%s"' % strategy,
            'wallet = "wallet.json"', "margin_credits = 5.0"]  # fmt: skip
    text += ["%s = %s" % (k, json.dumps(v)) for k, v in settings.items()]
    text += ["", "[[market]]", 'admission = "market-hub.json"']
    (folder / "aggregator.toml").write_text("\n".join(text) + "\n")
    return folder / "aggregator.toml"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Three batteries that trust aggregators 11 and 12 (enrolled), a hub folder with
    hub.toml (no hosted aggregator, the market API on) and its keys, and each
    aggregator's folder with its own identity."""
    base = tmp_path_factory.mktemp("independent")
    run = Background()
    fleet = Fleet(base / "fleet", aggregators=tuple(STRATEGIES), slot_s=SLOT_S,
                  gate_s=GATE_S, slots_ahead=1, poll_ms=100, tick_ms=100,
                  success_share=0.9)  # fmt: skip
    try:
        for soc in (90.0, 75.0, 60.0):
            run(fleet.add(sim_settings={"soc_pct": soc}))
        run(start_all(fleet.devices))
        hub = base / "hub"
        hub.mkdir()
        fleet.hub_keys(hub / "hub-keys.json")
        settings = {
            "name": "hub", "store": "hub.sqlite", "keys_file": "hub-keys.json",
            "group_addr": fleet.group_addr, "group_port": fleet.group_port,
            "interface": "127.0.0.1", "device_port": fleet.tcp_port, "slot_s": SLOT_S,
            "gate_s": GATE_S, "discovery_s": 0.25, "answer_s": 1.0, "bind_timeout_s": 0.8,
            "market_bind": "127.0.0.1", "market_port": free_port(),
        }  # fmt: skip
        # It settles on its in-process chain: the aggregators pay through their margin.
        settles = '\n[settlement]\nwallets = "wallets"\nbatch_s = %d\npoll_s = 0.5\n' % SLOT_S
        (hub / "hub.toml").write_text(toml({"hub": settings}) + settles)
        other = base / "hub-kill"  # a second market on the same batteries, for one test
        other.mkdir()
        fleet.hub_keys(other / "hub-keys.json")
        (other / "hub.toml").write_text(toml({"hub": dict(settings, market_port=free_port())}))
        for key_id, (strategy, more) in STRATEGIES.items():
            folder = base / ("agg%d" % key_id)
            folder.mkdir()
            fleet.identity(folder / "identity.json", key_id, strategy)
            aggregator_toml(folder, key_id, strategy, more)
        yield fleet, base
    finally:
        run(fleet.close())
        run.stop()


def test_two_independent_aggregators_trade_and_a_revoked_one_is_refused(site):
    fleet, base = site
    hub_dir = base / "hub"
    for key_id, (name, _more) in STRATEGIES.items():
        admit = Gridbid("hub", "admit", "--config", hub_dir / "hub.toml", "--aggregator",
                        key_id, "--name", name, "--host", "127.0.0.1", "--out",
                        base / ("agg%d" % key_id) / "market-hub.json", cwd=ROOT)  # fmt: skip
        assert admit.finish(30) == 0, admit.output
        assert "never shown" in admit.output and not re.search("[0-9a-f]{32}", admit.output)
    aggregators = {k: Gridbid("aggregator", "run", "--config",
                              base / ("agg%d" % k) / "aggregator.toml", cwd=ROOT)
                   for k in STRATEGIES}  # fmt: skip
    hub = Gridbid("hub", "run", "--config", hub_dir / "hub.toml", "--slots", "5", cwd=ROOT)
    db = hub_dir / "hub.sqlite"
    try:
        for agg in aggregators.values():
            agg.wait_for("trading in market hub", 30)
        # two slots with both, then aggregator 12 is revoked: it bids in no later slot
        until(lambda: len(re.findall(r"contracts$", hub.output, re.M)) >= 2, 40,
              "two slots traded", lambda: hub.output)  # fmt: skip
        revoke = Gridbid("hub", "revoke", "--config", hub_dir / "hub.toml", "--aggregator",
                         12, cwd=ROOT)  # fmt: skip
        assert revoke.finish(30) == 0, revoke.output
        revoked_at = time.time()
        assert hub.finish(60) == 0, hub.output
        for agg in aggregators.values():
            assert agg.interrupt() == 0, agg.output
    finally:
        hub.stop()
        for agg in aggregators.values():
            agg.stop()
    for process in (hub, *aggregators.values()):
        assert "Traceback" not in process.output, process.output
    # both traded, each its own way: bid layers and Confirmed contracts of each
    slots = [s for (s,) in rows(db, "SELECT DISTINCT slot FROM bids ORDER BY slot")]
    owners = {o for (o,) in rows(db, "SELECT DISTINCT owner FROM bids WHERE side = 'bid'")}
    assert owners == {11, 12}, owners
    made = rows(db, "SELECT DISTINCT c.buyer FROM contracts c JOIN contract_states s "
                    "ON s.contract = c.id WHERE s.to_state = 'Confirmed'")  # fmt: skip
    assert {b for (b,) in made} == {11, 12}, rows(db, "SELECT buyer, state FROM contracts")
    # revoked: no layer of 12 in a slot whose offers went out after the revocation was read
    late = [s for s in slots if int(s.rsplit(".", 1)[1]) - SLOT_S > revoked_at + 1.5]
    assert late, "no slot after the revocation"
    for slot in late:
        assert not rows(db, "SELECT 1 FROM bids WHERE slot = ? AND owner = 12", slot), slot
    # its session ended when the hub read the revocation; its new ones are refused
    assert "was revoked" in hub.output and "was revoked" in aggregators[12].output
    assert "stopped" in aggregators[11].output
    # each aggregator kept its own records: its layers, fills and contracts, as the hub's
    for key_id in STRATEGIES:
        own = base / ("agg%d" % key_id) / "aggregator.sqlite"
        sent = rows(own, "SELECT count(*) FROM bids")[0][0]
        taken = rows(db, "SELECT count(*) FROM bids WHERE owner = ?", key_id)[0][0]
        assert sent == taken if key_id == 11 else sent >= taken  # 12's late ones: refused
        theirs = {c for (c,) in rows(own, "SELECT id FROM contracts WHERE state != 'Withdrawn'")}
        ours = {c for (c,) in rows(db, "SELECT id FROM contracts WHERE buyer = ? AND state "
                                       "!= 'TerminatedByAtn'", key_id)}  # fmt: skip
        assert theirs == ours and theirs, (key_id, theirs, ours)
        assert rows(own, "SELECT count(*) FROM fills")[0][0] >= len(theirs)
    # each paid through the margin it deposited from its own wallet, credited once; the
    # clearing house paid the owners of the slots that ended from it
    for key_id in STRATEGIES:
        own = base / ("agg%d" % key_id) / "aggregator.sqlite"
        (signature,) = [s for (s,) in rows(own, "SELECT signature FROM deposits "
                                                "WHERE status = 'finalized'")]  # fmt: skip
        assert rows(db, "SELECT aggregator, status FROM margin_deposits WHERE signature = ?",
                    signature) == [(key_id, "finalized")]  # fmt: skip
    assert "under-funded" not in hub.output
    paid = rows(db, "SELECT DISTINCT c.buyer FROM settlement_items i JOIN settlements s ON "
                    "s.id = i.batch AND s.status = 'finalized' JOIN contracts c ON "
                    "c.id = i.contract WHERE i.amount > 0")  # fmt: skip
    assert paid, rows(db, "SELECT id, status, error FROM settlements")
    payer = {p for (p,) in rows(db, "SELECT DISTINCT payer FROM settlement_parts")}
    clearing = json.loads((hub_dir / "wallets" / "clearing.json").read_text())
    assert payer == {str(Keypair.from_bytes(bytes(clearing)).pubkey())}
    # the hub's files hold no aggregator's secret: no master, no pair key, no market key,
    # no wallet
    hub_bytes = b"".join(p.read_bytes() for p in hub_dir.rglob("*") if p.is_file())
    for key_id in STRATEGIES:
        own_wallet = json.loads((base / ("agg%d" % key_id) / "wallet.json").read_text())
        assert bytes(own_wallet[:32]) not in hub_bytes
        assert json.dumps(own_wallet).encode() not in hub_bytes
        assert not (hub_dir / "wallets" / ("aggregator-%d.json" % key_id)).exists()
        master = fleet.masters[key_id]
        secrets = [master] + [pairing.derive(master, pairing.LABEL_ETP, d.device_id)
                              for d in fleet.devices]  # fmt: skip
        for secret in secrets:
            assert secret not in hub_bytes and secret.hex().encode() not in hub_bytes
        identity = json.loads((base / ("agg%d" % key_id) / "identity.json").read_text())
        assert identity["master"].encode() not in hub_bytes


def test_an_aggregator_killed_mid_slot_leaves_no_orphan_contract(site):
    """Aggregator 11's process is frozen the moment it hears its fills, before it can
    confirm, and then killed: the hub withdraws (or never records) its contracts at the
    slot's deadline, and the batteries' accepts lapse unconfirmed: no contract is held
    for it anywhere."""
    fleet, base = site
    hub_dir, agg_dir = base / "hub-kill", base / "agg11"
    admit = Gridbid("hub", "admit", "--config", hub_dir / "hub.toml", "--aggregator", 11,
                    "--name", "value", "--host", "127.0.0.1", "--out",
                    agg_dir / "market-kill.json", cwd=ROOT)  # fmt: skip
    assert admit.finish(30) == 0, admit.output
    text = (agg_dir / "aggregator.toml").read_text().replace("market-hub", "market-kill")
    own = 'identity = "identity.json"'
    text = text.replace(own, own + '\nstore = "kill.sqlite"')
    (agg_dir / "kill.toml").write_text(text)
    marks = {d.device_id: len(d.lines) for d in fleet.devices}
    agg = Gridbid("aggregator", "run", "--config", agg_dir / "kill.toml", cwd=ROOT)
    hub = Gridbid("hub", "run", "--config", hub_dir / "hub.toml", "--slots", "2", cwd=ROOT)
    try:
        agg.wait_for("trading in market hub", 30)
        filled = until(lambda: next((x for x in agg.lines if "filled by" in x), None), 30,
                       "fills", lambda: hub.output, every=0.002)  # fmt: skip
        os.kill(agg.proc.pid, signal.SIGSTOP)  # it hears no more, and answers nothing
        slot = re.search(r" in (\S+) at ", filled).group(1)
        assert hub.finish(60) == 0, hub.output
    finally:
        agg.kill()
        hub.stop()
    db = hub_dir / "hub.sqlite"
    held = rows(db, "SELECT state FROM contracts WHERE slot = ? AND buyer = 11", slot)
    assert all(state == "TerminatedByAtn" for (state,) in held), held
    assert "value could not buy from battery" in hub.output, hub.output
    time.sleep(6)  # a battery's accept lapses after its confirm_ms (5 s)
    for device in fleet.devices:
        said = device.lines[marks[device.device_id] :]
        theirs = [x for x in said if x.startswith("contract ") and "aggregator 11: " + slot in x]
        assert not theirs, theirs


def test_one_aggregator_process_trades_in_two_hubs_markets(tmp_path):
    """Two hubs on loopback, each with its own batteries and group, and one aggregator
    process in both markets at once (two [[market]] blocks): contracts in each."""
    run = Background()
    masters = {21: os.urandom(32)}  # the aggregator's, enrolled in both
    fleets = [Fleet(tmp_path / ("fleet%d" % n), aggregators=(21,), masters=masters,
                    first_id=first, slot_s=SLOT_S, gate_s=GATE_S, slots_ahead=1,
                    poll_ms=100, tick_ms=100, success_share=0.9)
              for n, first in ((1, 1001), (2, 2001))]  # fmt: skip
    agg_dir = tmp_path / "agg21"
    agg_dir.mkdir()
    fleets[0].identity(agg_dir / "identity.json", 21, "both")
    hubs, blocks = [], []
    try:
        for n, fleet in enumerate(fleets, 1):
            for soc in (90.0, 70.0):
                run(fleet.add(sim_settings={"soc_pct": soc}))
            run(start_all(fleet.devices))
            folder = tmp_path / ("hub%d" % n)
            folder.mkdir()
            fleet.hub_keys(folder / "hub-keys.json")
            settings = {
                "name": "hub%d" % n, "store": "hub.sqlite", "keys_file": "hub-keys.json",
                "group_addr": fleet.group_addr, "group_port": fleet.group_port,
                "interface": "127.0.0.1", "device_port": fleet.tcp_port, "slot_s": SLOT_S,
                "gate_s": GATE_S, "discovery_s": 0.25, "answer_s": 1.0,
                "bind_timeout_s": 0.8, "market_bind": "127.0.0.1", "market_port": free_port(),
            }  # fmt: skip
            (folder / "hub.toml").write_text(toml({"hub": settings}))
            admit = Gridbid("hub", "admit", "--config", folder / "hub.toml", "--aggregator",
                            21, "--name", "both", "--host", "127.0.0.1", "--out",
                            agg_dir / ("market-hub%d.json" % n), cwd=ROOT)  # fmt: skip
            assert admit.finish(30) == 0, admit.output
            blocks += ["", "[[market]]", 'admission = "market-hub%d.json"' % n]
        (agg_dir / "aggregator.toml").write_text("\n".join(
            ["[aggregator]", 'identity = "identity.json"', 'strategy = "value"',
             "value = 24.0", "bidders = 3"] + blocks) + "\n")  # fmt: skip
        agg = Gridbid("aggregator", "run", "--config", agg_dir / "aggregator.toml", cwd=ROOT)
        hubs = [Gridbid("hub", "run", "--config", tmp_path / ("hub%d" % n) / "hub.toml",
                        "--slots", "2", cwd=ROOT) for n in (1, 2)]  # fmt: skip
        for name in ("hub1", "hub2"):
            agg.wait_for("trading in market %s" % name, 30)
        for hub in hubs:
            assert hub.finish(60) == 0, hub.output
        assert agg.interrupt() == 0, agg.output
    finally:
        for process in hubs + ([agg] if "agg" in locals() else []):
            process.stop()
        for fleet in fleets:
            run(fleet.close())
        run.stop()
    for n, fleet in enumerate(fleets, 1):
        db = tmp_path / ("hub%d" % n) / "hub.sqlite"
        made = rows(db, CONFIRMED_BY + " AND c.buyer = 21")
        assert {d for (d,) in made} == {d.device_id for d in fleet.devices}, hubs[n - 1].output
    assert "Traceback" not in agg.output, agg.output
