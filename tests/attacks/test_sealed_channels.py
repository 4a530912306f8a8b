"""Sealed bids, sniffed on every channel a stranger or a rival can read, with real parts:
a `gridbid hub run` process with its market API, MQTT bridge (a real mosquitto with the
repository's config and ACL), CoAP server and web page, two independent aggregator
processes posting marker prices, and firmware batteries on the VM.

From before the first offers until the first gate, the test reads everything: every
MQTT message the operator's account may read, every /ws event, the REST API polled
(slots, the open slot's book, aggregators, contracts), CoAP /price and /contracts as a
battery, and the hub's log at INFO. No marker price may show before the gate; after it
the book is published, and the same sniffers see the markers (so they could have)."""

import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import aiocoap
import pytest
import websockets
from aiocoap.numbers.optionnumbers import OptionNumber
from helpers.hub_site import GATE_S, SLOT_S, Background, start_all
from helpers.mqtt_broker import DEPLOY, Broker, Subscriber
from helpers.processes import Gridbid

from hub.config import keys_file
from protocol import auth, coap
from protocol.contract import parse_slot_name
from simulator.fleet import Fleet, free_port
from transport import secret_files

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="no mosquitto here"),
]
ROOT = Path(__file__).resolve().parents[2]
MARKERS = {11: 17.1234, 12: 18.4321}  # each aggregator's posted price: nobody else's
SHOWN = {k: ("%s" % p, "%.2f" % p) for k, p in MARKERS.items()}


class Sniffer:
    """(time, channel, text) of everything read, from threads."""

    def __init__(self):
        self.seen, self.stop = [], threading.Event()

    def add(self, channel, text):
        self.seen.append((time.time(), channel, text))

    def poll(self, name, fn, every_s=0.2):
        def run():
            while not self.stop.is_set():
                try:
                    self.add(name, fn())
                except OSError as exc:  # not up yet, or gone: reading goes on
                    self.add(name + " (error)", str(exc))
                self.stop.wait(every_s)

        threading.Thread(target=run, daemon=True).start()


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=5) as answer:
        return answer.read().decode()


async def websocket(url, sniffer):
    while not sniffer.stop.is_set():
        try:
            async with websockets.connect(url) as ws:
                async for message in ws:
                    sniffer.add("ws", message)
        except OSError:
            await asyncio.sleep(0.1)


async def coap_reads(port, device, key, sniffer):
    ctx = await aiocoap.Context.create_client_context(transports=["udp6"])
    try:
        while not sniffer.stop.is_set():
            for path in ("price", "contracts/%d" % device):
                value = coap.sign_request(key, device, coap.GET, path, int(time.time() * 1000),
                                          random.getrandbits(32))  # fmt: skip
                msg = aiocoap.Message(code=aiocoap.GET, uri="coap://127.0.0.1:%d/%s" % (port, path))
                msg.opt.add_option(OptionNumber(coap.AUTH).create_option(value=value))
                try:
                    answer = await asyncio.wait_for(ctx.request(msg).response, 2)
                    sniffer.add("coap " + path, answer.payload.decode("utf-8", "replace"))
                except (asyncio.TimeoutError, aiocoap.error.Error) as exc:
                    sniffer.add("coap (error)", repr(exc))
            await asyncio.sleep(0.2)
    finally:
        await ctx.shutdown()


@pytest.fixture
def broker():
    certs = tempfile.mkdtemp(prefix="gridbid-certs-")
    subprocess.run(["sh", str(DEPLOY / "make-certs.sh"), certs], check=True, capture_output=True)
    folder = tempfile.mkdtemp(prefix="gridbid-mosquitto-")  # not under /tmp/pytest-of-root
    os.chmod(folder, 0o755)
    broker = Broker(folder, certs)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(certs, ignore_errors=True)


def test_no_bid_layer_shows_anywhere_before_the_gate(tmp_path, broker):
    run = Background()
    fleet = Fleet(tmp_path / "fleet", aggregators=tuple(MARKERS), slot_s=SLOT_S, gate_s=GATE_S,
                  slots_ahead=1, poll_ms=100, tick_ms=100)  # fmt: skip
    sniffer = Sniffer()
    processes = []
    try:
        for soc in (90.0, 75.0):
            run(fleet.add(sim_settings={"soc_pct": soc}))
        run(start_all(fleet.devices))
        hub_dir = tmp_path / "hub"
        hub_dir.mkdir()
        fleet.hub_keys(hub_dir / "hub-keys.json")
        login = {"username": "gridbid-hub", "password": broker.passwords["gridbid-hub"]}
        secret_files.write(hub_dir / "mqtt.json", login)
        keys = keys_file.load(hub_dir / "hub-keys.json")
        market_port, web_port, coap_port = free_port(), free_port(), free_port()
        (hub_dir / "hub.toml").write_text("\n".join([
            "[hub]", 'name = "hub"', 'store = "hub.sqlite"', 'keys_file = "hub-keys.json"',
            'group_addr = "%s"' % fleet.group_addr, "group_port = %d" % fleet.group_port,
            'interface = "127.0.0.1"', "device_port = %d" % fleet.tcp_port,
            "slot_s = %d" % SLOT_S, "gate_s = %d" % GATE_S, "discovery_s = 0.25",
            "answer_s = 1.0", "bind_timeout_s = 0.8", 'market_bind = "127.0.0.1"',
            "market_port = %d" % market_port, "",
            "[mqtt]", 'host = "127.0.0.1"', "port = %d" % broker.port,
            'credentials_file = "mqtt.json"', "",
            "[coap]", 'bind = "127.0.0.1"', "port = %d" % coap_port, "",
            "[web]", 'host = "127.0.0.1"', "port = %d" % web_port, "",
        ]))  # fmt: skip
        for key_id, price in MARKERS.items():
            folder = tmp_path / ("agg%d" % key_id)
            folder.mkdir()
            fleet.identity(folder / "identity.json", key_id, "agg%d" % key_id)
            admit = Gridbid("hub", "admit", "--config", hub_dir / "hub.toml", "--aggregator",
                            key_id, "--name", "agg%d" % key_id, "--host", "127.0.0.1", "--out",
                            folder / "market-hub.json", cwd=ROOT)  # fmt: skip
            assert admit.finish(30) == 0, admit.output
            (folder / "aggregator.toml").write_text(
                '[aggregator]\nidentity = "identity.json"\nstrategy = "utility"\n'
                'price = %s\ncapacity = 0.01\n\n[[market]]\nadmission = "market-hub.json"\n' % price
            )
        # The sniffers, up before anything is offered.
        mqtt = Subscriber(broker, topics=("#",), user="operator")
        mqtt.client.on_message = lambda _c, _u, msg: sniffer.add(
            "mqtt " + msg.topic, msg.payload.decode("utf-8", "replace"))  # fmt: skip
        base = "http://127.0.0.1:%d" % web_port
        for path in ("/api/slots?limit=5", "/api/aggregators", "/api/contracts?limit=50",
                     "/api/prices?limit=5"):  # fmt: skip
            sniffer.poll("rest " + path, lambda path=path: get(base, path))

        def open_book():
            slots = json.loads(get(base, "/api/slots?limit=1"))["items"]
            return get(base, "/api/slots/" + slots[0]["slot"]) if slots else ""

        sniffer.poll("rest /api/slots/<newest>", open_book)
        device = fleet.devices[0].device_id
        coap_key = auth.HmacKey(keys.coap_key(device))
        run.loop.call_soon_threadsafe(
            lambda: run.loop.create_task(websocket(base.replace("http", "ws") + "/ws", sniffer))
        )
        run.loop.call_soon_threadsafe(
            lambda: run.loop.create_task(coap_reads(coap_port, device, coap_key, sniffer))
        )
        hub = Gridbid("hub", "run", "--config", hub_dir / "hub.toml", "--slots", "3", cwd=ROOT)
        processes.append(hub)
        for key_id in MARKERS:
            processes.append(
                Gridbid(
                    "aggregator",
                    "run",
                    "--config",
                    tmp_path / ("agg%d" % key_id) / "aggregator.toml",
                    cwd=ROOT,
                )
            )
        assert hub.finish(90) == 0, hub.output
        time.sleep(1.0)  # what the gate published reaches every sniffer
        sniffer.stop.set()
        for agg in processes[1:]:
            assert agg.interrupt() == 0, agg.output
    finally:
        sniffer.stop.set()
        for process in processes:
            process.stop()
        run(fleet.close())
        run.stop()
    for line, at in zip(hub.lines, hub.times):
        sniffer.seen.append((at, "hub log", line))
    # The first slot with bids, and its gate.
    events = [json.loads(x) for _t, ch, x in sniffer.seen if ch == "ws"]
    bid_slots = sorted({e["slot"] for e in events if e.get("kind") == "bid"})
    assert bid_slots, "no bid event reached /ws after the gate:\n" + hub.output
    slot_s, gate_s, _maker, start = parse_slot_name(bid_slots[0])
    gate = start - gate_s
    channels = {ch.split(" ")[0] for _t, ch, _x in sniffer.seen if "(error)" not in ch}
    assert {"mqtt", "ws", "rest", "coap", "hub"} <= channels, channels
    before = [(t, ch, x) for t, ch, x in sniffer.seen if t < gate]
    assert len(before) > 50, "the sniffers read little before the gate"
    for _t, channel, text in before:
        for key_id, shown in SHOWN.items():
            assert not any(s in text for s in shown), (channel, key_id, text[:400])
    # After the gate the book is published: the same sniffers see both markers.
    after = " ".join(x for t, ch, x in sniffer.seen if t >= gate and ch.startswith(("ws", "rest")))
    for key_id, shown in SHOWN.items():
        assert any(s in after for s in shown), "aggregator %d's bids never showed" % key_id
    mqtt_after = " ".join(x for t, ch, x in sniffer.seen if t >= gate and ch.startswith("mqtt"))
    assert any(s in mqtt_after for shown in SHOWN.values() for s in shown)
