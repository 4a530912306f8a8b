"""/metrics (hub/integrations/web/metrics.py) on a real hub process: `gridbid hub run`
with its page and its market API on loopback, firmware batteries on the MicroPython VM
(simulator.fleet), its real SQLite store, settlement on its in-process chain, MQTT to a
port where no broker listens. The hub trades until a contract has its outcome (2-3 slots
of 5 s); the tests then scrape /metrics over HTTP, parse it with prometheus_client's own
parser and check the figures against what happened: the store (read here with plain
SQL), its files' sizes, the process's RSS in /proc, the bad ETP datagram, market API
frame and market messages a test sends. About 20 s."""

import asyncio
import json
import re
import socket
import sqlite3
import struct

import httpx
import pytest
from helpers.hub_site import SLOT_S, Background, deploy, start_all, write_keys
from helpers.processes import Gridbid
from helpers.waiting import until
from prometheus_client.parser import text_string_to_metric_families

from hub.config import hub_toml
from hub.integrations.settlement.records import FINAL_STATES
from hub.service import Hub
from protocol.contract import STATE_NAMES
from simulator import vm
from simulator.fleet import Fleet, free_port
from transport import market_wire

pytestmark = pytest.mark.timeout(150)
SLOT_LINE = re.compile(r"slot \S+: \d+ offers")
ETP_REASONS = {"length", "header", "type", "value", "unknown_key", "tag", "replay", "expired",
               "contract", "impersonation", "other"}  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(the hub process, its page's URL, its folder, the fleet); it has run 2 slots and a
    contract has its outcome."""
    run = Background()
    folder = tmp_path_factory.mktemp("metrics")
    fleet = Fleet(folder / "fleet", aggregators=(1, 2), slot_s=SLOT_S, gate_s=3,
                  slots_ahead=1, poll_ms=100, tick_ms=100, success_share=0.9)  # fmt: skip
    hub = None
    try:
        for soc in (90.0, 70.0):
            run(fleet.add(sim_settings={"soc_pct": soc}))
        run(start_all(fleet.devices))
        config, _store = deploy(
            fleet, folder, market_port=free_port(), market_bind="127.0.0.1", disk_budget_mb=1000
        )
        # The page; settlement on the in-process chain (LiteSVM); MQTT to a port where no
        # broker listens (its link is down: every event waits in the outbox).
        with open(config, "a") as f:
            f.write('\n[web]\nport = 0\n\n[settlement]\nwallets = "wallets"\nbatch_s = %d\n'
                    'poll_s = 0.5\n\n[mqtt]\nhost = "127.0.0.1"\nport = %d\n'
                    % (SLOT_S, free_port()))  # fmt: skip
        # Aggregator 3 is admitted to the market API; this test speaks for it (the probe).
        admit = Gridbid("hub", "admit", "--config", config, "--aggregator", 3, "--name",
                        "probe", "--host", "127.0.0.1", "--out", folder / "market-3.json",
                        cwd=vm.ROOT)  # fmt: skip
        assert admit.finish(30) == 0, admit.output
        hub = Gridbid("hub", "run", "--config", config, cwd=vm.ROOT)
        url = re.search(r"status page: (\S+)", hub.wait_for("status page: ", 40)).group(1)
        until(lambda: sum(1 for x in hub.lines if SLOT_LINE.search(x)) >= 2, 4 * SLOT_S + 30,
              "2 slots", lambda: "\n" + hub.output)  # fmt: skip
        final = "SELECT count(*) FROM contracts WHERE state IN (%s)" % ",".join(
            "'%s'" % state for state in FINAL_STATES)  # fmt: skip
        until(lambda: sql(folder / "hub.sqlite", final)[0][0], 2 * SLOT_S + 30,
              "a contract's outcome", lambda: "\n" + hub.output)  # fmt: skip
        yield hub, url, folder, fleet
    finally:
        if hub is not None:
            hub.stop()
        run(fleet.close())
        run.stop()


def scrape(url):
    response = httpx.get(url + "metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text, {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }  # fmt: skip


def sql(db, query):
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        return conn.execute(query).fetchall()


def stored(folder):
    """What the store holds now: {contracts by state, slots traded, the last trade's price,
    contracts settled}, and {sizes of the store's files, events in the MQTT outbox}, which
    only grow while the hub runs (no VACUUM, no WAL truncation, no broker)."""
    db = folder / "hub.sqlite"
    last = sql(db, "SELECT price FROM trades ORDER BY id DESC LIMIT 1")
    figures = {
        "states": dict(sql(db, "SELECT state, count(*) FROM contracts GROUP BY state")),
        "traded": sql(db, "SELECT count(DISTINCT slot) FROM trades")[0][0],
        "price": last[0][0] if last else None,
        "settled": sql(db, "SELECT count(*) FROM settlement_items")[0][0],
    }  # fmt: skip
    growing = {
        "db": db.stat().st_size, "wal": (folder / "hub.sqlite-wal").stat().st_size,
        "outbox": sql(folder / "gridbid-mqtt-outbox.sqlite", "SELECT count(*) FROM outbox")[0][0],
    }  # fmt: skip
    return figures, growing


def settled_scrape(url, folder, tries=5):
    """A scrape during which the store's figures did not change (the hub keeps trading):
    -> (text, samples, the store's figures, the growing ones before and after)."""
    for _ in range(tries):
        before, low = stored(folder)
        text, samples = scrape(url)
        after, high = stored(folder)
        if before == after:
            return text, samples, after, low, high
    raise AssertionError("the store changed during every one of %d scrapes" % tries)


def test_metrics_match_the_store_the_slots_and_the_process(site):
    hub, url, folder, fleet = site
    text, m, store, low, high = settled_scrape(url, folder)
    # Slots: every slot ran is counted, the traded ones are those the store has trades of.
    ran = sum(1 for x in hub.lines if SLOT_LINE.search(x))
    assert m[("gridbid_slots_total", ())] >= ran >= 2
    assert m[("gridbid_slots_traded_total", ())] == store["traded"] >= 1
    assert m[("gridbid_clearing_price_cents_per_kwh", ())] == pytest.approx(store["price"])
    # Contracts by state: each of the states, as the store has them (0 for none).
    states = store["states"]
    for state in STATE_NAMES:
        assert m[("gridbid_contracts", (("state", state),))] == states.get(state, 0), state
    assert sum(states.values()) >= 1
    # Settlement: its chain (in-process) answers; the backlog is every final contract
    # that no batch holds.
    final = sum(n for state, n in states.items() if state in FINAL_STATES)
    assert final >= 1
    assert m[("gridbid_settlement_backlog_contracts", ())] == final - store["settled"]
    assert m[("gridbid_link_up", (("link", "settlement"),))] == 1
    # MQTT: no broker, so the link is down and the events wait in the outbox.
    assert m[("gridbid_link_up", (("link", "mqtt"),))] == 0
    depth = m[("gridbid_mqtt_outbox_events", ())]
    assert low["outbox"] <= depth <= high["outbox"] and depth > 0
    # The store's size is its files'; the process's RSS is the one /proc shows for it.
    for name in ("db", "wal"):
        assert low[name] <= m[("gridbid_store_size_bytes", (("file", name),))] <= high[name]
    assert m[("gridbid_store_budget_bytes", ())] == 1e9  # hub.toml disk_budget_mb = 1000
    with open("/proc/%d/status" % hub.proc.pid) as f:
        vm_rss = 1024 * int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1))
    rss = m[("gridbid_process_resident_memory_bytes", ())]
    assert 0.8 * vm_rss < rss < 1.25 * vm_rss, (rss, vm_rss)
    # Links and traffic: both hosted aggregators in the market, both batteries heard.
    assert m[("gridbid_market_sessions", (("transport", "hosted"),))] == 2
    assert m[("gridbid_market_sessions", (("transport", "tcp"),))] == 0
    assert m[("gridbid_batteries", ())] == len(fleet.devices)
    assert m[("gridbid_etp_frames_sent_total", ())] >= 2  # a Query a slot at least
    assert m[("gridbid_etp_frames_received_total", ())] >= 2 * len(fleet.devices)
    # Nothing secret: no key of the hub's keys file is in the page.
    keys = json.loads((folder / "hub-keys.json").read_text())
    assert all(str(v) not in text for v in keys.values())


def test_refused_frames_are_counted_by_reason_and_labels_stay_fixed(site):
    _hub, url, folder, _fleet = site
    hub_cfg = (folder / "hub.toml").read_text()
    group = re.search(r'group_addr = "([^"]+)"', hub_cfg).group(1)
    group_port = int(re.search(r"group_port = (\d+)", hub_cfg).group(1))
    market_port = int(re.search(r"market_port = (\d+)", hub_cfg).group(1))
    _text, before = scrape(url)
    series = set(before)

    # A 10-byte datagram on the group: not an 84-byte ETP frame.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        sock.sendto(b"not a frame", (group, group_port))
    # A market API frame whose hello is no JSON (16-byte tag, then 4 bytes).
    with socket.create_connection(("127.0.0.1", market_port), timeout=5) as conn:
        conn.sendall(struct.pack(">I", 20) + bytes(16) + b"\xff\xfe{x")
        assert b"refused" in conn.recv(4096)

    etp = ("gridbid_etp_frames_refused_total", (("reason", "length"),))
    wire = ("gridbid_market_connections_refused_total", (("reason", "wire"),))
    got = until(lambda: (m := scrape(url)[1])[etp] > before[etp] and m[wire] > before[wire]
                and m, 10, "the refusals counted")  # fmt: skip
    assert got[etp] == before[etp] + 1 and got[wire] == before[wire] + 1
    received = ("gridbid_market_frames_received_total", ())
    assert got[received] == before[received] + 1  # the hello, before it was refused

    # Junk of every kind from every address adds no series: the reasons are a fixed set.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        for i in range(40):
            sock.sendto(bytes([i]) * (i * 7 % 100 + 1), (group, group_port))
    text, after = scrape(url)
    assert set(after) == series
    assert {dict(k[1])["reason"] for k in after if k[0] == etp[0]} == ETP_REASONS
    assert "127.0.0.1" not in text


def test_a_market_session_and_its_refused_messages_are_counted(site):
    _hub, url, folder, _fleet = site
    admission = json.loads((folder / "market-3.json").read_text())
    received, sent = (("gridbid_market_frames_%s_total" % way, ()) for way in ("received", "sent"))
    tcp = ("gridbid_market_sessions", (("transport", "tcp"),))
    bid, other = (("gridbid_market_messages_refused_total", (("type", kind),))
                  for kind in ("bid", "other"))  # fmt: skip

    async def session():
        reader, writer = await asyncio.open_connection("127.0.0.1", admission["port"])
        session, _challenge = await market_wire.hello(
            reader, writer, 3, bytes.fromhex(admission["key"])
        )
        try:
            before = scrape(url)[1]  # the hello is in, the session not yet
            # A bid for no open slot (refused as a bid), and a type of the peer's own
            # making (refused under "other": a peer's string is never a label value).
            for message in ({"type": "bid", "slot": "no-such-slot", "layers": []},
                            {"type": "frobnicate-" + "x" * 30}):  # fmt: skip
                writer.write(session.seal(message))
                await writer.drain()
                _tag, body = await market_wire.read_frame(reader, market_wire.MAX_FROM_HUB)
                assert market_wire.decode(body)["type"] == "error"
            during = scrape(url)[1]
        finally:
            writer.close()
            await writer.wait_closed()
        return before, during

    before, during = asyncio.run(session())
    assert before[tcp] == 0 and during[tcp] == 1  # a session joins with its first message
    assert during[bid] == before[bid] + 1 and during[other] == before[other] + 1
    assert during[received] == before[received] + 2  # the two messages
    assert during[sent] == before[sent] + 2  # the two error answers
    after = until(lambda: (m := scrape(url)[1])[tcp] == 0 and m, 10, "the session's end")
    assert not any("frobnicate" in dict(k[1]).get("type", "") for k in after)


def test_metrics_can_be_turned_off_and_the_setting_is_checked(tmp_path):
    write_keys(tmp_path / "hub-keys.json", [1])
    base = {"hub": {"store": "hub.sqlite", "keys_file": "hub-keys.json", "slot_s": 10,
                    "gate_s": 4}, "aggregator": [{"key_id": 1, "name": "a"}]}  # fmt: skip
    with pytest.raises(hub_toml.ConfigError) as error:
        hub_toml.check(dict(base, web={"port": 0, "metrics": "yes"}), base=tmp_path)
    assert str(error.value).count("\n") == 0 and "metrics must be true or false" in str(error.value)

    async def status_of_metrics(metrics):
        hub = Hub(hub_toml.check(dict(base, web={"port": 0, "metrics": metrics}), base=tmp_path))
        await hub.start_integrations()
        try:
            async with httpx.AsyncClient(base_url=hub.integrations["web"].url) as client:
                return (await client.get("/metrics")).status_code
        finally:
            await hub.close()

    assert asyncio.run(status_of_metrics(False)) == 404
    assert asyncio.run(status_of_metrics(True)) == 200
