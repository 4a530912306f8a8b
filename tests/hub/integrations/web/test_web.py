"""The hub's status page (hub/integrations/web) against a real hub: firmware batteries on the
MicroPython VM (simulator.fleet), the hub in-process with [web] on a free loopback port,
its real SQLite store. The hub trades two slots (5 s, gate 3 s) and stays up, so
the batteries' telemetry keeps coming; a WebSocket client connected from the start
records every event the page got. The REST answers are checked against the store
read independently here (plain SQL), the live events against what the store
recorded, and every answer for the hub's secrets. About 20 s.
"""

import asyncio
import json
import secrets
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import websockets
from helpers.hub_site import SLOT_S, Background, deploy, hub_settings, start_all

from hub.config import hub_toml
from hub.integrations.settlement import schema as settlement_schema
from hub.service import Hub
from hub.store import Store
from protocol.contract import parse_slot_name
from simulator.fleet import Fleet

pytestmark = pytest.mark.timeout(120)
SLOTS = 2


async def collect(url, events):
    """Every message of /ws, from the first, into events."""
    async with websockets.connect(url.replace("http://", "ws://") + "ws") as ws:
        async for message in ws:
            events.append(json.loads(message))


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(hub, web server, events the page got, store path, token, keys file); the hub has
    traded SLOTS slots and still runs."""
    run = Background()
    folder = tmp_path_factory.mktemp("web")
    fleet = Fleet(folder / "fleet", aggregators=(1, 2), slot_s=SLOT_S, gate_s=3,
                  slots_ahead=1, poll_ms=100, tick_ms=100, success_share=0.9)  # fmt: skip
    hub, collector, events = None, None, []
    try:
        for soc in (90.0, 75.0, 60.0):
            run(fleet.add(sim_settings={"soc_pct": soc}))
        run(start_all(fleet.devices))
        deploy(fleet, folder)
        token = secrets.token_urlsafe(24)
        (folder / "web-token").touch(mode=0o600)
        (folder / "web-token").write_text(token + "\n")
        web = {"port": 0, "token_file": "web-token"}
        cfg = hub_toml.check(dict(hub_settings(fleet), web=web), base=folder)

        async def start():
            hub = Hub(cfg, seed=5)
            trading = asyncio.ensure_future(hub.run(SLOTS))
            while not hub.integrations and not trading.done():
                await asyncio.sleep(0.005)
            return hub, trading

        hub, trading = run(start())
        web = hub.integrations["web"]
        collector = asyncio.run_coroutine_threadsafe(collect(web.url, events), run.loop)
        run(asyncio.wait_for(trading, SLOTS * SLOT_S + 25))
        yield hub, web, events, folder / "hub.sqlite", token, folder / "hub-keys.json"
    finally:
        if collector is not None:
            collector.cancel()
        if hub is not None:
            run(hub.close())
        run(fleet.close())
        run.stop()


def sql(db, query, *params):
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(query, params)]


def get(web, path, expect=200, **params):
    response = httpx.get(web.url.rstrip("/") + path, params=params, timeout=10)
    assert response.status_code == expect, (path, response.status_code, response.text)
    return response.json()


def until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.05)
    return found


def test_slots_show_each_auction_from_offers_to_clearing(live):
    hub, web, _events, db, _token, _keys = live
    items = get(web, "/api/slots", limit=10)["items"]
    stored = sql(db, "SELECT DISTINCT slot FROM bids")
    assert {s["slot"] for s in items} == {r["slot"] for r in stored} and len(items) == SLOTS
    cleared = [s for s in items if s["price"] is not None]
    assert cleared, items
    for summary in cleared:
        slot = summary["slot"]
        asks = sql(db, "SELECT owner, price, kwh FROM bids WHERE slot = ? AND side = 'ask'", slot)
        reserve = sum(a["price"] * a["kwh"] for a in asks) / sum(a["kwh"] for a in asks)
        fills = sql(db, "SELECT price, kwh, order_id FROM trades WHERE slot = ? AND side = 'bid'",
                    slot)  # fmt: skip
        assert summary["offers"] == len(asks)
        assert summary["reserve"] == pytest.approx(reserve)
        assert summary["price"] == pytest.approx(fills[0]["price"])
        assert summary["volume_kwh"] == pytest.approx(sum(f["kwh"] for f in fills))
        assert summary["improvement"] == pytest.approx((fills[0]["price"] - reserve) / reserve)
        book = get(web, "/api/slots/" + slot)
        # The progression: every ask at its reserve, every bid layer with its aggregator
        # and battery, in the order they arrived, and what each won at the clearing.
        layers = sql(db, "SELECT * FROM bids WHERE slot = ? AND side = 'bid' ORDER BY order_id",
                     slot)  # fmt: skip
        assert [b["order_id"] for b in book["bids_list"]] == [r["order_id"] for r in layers]
        names = hub.aggregators()
        assert [b["aggregator"] for b in book["bids_list"]] == [names[r["owner"]] for r in layers]
        assert [b["device"] for b in book["bids_list"]] == [int(r["ref"].split(":")[1])
                                                             for r in layers]  # fmt: skip
        won = {f["order_id"]: f["kwh"] for f in fills}
        assert [b["won_kwh"] for b in book["bids_list"]] == [won.get(r["order_id"], 0.0)
                                                          for r in layers]  # fmt: skip
        assert sorted(o["reserve"] for o in book["offers_list"]) == sorted(a["price"] for a in asks)
        assert {c["slot"] for c in book["contracts"]} <= {slot}
    trades = get(web, "/api/trades", slot=cleared[0]["slot"], limit=500)["items"]
    assert len(trades) == len(sql(db, "SELECT id FROM trades WHERE slot = ?", cleared[0]["slot"]))
    get(web, "/api/slots/rt5sgate3s.hub.5", expect=404)  # well-formed, never traded


def test_competition_metrics_match_the_store(live):
    hub, web, _events, db, _token, _keys = live
    rows = {a["name"]: a for a in get(web, "/api/aggregators")["items"]}
    assert set(rows) == set(hub.aggregators().values())
    for key_id, name in hub.aggregators().items():
        row = rows[name]
        layers = sql(db, "SELECT slot, order_id FROM bids WHERE side = 'bid' AND owner = ?",
                     key_id)  # fmt: skip
        fills = sql(db, "SELECT kwh, price FROM trades WHERE side = 'bid' AND owner = ?",
                    key_id)  # fmt: skip
        assert row["bids"] == len(layers) and row["won"] == len(fills)
        assert row["win_rate"] == pytest.approx(len(fills) / len(layers))
        assert row["kwh"] == pytest.approx(sum(f["kwh"] for f in fills))
        assert row["money"] == pytest.approx(sum(f["kwh"] * f["price"] for f in fills))
        hosted = {a["key_id"]: a["strategy"] for a in hub.cfg["aggregators"]}
        assert row["strategy"] == hosted[key_id] and row["paused"] is False
    assert sum(r["won"] for r in rows.values()) > 0
    totals = get(web, "/api/status")["totals"]
    assert totals["cleared_slots"] >= 1 and totals["kwh"] > 0
    assert totals["improvement"] == pytest.approx(
        (totals["price"] - totals["reserve"]) / totals["reserve"]
    )


def test_the_live_gain_by_competition_matches_the_store(live):
    """Per cleared slot: how many aggregators bid, what sold at what price, and the
    reserves (ask layers' prices) of exactly what sold, grouped by that number."""
    _hub, web, _events, db, _token, _keys = live
    asks = {
        (r["slot"], r["order_id"]): r["price"]
        for r in sql(db, "SELECT slot, order_id, price FROM bids WHERE side = 'ask'")
    }
    groups = {}
    for slot in {r["slot"] for r in sql(db, "SELECT slot FROM trades")}:
        sold = sql(db, "SELECT order_id, kwh, price FROM trades WHERE slot = ? AND side = 'ask'",
                   slot)  # fmt: skip
        n = sql(db, "SELECT count(DISTINCT owner) AS n FROM bids WHERE slot = ? AND side = 'bid'",
                slot)[0]["n"]  # fmt: skip
        g = groups.setdefault(n, [0, 0.0, 0.0, 0.0])
        g[0] += 1
        for t in sold:
            g[1] += t["kwh"]
            g[2] += t["kwh"] * t["price"]
            g[3] += t["kwh"] * asks[slot, t["order_id"]]
    items = get(web, "/api/competition")["items"]
    assert [r["aggregators"] for r in items] == sorted(groups) and items
    for r in items:
        slots, kwh, paid, at_reserve = groups[r["aggregators"]]
        assert r["slots"] == slots and r["kwh"] == pytest.approx(kwh)
        assert r["price"] == pytest.approx(paid / kwh)
        assert r["reserve"] == pytest.approx(at_reserve / kwh)
        assert r["improvement"] == pytest.approx(paid / at_reserve - 1)


def test_devices_show_live_status_and_history(live):
    hub, web, _events, db, _token, _keys = live
    devices = {d["id"]: d for d in get(web, "/api/devices")["items"]}
    assert set(devices) == set(hub.registry.devices)
    for device_id, row in devices.items():
        stored = sql(db, "SELECT * FROM devices WHERE id = ?", device_id)[0]
        assert 0 < row["soc"] <= 100 and row["voltage"] > 0 and row["health"] == 0
        assert row["failures"] == 0 and row["last_seen"] <= stored["last_seen"]
        assert row["address"] == hub.registry.devices[device_id].address
    device_id = min(devices)
    first = get(web, "/api/telemetry/%d" % device_id, limit=2)["items"]
    assert len(first) == 2 and first[0]["at"] >= first[1]["at"]  # newest first
    # Telemetry keeps coming after the hub stopped trading: the page's data moves.
    until(lambda: get(web, "/api/telemetry/%d" % device_id, limit=1)["items"][0]["at"]
          > first[0]["at"], 5, "a newer reading")  # fmt: skip
    prices = get(web, "/api/prices", limit=5)["items"]
    assert len(prices) == SLOTS and all(p["slot"] for p in prices)


def test_contracts_page_filter_and_show_their_history(live):
    _hub, web, _events, db, _token, _keys = live
    everything = get(web, "/api/contracts", limit=500)
    assert everything["total"] == len(everything["items"]) >= 3
    pages = [get(web, "/api/contracts", limit=2, offset=k)["items"] for k in range(0, 500, 2)]
    paged = [c["id"] for page in pages for c in page]
    assert sorted(paged) == sorted(c["id"] for c in everything["items"])  # no gap, no repeat
    device = everything["items"][0]["device"]
    mine = get(web, "/api/contracts", device=device)["items"]
    assert mine and {c["device"] for c in mine} == {device}
    # A final state stays: those the store holds now must all be in the answer.
    done = until(lambda: sql(db, "SELECT id FROM contracts WHERE state = 'CompletedSuccess'"),
                 3 * SLOT_S, "a completed contract")  # fmt: skip
    shown = get(web, "/api/contracts", state="CompletedSuccess", limit=500)["items"]
    assert {c["state"] for c in shown} == {"CompletedSuccess"}
    assert {r["id"] for r in done} <= {c["id"] for c in shown}
    one = get(web, "/api/contracts/" + mine[0]["id"])
    history = sql(db, "SELECT to_state FROM contract_states WHERE contract = ? ORDER BY id",
                  mine[0]["id"])  # fmt: skip
    assert [h["to_state"] for h in one["history"]][: len(history)] == [
        h["to_state"] for h in history]  # fmt: skip
    assert one["history"][0]["to_state"] == "Created" and one["json"]["ContractId"] == one["id"]
    get(web, "/api/contracts/no-such-contract", expect=404)


@pytest.mark.parametrize("path, params, named", [
    ("/api/contracts", {"state": "Nonsense"}, "state"),
    ("/api/contracts", {"limit": 501}, "limit"),
    ("/api/contracts", {"limit": 0}, "limit"),
    ("/api/contracts", {"offset": -1}, "offset"),
    ("/api/contracts", {"device": "abc"}, "device"),
    ("/api/trades", {"slot": "not-a-slot"}, "slot"),
    ("/api/telemetry/x", {}, "device"),
    ("/api/slots/rt5sgate3s", {}, "slot"),
])  # fmt: skip
def test_bad_parameters_are_422_naming_them(live, path, params, named):
    body = get(live[1], path, expect=422, **params)
    assert body["error"].startswith(named + ":"), body


def test_settlements_show_what_the_table_holds(live):
    _hub, web, _events, db, _token, _keys = live
    assert get(web, "/api/settlements")["items"] == []  # no settlement: no tables, no rows
    ids = [r["id"] for r in sql(db, "SELECT id FROM trades ORDER BY id LIMIT 2")]
    with Store(db) as store:  # the settlement's tables, as its uploader makes them
        settlement_schema.migrate(store.db)
    with sqlite3.connect(db) as conn:  # as the settlement engine records a batch
        conn.execute(
            "INSERT INTO settlements (id, trade_ids, tx_signature, status, at) "
            "VALUES ('batch-1', ?, '5sig', 'confirmed', ?)",
            (json.dumps(ids), 1.0),
        )
    rows = get(web, "/api/settlements", status="confirmed")["items"]
    expected = {"id": "batch-1", "trade_ids": ids, "tx_signature": "5sig",
                "status": "confirmed", "at": 1.0}  # fmt: skip
    assert len(rows) == 1 and rows[0] | expected == rows[0]  # and what columns come later
    assert get(web, "/api/settlements/batch-1") | expected == get(web, "/api/settlements/batch-1")
    get(web, "/api/settlements/batch-2", expect=404)
    assert get(web, "/api/settlements", status="failed")["items"] == []


def test_the_stream_carried_every_event_the_store_recorded(live):
    _hub, _web, events, db, _token, _keys = live
    assert events[0]["kind"] == "hello"
    ids = [tuple(map(int, e["id"].split("."))) for e in events[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)  # in order, none twice
    kinds = {e["kind"] for e in events}
    assert {"device", "telemetry", "offer", "bid", "price", "clearing", "contract"} <= kinds
    layers = sql(db, "SELECT slot, owner, price FROM bids WHERE side = 'bid' ORDER BY id")
    bids = [e for e in events if e["kind"] == "bid"]
    assert [(b["slot"], b["price"]) for b in bids] == [(r["slot"], r["price"]) for r in layers]
    for clearing in (e for e in events if e["kind"] == "clearing"):
        price = sql(db, "SELECT max(price) AS p FROM trades WHERE slot = ?", clearing["slot"])
        assert clearing["price"] == pytest.approx(price[0]["p"])
    contracts = {r["id"] for r in sql(db, "SELECT id FROM contracts")}
    assert {e["contract"] for e in events if e["kind"] == "contract"} == contracts


def test_controls_need_the_token(live):
    hub, web, events, db, token, _keys = live
    url = web.url + "api/controls"
    device = min(hub.registry.devices)
    body = {"name": "reserve_floor.%d" % device, "value": 30.0}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-wrong-token"},
        {"Authorization": "Basic " + token},
        {"Authorization": "Bearer " + token[:-1]},
    ):
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert hub.controls.values == {}
    auth = {"Authorization": "Bearer " + token}
    bad = httpx.post(url, json={"name": "reserve_floor.999", "value": 30.0}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"] == "no battery '999'"
    bad = httpx.post(url, json={"name": "paused.value", "value": 3}, headers=auth)
    assert bad.status_code == 400 and "true or false" in bad.json()["error"]
    assert httpx.post(url, json={"name": 5}, headers=auth).status_code == 422
    mark = len(events)
    done = httpx.post(url, json=body, headers=auth)
    assert done.status_code == 200 and hub.controls.values == {body["name"]: 30.0}
    stored = sql(db, "SELECT name, value, by FROM controls")
    assert stored == [{"name": body["name"], "value": "30.0", "by": "web"}]
    until(lambda: any(e["kind"] == "control" for e in events[mark:]), 5, "the control event")
    shown = get(web, "/api/controls")
    assert shown["controls"] == {body["name"]: 30.0} and shown["history"][0]["by"] == "web"
    cleared = httpx.post(url, json={"name": body["name"], "value": None}, headers=auth)
    assert cleared.status_code == 200 and hub.controls.values == {}


def test_no_secret_in_any_answer(live):
    hub, web, events, _db, token, keys_file = live
    keys = json.loads(keys_file.read_text())
    hexes = [keys["group"], keys["master"]]  # the hub's, and its CoAP keys of batteries
    hexes += [hub.cfg["keys"].coap_key(d).hex() for d in hub.registry.devices]
    for agg in hub.cfg["aggregators"]:  # the hosted aggregators' own secrets and pair keys
        own = json.loads(Path(agg["identity_file"]).read_text())
        hexes += [own["master"]] + [agg["identity"].pair_key(d).hex()
                                    for d in hub.registry.devices]  # fmt: skip
    assert len(hexes) == 2 + 3 + 2 * 4
    slot = get(web, "/api/slots")["items"][0]["slot"]
    contract = get(web, "/api/contracts")["items"][0]["id"]
    paths = ["/", "/static/app.js", "/static/style.css", "/openapi.json", "/api/status",
             "/api/slots", "/api/slots/" + slot, "/api/trades", "/api/prices", "/api/stats",
             "/api/aggregators", "/api/devices", "/api/telemetry/%d" % min(hub.registry.devices),
             "/api/contracts", "/api/contracts/" + contract, "/api/settlements", "/api/controls",
             "/api/contracts?state=x", "/plot", "/nothing", "/api/platform",
             "/api/platform/certificates", "/api/platform/proposals", "/api/platform/rewards",
             "/api/platform/certificates?status=x"]  # fmt: skip
    answers = []
    for path in paths:
        response = httpx.get(web.url.rstrip("/") + path)
        answers.append(str(response.headers) + response.text)
    for body in ({"name": "paused.value", "value": False}, {"name": "x", "value": token}):
        for headers in ({"Authorization": "Bearer " + token}, {}):
            response = httpx.post(web.url + "api/controls", json=body, headers=headers)
            answers.append(str(response.headers) + response.text)
    assert '"enabled":false' in answers[paths.index("/api/platform")]  # no platform here
    assert not any(token in a for a in answers)  # a bad value is not echoed back either
    text = "\n".join(answers + [json.dumps(e) for e in events])
    for secret in hexes:
        assert secret.lower() not in text.lower(), "a key reached the page"
    assert "keyring" not in text


def test_the_book_is_sealed_until_the_gate(live):
    """No bid layer leaves the hub before its slot's gate closes: no "bid" event (so not on
    /ws, nor MQTT, which forwards events), and the REST views hide an open slot's layers
    (its asks, offers at their reserve, stay public); after the gate the book is
    published whole, for audit."""
    _hub, web, events, db, _token, _keys = live
    bids = [e for e in events if e["kind"] == "bid"]
    assert bids, "no bid was published at all"
    for event in bids:
        _length, gate_s, _maker, start = parse_slot_name(event["slot"])
        assert event["at"] >= start - gate_s, event  # at the gate, never before
    # A slot whose gate is still open, with a bid layer of each aggregator in the store.
    now = int(time.time())
    slot = "rt%dsgate3s.hub.%d" % (SLOT_S, now - now % SLOT_S + 10 * SLOT_S)
    device = sql(db, "SELECT id FROM devices LIMIT 1")[0]["id"]
    before = get(web, "/api/aggregators")
    with Store(db) as store:
        store.record_bid(slot, 0, "ask", device, 15.0, 1.0, ref="offer:%d" % device)
        store.record_bid(slot, 1, "bid", 1, 21.5, 1.0, ref="bid:%d" % device)
        store.record_bid(slot, 2, "bid", 2, 23.25, 1.0, ref="bid:%d" % device)
    book = get(web, "/api/slots/" + slot)
    assert book["sealed"] and book["bids_list"] == [] and len(book["offers_list"]) == 1
    assert book["best_bid"] is None and book["bid_layers"] is None and book["bidders"] is None
    row = next(r for r in get(web, "/api/slots")["items"] if r["slot"] == slot)
    assert row["sealed"] and row["best_bid"] is None
    assert get(web, "/api/aggregators") == before  # no count or mean moved
    everything = json.dumps([get(web, p) for p in ("/api/slots", "/api/slots/" + slot,
                                                   "/api/aggregators", "/api/status")])  # fmt: skip
    assert "21.5" not in everything and "23.25" not in everything
    # Past its gate, the same slot's book is shown whole.
    gated = "rt%dsgate3s.hub.%d" % (SLOT_S, now - now % SLOT_S - 10 * SLOT_S)
    with Store(db) as store:
        store.record_bid(gated, 0, "bid", 1, 21.5, 1.0, ref="bid:%d" % device)
    shown = get(web, "/api/slots/" + gated)
    assert not shown["sealed"] and [b["price"] for b in shown["bids_list"]] == [21.5]
