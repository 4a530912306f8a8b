"""The hub's MQTT bridge (hub/bridge.py) against a real mosquitto.

Every broker here is deploy/mosquitto/mosquitto.conf itself, copied to a temporary
folder with only its ports and /etc, /var paths changed, with the repository's ACL,
certificates made by deploy/mosquitto/make-certs.sh and a password file made now with
`mosquitto_passwd -b` (random passwords: the repository holds none). Hubs are real Hub
objects (real store, real events); one test runs a real hub with firmware batteries.
"""

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap

import pytest
from helpers.hub_site import write_keys
from helpers.logs import into
from helpers.mqtt_broker import DEPLOY, Broker, Subscriber
from helpers.waiting import until, until_async
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hub.config import hub_toml
from hub.integrations.mqtt import bridge
from hub.integrations.mqtt import settings as mqtt_settings
from hub.integrations.mqtt.outbox import Outbox
from hub.service import Hub
from simulator import vm
from transport.discovery import DeviceInfo

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("mosquitto") is None, reason="no mosquitto here"),
]

ROOT = vm.ROOT
SLOT = "rt15gate5.hub1.1700000000"
DEVICE = 1001
FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.2}


# --- the broker -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    subprocess.run(["sh", str(DEPLOY / "make-certs.sh"), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out


@pytest.fixture
def broker(certs):
    # Not under pytest's tmp folder: as root, mosquitto runs as user mosquitto, who may
    # not enter /tmp/pytest-of-root (0700).
    folder = tempfile.mkdtemp(prefix="gridbid-mosquitto-")
    os.chmod(folder, 0o755)
    broker = Broker(folder, certs)
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


def hub_config_with(folder, mqtt_settings, name="hub1", **hub_settings):
    keys = folder / "hub-keys.json"
    if not keys.exists():
        write_keys(keys, [1, 2])
    data = {
        "hub": {"name": name, "store": "hub.sqlite", "interface": "127.0.0.1", "slot_s": 10,
                "gate_s": 3, **hub_settings},
        "aggregator": [{"key_id": 1, "name": "value"},
                       {"key_id": 2, "name": "adaptive", "strategy": "adaptive"}],
        "mqtt": mqtt_settings,
    }  # fmt: skip
    return hub_toml.check(data, base=folder)


def credentials_file(folder, user, password):
    path = folder / ("%s.json" % user)
    path.touch(mode=0o600)
    path.write_text(json.dumps({"username": user, "password": password}))
    return path.name


def settings_for(broker, folder, user="gridbid-hub", password=None, **more):
    password = broker.passwords[user] if password is None else password
    return {"host": "127.0.0.1", "port": broker.port, **FAST,
            "credentials_file": credentials_file(folder, user, password), **more}  # fmt: skip


async def started(cfg, logs):
    into(logs)
    hub = Hub(cfg)
    await hub.start_integrations()  # the hub's own plumbing: check() was run by hub_config
    return hub, hub.integrations["mqtt"]


def add_battery(hub, device=DEVICE):
    hub.store.add_device(device, device, "127.0.0.21")
    hub.registry.devices[device] = DeviceInfo(device, "127.0.0.21")


def emit_each_kind(hub, device=DEVICE):
    """One event of every kind, as the hub emits them (telemetry twice, status twice)."""
    emit = hub.events.emit
    out = [
        emit("device", device=device, address="127.0.0.21"),
        emit("telemetry", device=device, soc=81.0, remaining_kwh=8.1, voltage=51.2,
             power_kw=0.0, health=0),
        emit("offer", slot=SLOT, device=device, kwh=2.0, reserve=14.0),
        emit("bid", slot=SLOT, aggregator="value", device=device, price=17.5, kwh=2.0),
        emit("price", slot=SLOT, price=16.25, demand=2.0, supply=2.0),
        emit("clearing", slot=SLOT, start=1700000000, price=17.0, volume_kwh=2.0,
             reserve=14.0, offers=1, bid_layers=1,
             trades=[{"buyer": "value", "device": device, "kwh": 2.0}]),
        emit("contract", contract="c-1", device=device, buyer="value", slot=SLOT,
             start=1700000000, state="Confirmed", price=17.0, kwh=2.0, delivered_kwh=0.0),
        emit("telemetry", device=device, soc=79.5, remaining_kwh=7.95, voltage=51.0,
             power_kw=1.5, health=0),
        emit("failure", device=device, cause=3, aggregator="value"),
        emit("settlement", batch="batch-1", status="confirmed", signature="5xyz", trades=1),
    ]  # fmt: skip
    hub.set_control("paused.value", True, by="test")
    return out


def drained(bridge):
    return bridge.online and not bridge.handed and bridge.outbox.count() == 0


def no_secret(logs, broker):
    text = "\n".join(logs)
    for password in broker.passwords.values():
        assert password not in text, "a password is in the hub's log"
    assert "Traceback" not in text, text


def base_topic(event):
    kind = event["kind"]
    if kind in ("device", "failure"):
        return "device/%d/status" % event["device"]
    if kind == "telemetry":
        return "device/%d/telemetry" % event["device"]
    if kind in ("offer", "bid", "clearing"):
        return "market/" + kind
    return "control/" + event["name"] if kind == "control" else kind


# --- (1) topics, retained state, discovery, the Will --------------------------------------


@pytest.mark.parametrize("qos", [1, 2])
def test_events_arrive_on_documented_topics_with_retained_state(broker, tmp_path, qos):
    broker.start()
    logs = []
    live = Subscriber(broker, ("gridbid/#", "homeassistant/#"), user="homeassistant")
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, qos=qos))

    async def scenario():
        hub, bridge = await started(cfg, logs)
        add_battery(hub)
        sent = emit_each_kind(hub)
        await until_async(lambda: drained(bridge), 5, "every event acknowledged")
        await until_async(lambda: len(live.events()) >= 11, 5, "the events at the subscriber")
        later = Subscriber(broker, ("gridbid/#", "homeassistant/#"), user="homeassistant")
        await asyncio.sleep(0.3)  # retained messages come right after the SUBACK
        retained = {t: p for t, p, r in later.messages if r}
        later.close()
        await hub.close()
        return sent, retained

    sent, retained = asyncio.run(scenario())
    got = live.events()
    control = next(e for _t, e in got if e["kind"] == "control")
    sent.append(control)
    assert control["name"] == "paused.value" and control["value"] is True
    # every event, on its documented topic, as the hub emitted it, in order
    assert [(t, e["id"]) for t, e in got] == [
        ("gridbid/hub1/" + base_topic(e), e["id"]) for e in sent
    ]
    assert [e for _t, e in got[:-1]] == json.loads(json.dumps(sent[:-1]))
    # the last state of each retained topic; no stream topic is retained
    status = "gridbid/hub1/device/%d/" % DEVICE
    assert json.loads(retained[status + "status"])["kind"] == "failure"
    assert json.loads(retained[status + "telemetry"])["soc"] == 79.5
    assert json.loads(retained["gridbid/hub1/price"])["price"] == 16.25
    assert json.loads(retained["gridbid/hub1/market/clearing"])["volume_kwh"] == 2.0
    assert json.loads(retained["gridbid/hub1/control/paused.value"])["value"] is True
    assert retained["gridbid/hub1/status"] == b"online"
    for stream in ("market/offer", "market/bid", "contract", "settlement"):
        assert "gridbid/hub1/" + stream not in retained
    # Home Assistant: the battery's entities, each reading a topic the hub fills
    configs = {t: json.loads(p) for t, p in retained.items() if t.startswith("homeassistant/")}
    sensors = ("soc", "power", "charged", "discharged", "price", "status", "earnings",
               "contract_kw")  # fmt: skip
    assert set(configs) == {
        "homeassistant/sensor/gridbid_hub1_%d_%s/config" % (DEVICE, k) for k in sensors
    } | {"homeassistant/binary_sensor/gridbid_hub1_%d_contract/config" % DEVICE}
    for config in configs.values():
        assert config["state_topic"] in retained, config
        assert config["availability_topic"] == "gridbid/hub1/status"
        assert config["device"]["identifiers"] == ["gridbid_hub1_%d" % DEVICE]
    soc = configs["homeassistant/sensor/gridbid_hub1_%d_soc/config" % DEVICE]
    assert (soc["value_template"], soc["unit_of_measurement"]) == ("{{ value_json.soc }}", "%")
    for topic, config in configs.items():  # Home Assistant's schema (its 2025.10+ discovery)
        valid_config(topic, config)
    price = configs["homeassistant/sensor/gridbid_hub1_%d_price/config" % DEVICE]
    assert price["unit_of_measurement"] == "EUR/kWh"  # what the Energy dashboard takes
    assert not [x for x in logs if "refused" in x], logs  # the ACL lets every config in
    # a clean close says offline (the Will is for a hub that dies)
    assert [p for t, p, _r in live.messages if t == "gridbid/hub1/status"][-1] == b"offline"
    live.close()
    no_secret(logs, broker)


# Home Assistant's MQTT discovery schema, as its documentation lists it (the keys an MQTT
# sensor, binary sensor and their device block take; object_id is deprecated for
# default_entity_id "<domain>.<id>" and stops working in Core 2026.4).
SENSOR_KEYS = {
    "availability_topic", "device", "device_class", "default_entity_id", "enabled_by_default",
    "entity_category", "expire_after", "force_update", "icon", "json_attributes_template",
    "json_attributes_topic", "last_reset_value_template", "name", "options", "origin",
    "payload_available", "payload_not_available", "qos", "state_class", "state_topic",
    "suggested_display_precision", "unique_id", "unit_of_measurement", "value_template",
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
BINARY_SENSOR_KEYS = {
    "availability_topic", "device", "device_class", "default_entity_id", "enabled_by_default",
    "encoding", "entity_category", "entity_picture", "expire_after", "force_update", "icon",
    "json_attributes_template", "json_attributes_topic", "name", "off_delay", "origin",
    "payload_available", "payload_not_available", "payload_off", "payload_on", "qos",
    "state_topic", "unique_id", "value_template",
}  # fmt: skip
BINARY_SENSOR_CLASSES = {"power", "plug", "problem", "running", "connectivity"}  # (a few)
STATE_CLASSES = {"measurement", "total", "total_increasing"}


def valid_config(topic, config):
    """One discovery message: <prefix>/<component>/<id>/config and its config."""
    component = topic.split("/")[-3]
    keys = {"sensor": SENSOR_KEYS, "binary_sensor": BINARY_SENSOR_KEYS}[component]
    assert set(config) <= keys, set(config) - keys
    assert set(config["device"]) <= DEVICE_KEYS, set(config["device"]) - DEVICE_KEYS
    assert {"state_topic", "unique_id"} <= set(config) and config["device"]["identifiers"]
    assert topic.split("/")[-2] == config["unique_id"]
    assert config["default_entity_id"] == "%s.%s" % (component, config["unique_id"])
    assert config["device"]["sw_version"]
    if component == "binary_sensor":  # its template says ON / OFF, the default payloads
        assert config.get("device_class", "running") in BINARY_SENSOR_CLASSES
        assert "'ON'" in config["value_template"] and "'OFF'" in config["value_template"]
        return
    kind, state_class = config.get("device_class"), config.get("state_class")
    assert state_class in STATE_CLASSES | {None}
    if kind == "enum":
        assert config["options"] and "unit_of_measurement" not in config
    if kind == "energy":  # the Energy dashboard's counters
        assert config["unit_of_measurement"] in ("Wh", "kWh", "MWh")
        assert state_class in ("total", "total_increasing")
    if kind == "monetary":  # Home Assistant: total or none, never total_increasing
        assert state_class in ("total", None) and re.fullmatch(
            "[A-Z]{3}", config["unit_of_measurement"])  # fmt: skip
    if kind == "power":
        assert config["unit_of_measurement"] in ("W", "kW", "MW")


def test_a_hub_that_drops_off_is_offline_by_its_will(broker, tmp_path):
    broker.start()
    live = Subscriber(broker)
    logs = []
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, keepalive=5))

    async def scenario():
        hub, bridge = await started(cfg, logs)
        await until_async(lambda: bridge.online, 5, "connected")
        await asyncio.to_thread(bridge.client.loop_stop)  # the hub's network is gone:
        bridge.client.socket().shutdown(socket.SHUT_RDWR)  # no DISCONNECT packet
        await asyncio.sleep(0.3)
        statuses = [p for t, p, _r in live.messages if t == "gridbid/hub1/status"]
        bridge.online = False  # (its close() has nothing left to say)
        await hub.close()
        return statuses

    assert asyncio.run(scenario()) == [b"online", b"offline"]
    live.close()


def test_a_real_hub_run_publishes_its_market(broker, tmp_path):
    """A real hub with two firmware batteries (MicroPython VM) trades one slot; its
    devices, telemetry, offers, bids, price, clearing and contracts reach the broker,
    in the order the hub emitted them."""
    from simulator.fleet import Fleet

    broker.start()
    live = Subscriber(broker)
    logs = into([])
    slot_s, gate_s = 4, 2

    async def scenario():
        fleet = Fleet(tmp_path / "fleet", aggregators=(1, 2), slot_s=slot_s, gate_s=gate_s,
                      slots_ahead=1, poll_ms=100, tick_ms=100, success_share=0.9)  # fmt: skip
        try:
            for soc in (90.0, 70.0):
                await fleet.add(sim_settings={"soc_pct": soc})
            await asyncio.gather(*(d.start() for d in fleet.devices))
            fleet.hub_keys(tmp_path / "hub-keys.json")
            for key_id in (1, 2):
                fleet.identity(tmp_path / ("aggregator-%d.json" % key_id), key_id)
            cfg = hub_config_with(
                tmp_path, settings_for(broker, tmp_path), group_addr=fleet.group_addr,
                group_port=fleet.group_port, device_port=fleet.tcp_port, slot_s=slot_s,
                gate_s=gate_s, discovery_s=0.25, answer_s=0.5, bind_timeout_s=0.8,
            )  # fmt: skip
            cfg["aggregators"][0].update(value=22.0, spread=4.0, bidders=2)
            cfg["aggregators"][1].update(value=22.0, spread=4.0)
            hub = Hub(cfg, seed=5)
            try:
                summaries = await hub.run(1)
                bridge = hub.integrations["mqtt"]
                await until_async(lambda: any(e["kind"] == "telemetry" for _t, e in
                                              live.events()), 3, "telemetry")  # fmt: skip
                await until_async(lambda: drained(bridge), 5, "every event acknowledged")
            finally:
                await hub.close()
            return summaries
        finally:
            await fleet.close()

    summaries = asyncio.run(scenario())
    assert summaries[-1]["price"] is not None, logs
    until(lambda: any(e["kind"] == "contract" for _t, e in live.events()), 3, "contracts")
    kinds = {e["kind"] for _t, e in live.events()}
    assert {"device", "telemetry", "offer", "bid", "price", "clearing", "contract"} <= kinds
    ids = [e["id"] for _t, e in live.events()]
    assert len(ids) == len(set(ids))
    key = [tuple(map(int, i.split("."))) for i in ids]
    assert key == sorted(key), "events out of order"
    topics = {t for t, _e in live.events()}
    for device in (1001, 1002):
        assert "gridbid/hub1/device/%d/status" % device in topics
    live.close()
    no_secret(logs, broker)


# --- (2) the broker killed mid-run --------------------------------------------------------


def emit_reading(hub, i):
    """Event i of a stream: telemetry of three batteries, and every 4th a bid."""
    device = 1001 + i % 3
    if i % 4 == 3:
        return hub.events.emit("bid", slot=SLOT, aggregator="value", device=device,
                               price=15 + i / 100, kwh=1.0)  # fmt: skip
    return hub.events.emit("telemetry", device=device, soc=i / 3, remaining_kwh=1.0,
                           voltage=50.0, power_kw=1.0, health=0)  # fmt: skip


def test_broker_killed_and_restarted_mid_run_loses_no_event(broker, tmp_path):
    broker.start()
    logs = []
    sub = Subscriber(broker, persistent=True, client_id="persistent-reader")
    broker.save()  # its session (the subscription) survives the kill below
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, window=5))
    total, kill_at, restart_at = 300, 105, 205

    async def scenario():
        hub, bridge = await started(cfg, logs)
        await until_async(lambda: bridge.online, 5, "connected")
        sent, in_flight = [], []
        for i in range(total):  # bursts of 10
            if i == kill_at:  # it stops reading: the next events stay in flight, unacked
                broker.process.send_signal(signal.SIGSTOP)
            if i == kill_at + 10:
                in_flight.append((len(bridge.handed), bridge.outbox.count()))
                broker.kill()
            if i == restart_at:
                broker.start()
            sent.append(emit_reading(hub, i))
            if i % 10 == 9:
                await asyncio.sleep(0.02)
        await until_async(lambda: drained(bridge), 10, "the outbox sent")
        await hub.close()
        return sent, in_flight[0]

    sent, (in_flight, waiting) = asyncio.run(scenario())
    # the window is full (paho re-sends these after the restart, before the rest);
    # the rest waits in the outbox
    assert in_flight == 5 and waiting >= 10, (in_flight, waiting)
    want = [e["id"] for e in sent]
    until(lambda: set(want) <= {e["id"] for _t, e in sub.events()}, 10, "every event")
    got = sub.events()
    sub.close()
    assert {e["id"] for _t, e in got} == set(want)
    # per topic, the first copy of each event comes in the order the hub emitted them
    order = {i: n for n, i in enumerate(want)}
    for topic in {t for t, _e in got}:
        seen = []
        for t, e in got:
            if t == topic and e["id"] not in seen:
                seen.append(e["id"])
        assert seen == sorted(seen, key=order.get), topic
    text = "\n".join(logs)
    assert "mqtt: lost the broker" in text and text.count("mqtt: connected to") == 2, text
    no_secret(logs, broker)


# --- (3) the outbox survives the hub ------------------------------------------------------

CRASHING_HUB = """
import asyncio, json, os, signal, sys
sys.path.insert(0, {root!r})
from hub.config import hub_toml
from hub.service import Hub

async def main():
    cfg = hub_toml.load({config!r})
    hub = Hub(cfg)
    await hub.start_integrations()
    for i in range({count}):
        hub.events.emit("price", slot="s%d" % i, price=10.0 + i, demand=1.0, supply=1.0)
    print("emitted", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close(): the process dies where it stands

asyncio.run(main())
"""


def test_events_of_a_crashed_offline_hub_are_sent_by_the_next_one(broker, tmp_path):
    """The broker is down; a hub process emits events and is SIGKILLed. A new hub, once
    the broker is up, sends every one of them, in order, before its own."""
    logs, count = [], 40
    settings = settings_for(broker, tmp_path)
    cfg = hub_config_with(tmp_path, settings)  # writes the keys file
    config = tmp_path / "hub.toml"
    lines = ["[hub]", 'name = "hub1"', 'store = "hub.sqlite"', 'interface = "127.0.0.1"',
             "slot_s = 10", "gate_s = 3", "[[aggregator]]", "key_id = 1", "[[aggregator]]",
             "key_id = 2", "[mqtt]"]  # fmt: skip
    lines += ["%s = %s" % (k, json.dumps(v)) for k, v in settings.items()]
    config.write_text("\n".join(lines) + "\n")
    script = CRASHING_HUB.format(root=str(ROOT), config=str(config), count=count)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    assert child.returncode == -signal.SIGKILL and "emitted" in child.stdout, child.stdout
    outbox = tmp_path / bridge.OUTBOX_NAME  # the default: next to the store
    rows = sqlite3.connect(outbox).execute("SELECT event_id, topic FROM outbox").fetchall()
    assert len(rows) == count and {t for _i, t in rows} == {"gridbid/hub1/price"}
    crashed = [i for i, _t in rows]

    broker.start()
    sub = Subscriber(broker)

    async def scenario():
        hub, bridge = await started(cfg, logs)
        mine = hub.events.emit("price", slot="after", price=1.0, demand=1.0, supply=1.0)
        await until_async(lambda: drained(bridge), 5, "the outbox sent")
        await hub.close()
        return mine

    mine = asyncio.run(scenario())
    until(lambda: len(sub.events()) >= count + 1, 5, "the crashed hub's events")
    assert [e["id"] for _t, e in sub.events()] == crashed + [mine["id"]]
    assert Outbox(outbox).count() == 0
    assert "%d events from before wait in the outbox" % count in "\n".join(logs)
    sub.close()
    no_secret(logs, broker)


# --- (4) bad credentials, ACL denial --------------------------------------------------------


def test_bad_password_is_said_once_and_events_wait_in_the_outbox(broker, tmp_path):
    broker.start()
    logs, wrong = [], secrets.token_urlsafe(12)
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, password=wrong))

    async def scenario():
        hub, bridge = await started(cfg, logs)
        for i in range(5):
            hub.events.emit("price", slot="s%d" % i, price=12.0, demand=1.0, supply=1.0)
        await asyncio.sleep(1.5)  # several reconnects (0.05 s doubling to 0.2 s)
        pending = bridge.outbox.count()
        await hub.close()
        return pending

    assert asyncio.run(scenario()) == 5
    refusals = [x for x in logs if "refused the connection" in x]
    assert len(refusals) == 1, logs
    assert "Not authorized" in refusals[0] and "credentials_file" in refusals[0]
    assert "5 events wait in the outbox" in "\n".join(logs)
    tries = broker.log.read_text().count("disconnected, not authorised")
    assert 3 <= tries <= 15, tries  # it retried, quietly, backing off (0.05 s to 0.2 s)
    assert wrong not in "\n".join(logs)
    no_secret(logs, broker)


def test_acl_denied_events_are_set_aside_not_resent(broker, tmp_path):
    """The ACL lets gridbid-hub write gridbid/# only: with topic_prefix "other" the
    broker refuses each event (MQTT v5 PUBACK 0x87). Each is moved to the outbox's
    refused table, said once per topic, and never sent again."""
    broker.start()
    logs = []
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, topic_prefix="other"))

    async def scenario():
        hub, bridge = await started(cfg, logs)
        sends = []  # paho's own account of every PUBLISH it writes
        bridge.client.on_log = lambda _c, _u, _level, text: sends.append(text)
        await until_async(lambda: bridge.online, 5, "connected")
        sent = [hub.events.emit("price", slot="s%d" % i, price=12.0, demand=1.0, supply=1.0)
                for i in range(20)]  # fmt: skip
        await until_async(lambda: drained(bridge) and len(bridge.outbox.refused()) == 20, 5,
                          "the refusals")  # fmt: skip
        await asyncio.sleep(0.3)
        refused = bridge.outbox.refused()
        await hub.close()
        return sent, refused, sends

    sent, refused, sends = asyncio.run(scenario())
    assert [r[1] for r in refused] == [e["id"] for e in sent]
    assert {r[3] for r in refused} == {"Not authorized (0x87)"}
    said = [x for x in logs if "refused a message on other/hub1/price" in x]
    assert len(said) == 1 and "refused table" in said[0], logs
    # each event was sent once: no retry loop
    assert sum("Sending PUBLISH" in x and "other/hub1/price" in x for x in sends) == 20
    no_secret(logs, broker)


# --- (5) commands ---------------------------------------------------------------------------


def test_commands_set_controls_and_every_error_is_answered(broker, tmp_path):
    broker.start()
    logs = []
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path))
    operator = Subscriber(broker, ("gridbid/hub1/reply", "gridbid/hub1/control/#"))
    commands = [
        b'{"id": "r1", "name": "reserve_floor.1001", "value": 15.5}',
        b'{"id": "r1", "name": "reserve_floor.1001", "value": 15.5}',  # delivered twice
        b'{"id": "r2", "name": "paused.adaptive", "value": true}',
        b"{oops",
        b'["id", "r3"]',
        b'{"name": "paused.value", "value": true}',
        b'{"id": "r4", "name": "volume.1001", "value": 1}',
        b'{"id": "r5", "name": "reserve_floor.1001", "value": "cheap"}',
        b'{"id": "r6", "name": "reserve_floor.999", "value": 10}',
        b'{"id": "r7", "name": "paused.value"}',
        b'{"id": "r8", "name": "paused.value", "value": true, "by": "me"}',
        b'{"id": "r9", "name": "reserve_floor.1001", "value": null}',
    ]

    async def scenario():
        hub, bridge = await started(cfg, logs)
        add_battery(hub)
        await until_async(lambda: bridge.online, 5, "connected")
        controls = []
        for command in commands:
            before = len(operator.messages)
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = b"corr-" + command[:8]
            operator.client.publish("gridbid/hub1/cmd", command, qos=1, properties=props)
            await until_async(lambda b=before: any(t.endswith("/reply") for t, _p, _r in
                                                   operator.messages[b:]), 5, command)  # fmt: skip
            controls.append(dict(hub.controls.values))
        await hub.close()
        return controls

    controls = asyncio.run(scenario())
    replies = [json.loads(p) for t, p, _r in operator.messages if t.endswith("/reply")]
    answers = [i for i, (t, _p, _r) in enumerate(operator.messages) if t.endswith("/reply")]
    correlations = [operator.properties[i].CorrelationData for i in answers]
    assert correlations == [b"corr-" + c[:8] for c in commands]
    assert replies[0] == {"id": "r1", "ok": True, "name": "reserve_floor.1001", "value": 15.5}
    assert replies[1] == replies[0] and controls[0] == {"reserve_floor.1001": 15.5}
    assert replies[2]["ok"] and controls[2]["paused.adaptive"] is True
    errors = [(r["id"], r["error"]) for r in replies[3:-1]]
    assert not any(r["ok"] for r in replies[3:-1])
    expected = [(None, "a command is JSON"), (None, "a command is a JSON object"),
                (None, "a command needs an id"), ("r4", "unknown control 'volume.1001'"),
                ("r5", "a reserve floor is c/kWh"), ("r6", "no battery '999'"),
                ("r7", "value is required"), ("r8", "unknown fields ['by']")]  # fmt: skip
    for (rid, error), (want_id, want) in zip(errors, expected):
        assert rid == want_id and error.startswith(want), (rid, error)
    assert replies[-1]["ok"] and "reserve_floor.1001" not in controls[-1]
    assert controls[3:-1] == [controls[2]] * 8  # a refused command changes nothing
    # applied once each (the duplicate too), by "mqtt", as retained control events
    changes = [e for t, e in operator.events() if e.get("kind") == "control"]
    assert [(e["name"], e["value"], e["by"]) for e in changes] == [
        ("reserve_floor.1001", 15.5, "mqtt"), ("paused.adaptive", True, "mqtt"),
        ("reserve_floor.1001", None, "mqtt")]  # fmt: skip
    operator.close()
    no_secret(logs, broker)


# --- (6) TLS ------------------------------------------------------------------------------


@pytest.mark.parametrize("client_cert", [False, True], ids=["ca", "ca+client-cert"])
def test_tls_with_the_test_ca(broker, tmp_path, client_cert):
    broker.start()
    logs = []
    certs = broker.folder / "certs"
    for name in ("ca.crt", "client.crt", "client.key"):
        shutil.copy(certs / name, tmp_path / name)
    # The broker's certificate names IP 127.0.0.1 too: no name to resolve (a bare root
    # may have no /etc/hosts), and the address is still verified against it.
    tls = {"port": broker.tls_port, "host": "127.0.0.1", "tls_ca": "ca.crt"}
    if client_cert:
        tls.update(tls_cert="client.crt", tls_key="client.key")
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, **tls))
    sub = Subscriber(broker)

    async def scenario():
        hub, bridge = await started(cfg, logs)
        event = hub.events.emit("price", slot=SLOT, price=18.0, demand=1.0, supply=1.0)
        await until_async(lambda: drained(bridge), 5, "the event over TLS")
        await hub.close()
        return event

    event = asyncio.run(scenario())
    until(lambda: sub.events(), 3, "the event")
    assert sub.events()[0] == ("gridbid/hub1/price", event)
    assert "(TLS)" in logs[0]
    sub.close()
    no_secret(logs, broker)


def test_tls_with_a_ca_that_did_not_sign_the_broker_is_refused_clearly(broker, tmp_path):
    broker.start()
    logs = []
    other = tmp_path / "other"
    subprocess.run(["sh", str(DEPLOY / "make-certs.sh"), str(other)], check=True,
                   capture_output=True)  # fmt: skip
    tls = {"port": broker.tls_port, "tls_ca": "other/ca.crt"}
    cfg = hub_config_with(tmp_path, settings_for(broker, tmp_path, **tls))

    async def scenario():
        hub, bridge = await started(cfg, logs)
        hub.events.emit("price", slot=SLOT, price=18.0, demand=1.0, supply=1.0)
        await asyncio.sleep(0.8)
        pending = bridge.outbox.count()
        await hub.close()
        return pending

    assert asyncio.run(scenario()) == 1
    said = [x for x in logs if "cannot connect" in x]
    assert len(said) == 1 and "CERTIFICATE_VERIFY_FAILED" in said[0], logs


# --- settings -------------------------------------------------------------------------------


def _check(tmp_path, **settings):
    return mqtt_settings.check({**mqtt_settings.DEFAULTS, **settings}, tmp_path, "hub.toml: [mqtt]")


def test_settings_defaults_and_paths(tmp_path):
    got = _check(tmp_path)
    assert (got["port"], got["qos"], got["topic_prefix"]) == (1883, 1, "gridbid")
    assert got["discovery_prefix"] == "homeassistant" and got["outbox"] is None
    (tmp_path / "ca.crt").write_text("x")
    got = _check(tmp_path, tls_ca="ca.crt", outbox="out.sqlite")
    assert got["port"] == 8883 and got["tls_ca"] == str(tmp_path / "ca.crt")
    assert got["outbox"] == str(tmp_path / "out.sqlite")


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"port": 0}, "port must be a whole number 1..65535"),
        ({"qos": 0}, "qos must be 1 or 2"),
        ({"window": 0}, "window must be"),
        ({"topic_prefix": "grid/#"}, "topic_prefix must be topic levels"),
        ({"discovery_prefix": "/ha"}, "discovery_prefix must be topic levels"),
        ({"reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s must not be above"),
        ({"tls_ca": "missing.crt"}, "tls_ca"),
        ({"tls_cert": "c.pem"}, "tls_cert and tls_key go together"),
        ({"credentials_file": "nowhere.json"}, "cannot read credentials_file"),
        ({"credentials_file": "open.json"}, "readable by others: chmod 600"),
        ({"credentials_file": "bad.json"}, '{"username": "...", "password": "..."}'),
        ({"outbox": "nowhere/outbox.sqlite"}, "no such folder"),
    ],
)  # fmt: skip
def test_bad_settings_are_named(tmp_path, settings, error):
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "open.json").write_text('{"username": "u", "password": "hunter2"}')
    os.chmod(tmp_path / "open.json", 0o644)
    bad = tmp_path / "bad.json"
    bad.touch(mode=0o600)
    bad.write_text('{"user": "u", "password": "hunter2"}')
    with pytest.raises(ValueError) as caught:
        _check(tmp_path, **settings)
    assert str(caught.value).startswith("hub.toml: [mqtt]: ") and error in str(caught.value)
    assert "hunter2" not in str(caught.value)
