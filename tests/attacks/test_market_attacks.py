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


# --- floods, slow readers, oversized frames (issue 17: the market API "gets the same
# treatment"): each runs the real MarketServer on loopback with two admitted aggregators.


async def _session(server, keys, aggregator):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    session, _challenge = await wire.hello(reader, writer, aggregator, keys.market_key(aggregator))
    return reader, writer, session


async def _answer(reader, session, kind, ref=None, timeout=5):
    """The next message of this kind (and ref) the hub sends this session."""
    while True:
        tag, body = await asyncio.wait_for(wire.read_frame(reader, wire.MAX_FROM_HUB), timeout)
        msg = session.open(tag, body)
        if msg.get("type") == kind and (ref is None or msg.get("ref") == ref):
            return msg


def test_one_aggregators_flood_does_not_delay_anothers_bids(market):
    """Aggregator 2 sends as fast as TCP takes them: authentic frames of 256 KiB (the
    largest the hub reads) and small messages, never reading the hub's answers.
    Aggregator 1's bids are still answered within 250 ms each; the flooder's session
    is closed when the hub's buffer for it fills, and its audit rows stay capped."""
    name, _start = open_slot(market, 2)

    async def bids(server, keys, rounds):
        reader, writer, session = await _session(server, keys, 1)
        took = []
        for ref in range(rounds):
            began = time.monotonic()
            writer.write(session.seal({"type": "bid", "slot": name, "ref": ref, "layers": [
                {"device": 1001, "price": 16.0, "kwh": 0.01, "id": ref}]}))  # fmt: skip
            answer = await _answer(reader, session, "bid_result", ref)
            took.append(time.monotonic() - began)
            assert answer["accepted"] == 1, answer
            await asyncio.sleep(0.02)
        writer.close()
        return took

    async def flood(server, keys, stop):
        _reader, writer, session = await _session(server, keys, 2)
        pad = "x" * (wire.MAX_FRAME - 200)
        sent = 0
        try:
            while not stop.is_set():  # each sealed anew: a replayed frame ends the session
                big = session.seal({"type": "subscribe", "pad": pad})
                small = b"".join(session.seal({"type": "nonsense"}) for _ in range(200))
                writer.write(big + small)
                await writer.drain()
                sent += len(big) + len(small)
        except ConnectionError:
            pass  # closed by the hub: it stopped reading our answers
        return sent

    async def scenario(server, keys):
        quiet = await bids(server, keys, 10)
        stop = asyncio.Event()
        flooding = asyncio.create_task(flood(server, keys, stop))
        await asyncio.sleep(0.5)
        loud = await bids(server, keys, 40)
        stop.set()
        return quiet, loud, await flooding

    began = time.monotonic()
    quiet, loud, sent = _serve(market, scenario)
    assert sent > 20 << 20, sent  # the flood was a flood (>20 MB)
    assert max(loud) < 0.25, "bid answered in %.0f ms under the flood (quiet: %.0f ms)" % (
        1000 * max(loud),
        1000 * max(quiet),
    )
    seconds = int(time.monotonic()) - int(began) + 1
    rows = market.store.refusals(2, limit=100_000)
    assert len(rows) <= seconds * LIMITS["refusal_rows_per_s"], len(rows)


def test_a_frame_claiming_a_gigabyte_is_refused_before_it_is_read(market):
    async def scenario(server, keys):
        reader, writer, session = await _session(server, keys, 1)
        writer.write((1 << 30).to_bytes(4, "big") + b"\0" * 65536)  # the rest never comes
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 3)  # closed: not waiting for 1 GB

    said = _serve(market, scenario)  # one untagged `refused`, then the end of the stream
    assert b'"refused"' in said and b"the limit is %d" % wire.MAX_FRAME in said, said[-200:]


def test_a_subscriber_that_stops_reading_is_dropped_and_the_others_hear_on(market):
    """A slow reader costs the hub at most its send buffer (SEND_BUFFER), then its
    session; the other subscriber still gets every slot."""
    from hub.market import server as market_server

    async def scenario(server, keys):
        r1, w1, s1 = await _session(server, keys, 1)
        _r2, w2, s2 = await _session(server, keys, 2)
        for writer, session in ((w1, s1), (w2, s2)):
            writer.write(session.seal({"type": "subscribe"}))
        await _answer(r1, s1, "welcome")
        await asyncio.sleep(0.2)
        heard = 0
        for _ in range(120):  # ~120 slots of 1,000 offers: ~10 MB each subscriber
            offers = [{"device": d, "kwh": 1.0, "reserve": 15.0, "max_kw": 5.0,
                       "address": "127.0.0.%d" % (d % 250)} for d in range(1000)]  # fmt: skip
            name, start = slot_at(2)
            market.open_slot(name, start, start - GATE_S, offers, 16.0)
            msg = await _answer(r1, s1, "slot")
            heard += len(msg["offers"]) == 1000
            await asyncio.sleep(0)
        buffered = [w.transport.get_write_buffer_size() for w in server.connections]
        await asyncio.sleep(0.3)  # its session's task sees the end and leaves
        return heard, buffered, 2 in market.participants

    heard, buffered, slow_still_there = _serve(market, scenario)
    assert heard == 120
    assert not slow_still_there  # its session was closed
    assert max(buffered) <= market_server.SEND_BUFFER + (1 << 20), buffered
