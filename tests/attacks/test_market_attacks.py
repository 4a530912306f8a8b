"""Attacks on the market API and what feeds it (security review). Each test is an
attack that worked when written: it fails until the hole is closed."""

import asyncio
import json
import time

import pytest

from aggregator.identity import Identity
from aggregator.strategy_config import make_strategy
from aggregator.trader import Trader
from hub import controls as hub_controls
from hub.config.keys_file import HubKeys
from hub.events import Events
from hub.ledger import Ledger
from hub.market.exchange import LIMITS, Exchange
from hub.market.grid import SlotGrid
from hub.market.maker import MarketMaker
from hub.market.server import MarketServer
from hub.store import Store
from protocol import auth, contract, frame, message
from transport import market_wire as wire
from transport.discovery import Discovery, Registry
from transport.links import now_ms

pytestmark = pytest.mark.timeout(60)
SLOT_S, GATE_S = 60, 20
DEVICES = (1001, 1002)


@pytest.fixture
def market(tmp_path):
    store = Store(tmp_path / "hub.sqlite")
    for device in DEVICES:
        store.add_device(device, device, "127.0.0.%d" % (device - 980))
    ex = Exchange(MarketMaker(store, "hub", SLOT_S, GATE_S), Ledger(store, SLOT_S, GATE_S, "hub"),
                  store, hub_controls.Controls(store, Events()), "hub", {1: "one", 2: "two"},
                  47401)  # fmt: skip
    yield ex
    store.close()


def slot_at(ahead):
    start = int(time.time() // SLOT_S + ahead) * SLOT_S
    return SlotGrid(SLOT_S, GATE_S, 0.0).slot_name("hub", start), start


def open_slot(ex, ahead):
    name, start = slot_at(ahead)
    for d in DEVICES:
        ex.market.offer(name, d, 1.0, 15.0, ref="offer:%d" % d)
    ex.open_slot(name, start, start - GATE_S, [
        {"device": d, "kwh": 1.0, "reserve": 15.0, "max_kw": 5.0, "address": "127.0.0.1"}
        for d in DEVICES], 16.0)  # fmt: skip
    return name, start


def test_a_rival_cannot_take_a_batterys_receipt_by_reporting_its_confirm_id(market):
    got = {1: [], 2: []}
    p = {k: market.join(k, got[k].append) for k in got}
    victims_confirm = 0x1234  # aggregator 2's BidConfirm id (ETP frames are not secret)
    for ahead, buyer, bid_id in ((2, 2, 77), (3, 1, 88)):
        name, start = open_slot(market, ahead)
        market.received(p[buyer], {"type": "bid", "slot": name, "layers": [
            {"device": 1001, "price": 20.0, "kwh": 1.0, "id": 1}]})  # fmt: skip
        result, trades = market.market.close(name, start - GATE_S)
        market.close_slot(name, start, result, trades, set())
        report = {"type": "contract", "slot": name, "device": 1001, "bid_id": bid_id,
                  "price": result.price, "kwh": 1.0, "kw": 5.0}  # fmt: skip
        market.received(p[buyer], dict(report, state="Received"))
        market.received(p[buyer], dict(report, state="Confirmed", confirm_id=victims_confirm))
        market.finish(name)
    # battery 1001's receipt answering aggregator 2's BidConfirm
    moved = market.ledger.reported(
        1001, None, victims_confirm, contract.OUTCOME_CODES[contract.COMPLETED_SUCCESS], 0.9
    )
    assert moved is not None and moved[0]["buyer"] == 2, "the receipt went to aggregator 1"


def test_a_group_member_cannot_set_another_batterys_offer():
    keys = HubKeys(b"m" * 32, b"g" * 32)
    hub = Discovery(frame.Codec(keys.etp, key_id=1, group_replay=auth.ReplayGuard(4096)),
                    Registry(), "239.1.1.1", 1)  # fmt: skip
    b = 1002
    genuine = frame.Codec(auth.Keyring({1: keys.etp_key(b)}, group=b"g" * 32), key_id=b)
    forger = frame.Codec(auth.Keyring({1: keys.etp_key(1001)}, group=b"g" * 32), key_id=b)

    def answer(codec, message_id, reserve, group):
        msg = message.query_response(message_id, b, reserve, 1.0, 50.0, 5.0, 0, 400.0, 5.0)
        return codec.seal(msg, now_ms(), group=group, to=None if group else 1)

    ids = message.MessageIds(now_ms())
    # the battery's own answers are sealed for the hub (firmware node.send_group); battery
    # 1001 names 1002 on the group, and sealed with its own key for the hub
    hub.datagram_received(answer(genuine, ids.next(), 15.0, False), ("127.0.0.22", 5))
    hub.datagram_received(answer(forger, 2**64 - 1, 0.01, True), ("10.6.6.6", 5))
    hub.datagram_received(answer(forger, 2**64 - 2, 0.01, False), ("10.6.6.6", 5))
    hub.datagram_received(answer(genuine, ids.next(), 15.0, False), ("127.0.0.22", 5))
    info = hub.registry.devices[b]
    assert (info.address, info.reserve) == ("127.0.0.22", 15.0)


def test_a_trader_buys_only_what_it_bid_for():
    trader = Trader(Identity(2, "acme", b"s" * 32), make_strategy(
        {"strategy": "value", "value": 30.0, "key_id": 2, "budget": 100.0, "capacity": 10.0,
         "spread": 0, "margin": 0.1, "bidders": 1}, 1))  # fmt: skip
    asked = []

    async def ask(device, msg, timeout_s, reply_to=0):
        asked.append(msg)  # what would leave, sealed with the aggregator's pair key

    trader.ask, trader.link = ask, lambda *a: None

    class Link:  # another company's market (a MarketLink's trust)
        market, trusted = "hub", False

        def send(self, msg):
            pass

    async def scenario():  # the hub's word alone: a fill of a slot it never bid in
        trader.on_message(Link(), {"type": "fills", "slot": "never", "start": 0, "price": 999.0,
                                   "fills": [{"device": 1001, "kwh": 50.0, "address": "x",
                                              "port": 1}]})  # fmt: skip
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert not asked, "the aggregator bid 999 c/kWh for 50 kWh it never asked for"


def _serve(market, scenario):
    async def run():
        keys = HubKeys(b"m" * 32, b"g" * 32)
        server = await MarketServer(market, keys, "127.0.0.1", 0, hello_s=2.0).start()
        try:
            return await scenario(server, keys)
        finally:
            await server.close()

    return asyncio.run(run())


def test_idle_strangers_do_not_lock_admitted_aggregators_out(market):
    async def scenario(server, keys):
        idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(64)]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await wire.hello(reader, writer, 1, keys.market_key(1))
        finally:
            for _r, w in idle:
                w.close()

    _serve(market, scenario)  # WireError: "the hub refused: 64 sessions already"


def test_a_deeply_nested_hello_is_refused_like_any_bad_hello(market, caplog):
    async def scenario(server, keys):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        body = b"[" * 5000
        writer.write((len(body) + 16).to_bytes(4, "big") + bytes(16) + body)
        return await asyncio.wait_for(reader.read(), 3)

    said = _serve(market, scenario)
    assert b"refused" in said
    assert "Unhandled exception" not in caplog.text


def test_one_aggregators_sessions_share_its_limits(market):
    async def scenario(server, keys):
        # Five sessions in turn under one aggregator id (each new one ends the last),
        # each sending 30 refused messages: the audit rows are the aggregator's, capped.
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            session, _challenge = await wire.hello(reader, writer, 1, keys.market_key(1))
            writer.write(b"".join(session.seal({"type": "nonsense"}) for _ in range(30)))
            await writer.drain()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)

    began = time.monotonic()
    _serve(market, scenario)
    seconds = int(time.monotonic()) - int(began) + 1
    rows = market.store.refusals(1, limit=10_000)
    assert len(rows) <= seconds * LIMITS["refusal_rows_per_s"], len(rows)


def test_a_revoked_aggregators_session_hears_no_more_offers(market):
    got = []
    p = market.join(2, got.append)
    market.received(p, {"type": "subscribe"})
    market.store.set_control("revoked.2", True, "gridbid hub revoke")
    market._read_at = 0.0
    market.received(p, {"type": "subscribe"})  # noticed: refused
    open_slot(market, 2)
    assert got[-1]["type"] != "slot", json.dumps(got[-1])[:200]
